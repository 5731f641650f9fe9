"""The pool core's reliability defects, reproduced from Python, and the fault points.

Each test reproduces a scenario that used to hang, leak or crash. Scenarios that
could hang the interpreter run in a subprocess with a timeout, so a regression
fails the test instead of freezing the suite.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import mpool
import mpool.testing
from models_for_tests import HashEmbedder, wait_for


@pytest.fixture(autouse=True)
def _no_fault_left_armed():
    mpool.testing.clear_faults()
    yield
    mpool.testing.clear_faults()


def run_script(body: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs `body` in a fresh interpreter; a hang fails the caller's test."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)], capture_output=True, text=True, timeout=timeout
    )


# --- defect 1 -------------------------------------------------------------------


def test_timed_out_future_is_done_runs_each_callback_once_and_raises_timeout_again_at_once():
    with mpool.Pool() as pool:
        pool.register("slow", mpool.testing.sleep_model(30.0))
        future = pool._native.embed_async("slow", ["x"], None, 0.1)
        calls: list[str] = []
        future.add_done_callback(lambda: calls.append("first"))
        future.add_done_callback(lambda: calls.append("second"))  # kept, not a replacement
        with pytest.raises(mpool.Timeout):
            future.result()
        assert future.done()
        # Whoever settles runs the callbacks, right after waking waiters (as
        # concurrent.futures does): the model's own deadline check may win the race.
        assert wait_for(lambda: len(calls) == 2, 30)
        assert calls == ["first", "second"]
        with pytest.raises(mpool.Timeout):  # at once: the sleep model would take 30 s
            future.result()
        future.add_done_callback(lambda: calls.append("late"))  # added after the end: runs now
        assert calls == ["first", "second", "late"]
        # the model saw the cancel: its replica is free again
        assert wait_for(lambda: pool.stats()["models"]["slow"]["busy_replicas"] == 0, 30)


# --- defect 3 -------------------------------------------------------------------


def test_add_done_callback_and_done_from_two_threads_never_freeze_the_interpreter():
    result = run_script(
        """
        import threading, mpool, mpool.testing
        with mpool.Pool() as pool:
            pool.register("slow", mpool.testing.sleep_model(2.0))
            future = pool._native.embed_async("slow", ["x"], None, 30.0)
            stop = threading.Event()
            def adder():
                while not stop.is_set():
                    future.add_done_callback(lambda: None)
            def poller():
                while not stop.is_set():
                    future.done()
            threads = [threading.Thread(target=adder), threading.Thread(target=poller)]
            for t in threads: t.start()
            future.result()
            stop.set()
            for t in threads: t.join()
        print("ok")
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- defect 7 -------------------------------------------------------------------


def test_a_hundred_concurrent_async_streams_on_two_replicas_all_finish():
    async def main(pool):
        async def one(i):
            return [c.text async for c in pool.agenerate("m", "x", max_tokens=40, timeout=120)]

        return await asyncio.gather(*(one(i) for i in range(100)))

    with mpool.Pool() as pool:
        pool.register("m", mpool.testing.sleep_model(0.001, max_replicas=2))
        outs = asyncio.run(main(pool))
        expected = [f"{i} " for i in range(40)] + [""]
        assert all(o == expected for o in outs)
        assert pool.stats()["models"]["m"]["counts"]["timeouts"] == 0


def test_async_stream_holds_no_thread_while_it_waits():
    async def main(pool):
        before = threading.active_count()
        streams = [pool.agenerate("m", "x", max_tokens=3, timeout=60) for _ in range(20)]
        tasks = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await asyncio.sleep(0.2)
        during = threading.active_count()
        firsts = await asyncio.gather(*tasks)
        for s in streams:
            await s.aclose()
        return before, during, firsts

    with mpool.Pool() as pool:
        pool.register("m", mpool.testing.sleep_model(0.05, max_replicas=1))
        pool.embed("m", ["warm"])
        before, during, firsts = asyncio.run(main(pool))
        assert during <= before + 2  # (asyncio's own helper threads at most), not one per stream
        assert all(f.text == "0 " for f in firsts)


def test_async_stream_times_out_with_timeout():
    async def main(pool):
        return [c async for c in pool.agenerate("m", "x", max_tokens=5, timeout=0.2)]

    with mpool.Pool() as pool:
        pool.register("m", mpool.testing.sleep_model(30.0, max_replicas=1))
        with pytest.raises(mpool.Timeout):
            asyncio.run(main(pool))


# --- defect 10 ------------------------------------------------------------------


def test_close_in_a_done_callback_on_a_replica_thread_is_refused_clearly():
    with mpool.Pool() as pool:
        pool.register("m", mpool.testing.sleep_model(0.05))
        errors: list[BaseException] = []
        fired = threading.Event()

        def close_from_callback():
            try:
                pool.close()
            except mpool.PoolError as e:
                errors.append(e)
            fired.set()

        future = pool._native.embed_async("m", ["x"], None, 30.0)
        future.add_done_callback(close_from_callback)
        future.result()
        assert fired.wait(30)
        assert len(errors) == 1 and isinstance(errors[0], mpool.InvalidInput)
        assert "own threads" in str(errors[0])
        assert pool.embed("m", ["still open"]).shape == (1, 4)


def test_dropping_the_last_reference_to_a_pool_on_its_replica_thread_exits_cleanly():
    result = run_script(
        """
        import gc, threading, mpool
        import numpy as np
        holder = {}
        done = threading.Event()
        class Dropper:
            dimension = 4
            def embed(self, texts, task=None):
                holder.pop("pool", None)  # the pool's last reference dies on this replica thread
                gc.collect()
                done.set()
                return np.zeros((len(texts), 4), np.float32)
        pool = mpool.Pool()
        pool.register("m", mpool.PyModel("text_embedding", lambda d: Dropper(), memory_mb=1))
        future = pool._native.embed_async("m", ["x"], None, 30.0)
        holder["pool"] = pool
        del pool
        assert done.wait(60)
        try:
            future.result()
        except mpool.PoolError:
            pass
        print("ok")
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- defect 12 (from Python) ---------------------------------------------------------


def test_infinite_timeouts_mean_no_limit():
    with mpool.Pool(request_timeout=float("inf"), maintenance_interval=float("inf")) as pool:
        pool.register("m", mpool.testing.sleep_model(0.05))
        assert pool.embed("m", ["x"], timeout=float("inf")).shape == (1, 4)
        assert pool.embed("m", ["x"], timeout=1e300).shape == (1, 4)
        assert pool.embed("m", ["x"]).shape == (1, 4)
        assert pool.unload("m", float("inf"))
        with pytest.raises(mpool.InvalidInput):
            pool.embed("m", ["x"], timeout=float("nan"))


# --- faults ---------------------------------------------------------------------


def counts(pool, key):
    return pool.stats()["models"][key]["counts"]


def committed(pool):
    return pool.stats()["devices"][0]["committed_mb"]


def test_fault_names_are_the_documented_ones():
    assert set(mpool.testing.FAULTS) == {
        "loader_throws", "forward_throws", "out_of_memory", "replica_dies",
        "thread_create_fails", "slow_load", "consumer_stalls", "clock_jump", "cancel_at_layer",
    }
    with pytest.raises(mpool.InvalidInput, match="unknown fault"):
        mpool.testing.inject("disk_on_fire")


def test_fault_out_of_memory_is_memory_exhausted_for_that_request_only():
    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("m", mpool.testing.noop_model(max_replicas=1))
        pool.register("other", mpool.testing.noop_model())
        pool.embed("m", ["warm"])
        with mpool.testing.fault("out_of_memory", key=None):
            with pytest.raises(mpool.MemoryExhausted, match="ran out of memory"):
                pool.embed("m", ["x"])
            assert pool.embed("other", ["y"]).shape == (1, 4)
        assert pool.embed("m", ["again"]).shape == (1, 4)  # same replica, still serving
        c = counts(pool, "m")
        assert c["errors"] == 1 and c["replicas_spawned"] == 1
        assert pool.stats()["models"]["m"]["replicas"] == 1


def test_fault_out_of_memory_in_a_stream_is_memory_exhausted():
    with mpool.Pool() as pool:
        pool.register("m", mpool.testing.noop_model())
        with mpool.testing.fault("out_of_memory"):
            with pytest.raises(mpool.MemoryExhausted):
                pool.generate("m", "x", max_tokens=3).text()
        assert pool.generate("m", "x", max_tokens=3).text() == "0 1 2 "


def test_fault_forward_throws_is_model_error_and_others_are_unaffected():
    with mpool.Pool() as pool:
        pool.register("m", mpool.testing.noop_model())
        pool.register("other", mpool.testing.noop_model())
        with mpool.testing.fault("forward_throws", key="m"):
            assert pool.embed("other", ["y"]).shape == (1, 4)
            with pytest.raises(mpool.ModelError, match="forward_throws"):
                pool.embed("m", ["x"])
        assert pool.embed("m", ["x"]).shape == (1, 4)
        assert counts(pool, "m")["errors"] == 1
        assert counts(pool, "other")["errors"] == 0


def test_fault_loader_throws_is_spawn_failed_and_restores_the_reservation():
    with mpool.Pool() as pool:
        pool.register("m", mpool.testing.noop_model(memory_mb=100))
        with mpool.testing.fault("loader_throws", count=2, key="m"):
            with pytest.raises(mpool.SpawnFailed, match="loader_throws"):
                pool.embed("m", ["x"])
        assert wait_for(lambda: committed(pool) == 0)
        assert counts(pool, "m")["spawn_failures"] == 2
        assert pool.embed("m", ["x"]).shape == (1, 4)
        assert committed(pool) == 200


def test_fault_replica_dies_fails_its_request_typed_and_a_replacement_serves():
    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("m", mpool.testing.noop_model(memory_mb=50, max_replicas=1))
        pool.embed("m", ["warm"])
        with mpool.testing.fault("replica_dies", key="m"):
            with pytest.raises(mpool.ModelError, match="died"):
                pool.embed("m", ["x"])
        assert pool.embed("m", ["after"]).shape == (1, 4)
        c = counts(pool, "m")
        assert c["replica_deaths"] == 1 and c["replicas_spawned"] == 2
        assert wait_for(lambda: pool.stats()["models"]["m"]["replicas"] == 1 and committed(pool) == 50)


def test_fault_thread_create_fails_is_spawn_failed_with_no_phantom_replica():
    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("m", mpool.testing.noop_model(memory_mb=50))
        with mpool.testing.fault("thread_create_fails", key="m"):
            with pytest.raises(mpool.SpawnFailed, match="thread"):
                pool.embed("m", ["x"])
        stats = pool.stats()["models"]["m"]
        assert stats["replicas"] == 0 and stats["state"] == "unloaded" and committed(pool) == 0
        assert stats["counts"]["spawn_failures"] == 1
        assert pool.embed("m", ["x"]).shape == (1, 4)


def test_fault_slow_load_of_one_model_never_delays_a_resident_one():
    with mpool.Pool() as pool:
        pool.register("slow", mpool.testing.noop_model())
        pool.register("resident", mpool.testing.noop_model())
        pool.embed("resident", ["warm"])
        mpool.testing.inject("slow_load", count=2, key="slow", seconds=20.0)
        future = pool._native.embed_async("slow", ["x"], None, 120.0)
        for _ in range(20):  # milliseconds of work, against a 20 s load
            assert pool.embed("resident", ["y"]).shape == (1, 4)
        assert not future.done()  # still loading: the resident model never waited for it
        assert future.result().shape == (1, 4)


def test_fault_consumer_stalls_ends_the_stream_as_timeout_and_frees_the_replica():
    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("m", mpool.testing.noop_model(max_replicas=1))
        with mpool.testing.fault("consumer_stalls", seconds=1.0):
            with pytest.raises(mpool.Timeout):
                pool.generate("m", "x", max_tokens=100_000, timeout=0.3).text()
        assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 0)
        assert pool.generate("m", "x", max_tokens=2).text() == "0 1 "
        assert counts(pool, "m")["timeouts"] == 1


def test_fault_clock_jump_expires_waiting_requests_and_the_pool_keeps_serving():
    with mpool.Pool(keep_alive=300) as pool:
        pool.register("m", mpool.testing.sleep_model(30.0, max_replicas=1))
        future = pool._native.embed_async("m", ["x"], None, 60.0)
        assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 1, 30)
        mpool.testing.inject("clock_jump", seconds=3600)
        with pytest.raises(mpool.Timeout):
            future.result()
        assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 0, 30)
        mpool.testing.inject("clock_jump", seconds=3600)  # idle for an hour: keep-alive unloads it
        assert wait_for(lambda: pool.stats()["models"]["m"]["replicas"] == 0, 30)
    gc.collect()


def test_merged_embedding_batch_serves_everyone_when_its_first_request_is_cancelled():
    gate = threading.Event()
    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("m", mpool.PyModel("text_embedding", lambda d: HashEmbedder(gate=gate),
                                         memory_mb=1, max_replicas=1))
        blocker = pool._native.embed_async("m", ["block"], None, 60.0)
        assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 1)
        first = pool._native.embed_async("m", ["a"], None, 60.0)
        rest = [pool._native.embed_async("m", [f"t{i}"], None, 60.0) for i in range(4)]
        first.cancel()
        gate.set()
        blocker.result()
        for i, f in enumerate(rest):
            np.testing.assert_array_equal(f.result(), HashEmbedder().embed([f"t{i}"]))
        with pytest.raises(mpool.Cancelled):
            first.result()


# --- interpreter exit while daemon threads are inside the bindings -----------------


@pytest.mark.parametrize("round_", range(4))
def test_interpreter_exit_while_daemon_threads_poll_stats_and_run_bulk_aembed_exits_cleanly(round_):
    # Before 3.14 CPython ends a thread that takes the GIL back after finalization
    # began (pthread_exit); through a noexcept GIL-release destructor that aborted.
    import os

    result = run_script(
        f"""
        import asyncio, sys, threading, time
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import mpool
        from models_for_tests import HashEmbedder

        pool = mpool.Pool(maintenance_interval=0.01)
        pool.register("m", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1, max_replicas=3,
                                         batch_budget=30))
        texts = [f"t{{i:05d}}" for i in range(2000)]

        def poll():
            while True:
                pool.stats()

        async def bulk():
            while True:
                calls = [asyncio.create_task(pool.aembed("m", texts)) for _ in range(4)]
                await asyncio.gather(*calls, return_exceptions=True)

        def embed():
            while True:
                try:
                    pool.embed("m", texts[:50])
                except mpool.PoolError:
                    pass

        for target in (poll, lambda: asyncio.run(bulk()), embed):
            threading.Thread(target=target, daemon=True).start()
        time.sleep(0.3 + 0.2 * {round_})
        print("main exits")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "main exits" in result.stdout


def test_a_model_released_by_maintenance_runs_its_python_finalizers_outside_the_pool_lock():
    # The last reference to an unregistered PyModel used to go under the pool's
    # mutex on the maintenance thread: a finalizer there that called the pool
    # (stats() takes that mutex) hung the thread, and close() after it.
    result = run_script(
        """
        import threading, time
        import numpy as np
        import mpool

        class Embedder:
            dimension = 2
            def embed(self, texts, task=None):
                return np.ones((len(texts), 2), np.float32)

        pool = mpool.Pool(maintenance_interval=0.02)
        seen = {}

        class Loader:
            def __call__(self, device):
                return Embedder()
            def __del__(self):
                seen["thread"] = threading.current_thread().name
                seen["models"] = len(pool.stats()["models"])

        for round in range(3):
            seen.clear()
            pool.register("m", mpool.PyModel("text_embedding", Loader(), memory_mb=1))
            pool.embed("m", ["a"])
            pool.unregister("m", timeout=0)  # returns before the replica exits
            until = time.monotonic() + 30
            while "models" not in seen and time.monotonic() < until:
                time.sleep(0.01)
            assert seen.get("models") == 0, seen
        pool.close()
        print("ok")
        """,
        timeout=90,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
