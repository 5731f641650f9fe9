"""Cold start, eviction, keep-alive, spawn-once, loader failures: the memory policy from Python."""

from __future__ import annotations

import threading

import pytest

import mpool
import mpool.testing
from models_for_tests import Counter, HashEmbedder, wait_for


def embedder(memory_mb, counter=None, **kw):
    def load(device):
        if counter is not None:
            counter.bump()
        return HashEmbedder(**kw)

    return mpool.PyModel("text_embedding", load, memory_mb=memory_mb)



def replicas(pool, key):
    return pool.stats()["models"][key]["replicas"]


@pytest.mark.parametrize(("budget", "expected"), [(1000, 2), (700, 1)])
def test_cold_start_spawns_two_replicas_only_when_budget_admits_twice(budget, expected):
    with mpool.Pool(memory_budget_mb={"cpu": budget}) as pool:
        pool.register("m", embedder(400))
        assert pool.models()[0]["state"] == "unloaded"  # registering loads nothing
        pool.embed("m", ["x"])
        assert replicas(pool, "m") == expected
        assert pool.stats()["models"]["m"]["reserved_mb"]["cpu"] == 400 * expected


def test_memory_exhausted_names_requested_and_available_megabytes():
    with mpool.Pool(memory_budget_mb={"cpu": 300}) as pool:
        pool.register("big", embedder(400))
        with pytest.raises(mpool.MemoryExhausted, match=r"400\.0 MB.*300\.0 MB available") as e:
            pool.embed("big", ["x"])
        assert isinstance(e.value, MemoryError)
        pool.register("small", embedder(100))
        assert pool.embed("small", ["ok"]).shape == (1, 8)  # the pool stays healthy


def cpu_budget(pool):
    return next(d for d in pool.stats()["devices"] if d["device"] == "cpu")["budget_mb"]


def test_set_memory_budget_sets_and_none_restores_the_fraction_rule():
    with mpool.Pool(memory_budget_mb={"cpu": 500}) as pool:
        pool.set_memory_budget("cpu", 321.5)
        assert cpu_budget(pool) == 321.5
        pool.set_memory_budget("cpu", None)
        assert cpu_budget(pool) not in (321.5, 500.0)  # memory_fraction of the total, less the reserve


def test_set_memory_budget_lowered_below_loaded_evicts_the_idle_model():
    with mpool.Pool(memory_budget_mb={"cpu": 1000}, maintenance_interval=0.01) as pool:
        pool.register("m", embedder(400), max_replicas=1)
        pool.embed("m", ["x"])
        assert replicas(pool, "m") == 1
        pool.set_memory_budget("cpu", 100)
        assert wait_for(lambda: replicas(pool, "m") == 0, 30)


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1", " cpu"])
def test_set_memory_budget_refuses_a_malformed_device_name(device):
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=r"is not \"cpu\" or \"cuda:N\""):
            pool.set_memory_budget(device, 100)


def test_set_memory_budget_refuses_a_device_this_host_lacks_and_names_those_present():
    with mpool.Pool() as pool:
        before = cpu_budget(pool)
        with pytest.raises(mpool.InvalidInput, match=r"'cuda:999' is not present in this pool \(devices: cpu"):
            pool.set_memory_budget("cuda:999", 100)
        assert cpu_budget(pool) == before
        assert [d["device"] for d in pool.stats()["devices"]].count("cuda:999") == 0


def test_pool_budgets_may_name_an_absent_gpu_but_not_a_malformed_device():
    with mpool.Pool(memory_budget_mb={"cpu": 700, "cuda:999": 100}) as pool:  # one config for GPU and CPU hosts
        assert cpu_budget(pool) == 700
    with pytest.raises(mpool.InvalidInput, match=r"memory_budget_mb: device 'gpu0' is not"):
        mpool.Pool(memory_budget_mb={"gpu0": 100})


def test_idle_model_is_evicted_to_make_room_least_recently_used_first():
    with mpool.Pool(memory_budget_mb={"cpu": 1000}) as pool:
        for k in "abc":
            pool.register(k, embedder(400))
        pool.embed("a", ["x"])
        pool.embed("b", ["x"])  # takes a's extra replica
        pool.embed("c", ["x"])  # evicts a: least recently used
        assert [replicas(pool, k) for k in "abc"] == [0, 1, 1]
        assert pool.stats()["models"]["a"]["counts"]["replicas_evicted"] == 2


def test_busy_model_is_never_evicted():
    gate = threading.Event()
    with mpool.Pool(memory_budget_mb={"cpu": 500}) as pool:
        pool.register("busy", embedder(400, gate=gate))
        pool.register("other", embedder(400))
        t = threading.Thread(target=pool.embed, args=("busy", ["x"]))
        t.start()
        assert wait_for(lambda: pool.stats()["models"]["busy"]["busy_replicas"] == 1)
        with pytest.raises(mpool.MemoryExhausted):
            pool.embed("other", ["x"])
        gate.set()
        t.join()
        assert replicas(pool, "busy") == 1


def test_pinned_model_is_never_evicted_until_unpinned():
    with mpool.Pool(memory_budget_mb={"cpu": 500}) as pool:
        pool.register("p", embedder(400), pinned=True)
        pool.register("other", embedder(400))
        pool.embed("p", ["x"])
        with pytest.raises(mpool.MemoryExhausted):
            pool.embed("other", ["x"])
        pool.unpin("p")
        pool.embed("other", ["x"])
        assert replicas(pool, "p") == 0


def test_keep_alive_unloads_idle_model_and_it_reloads_on_demand():
    counter = Counter()
    with mpool.Pool(keep_alive=300, maintenance_interval=0.02) as pool:
        pool.register("m", embedder(10, counter))
        pool.embed("m", ["x"])
        assert replicas(pool, "m") == 2
        # The replica notes the model's last use just after it delivers: jump only after that.
        assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 0, 30)
        mpool.testing.inject("clock_jump", seconds=301)  # idle for longer than its keep-alive
        assert wait_for(lambda: replicas(pool, "m") == 0, 30)
        assert pool.stats()["devices"][0]["committed_mb"] == 0
        pool.embed("m", ["x"])
        assert wait_for(lambda: counter.loads == 4, 30)


def test_keep_alive_zero_unloads_right_after_the_last_request():
    # No maintenance tick ever comes by itself: only the wake-up after the last
    # request can unload the model.
    with mpool.Pool(maintenance_interval=float("inf")) as pool:
        pool.register("m", embedder(10), keep_alive=0)
        pool.embed("m", ["x"])
        assert wait_for(lambda: replicas(pool, "m") == 0, seconds=30)


def test_concurrent_first_requests_spawn_exactly_once():
    counter = Counter()
    with mpool.Pool(scale_up_after=60.0) as pool:  # growth would add replicas too
        pool.register("m", embedder(10, counter, delay=0.05))
        threads = [threading.Thread(target=pool.embed, args=("m", [str(i)])) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wait_for(lambda: pool.stats()["models"]["m"]["counts"]["replicas_spawned"] == 2)
        assert counter.loads == 2


def test_loader_failure_gives_spawn_failed_and_leaves_no_thread_or_reservation():
    def bad_loader(device):
        raise OSError("model.safetensors: truncated")

    with mpool.Pool() as pool:
        pool.register("bad", mpool.PyModel("text_embedding", bad_loader, memory_mb=100))
        with pytest.raises(mpool.SpawnFailed, match="OSError: model.safetensors: truncated"):
            pool.embed("bad", ["x"])
        assert wait_for(lambda: pool.stats()["threads"] == 1)  # only maintenance remains
        assert pool.stats()["devices"][0]["committed_mb"] == 0
        with pytest.raises(mpool.SpawnFailed):  # a later request retries the load
            pool.embed("bad", ["x"])


def test_model_exception_is_model_error_and_the_replica_keeps_serving(pool):
    pool.register("m", embedder(10))
    for _ in range(5):
        with pytest.raises(mpool.ModelError, match="cannot embed 'boom'"):
            pool.embed("m", ["boom"])
    assert pool.embed("m", ["fine"]).shape == (1, 8)
    assert pool.stats()["models"]["m"]["counts"]["errors"] == 5


def test_unload_and_pin_and_models_report_state(pool):
    pool.register("m", embedder(10))
    pool.embed("m", ["x"])
    assert pool.models()[0]["state"] == "ready"
    assert pool.unload("m")
    assert pool.models()[0]["state"] == "unloaded"
    pool.pin("m")
    assert pool.models()[0]["pinned"]


class GatedStreamer:
    """Streams one word once `gate` opens (text generation is never batched)."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def generate(self, prompt, params):
        self.gate.wait(60)
        yield prompt


def test_adaptive_replicas_grow_under_sustained_queue_up_to_max():
    gate = threading.Event()
    with mpool.Pool(cold_start_replicas=1, scale_up_after=0.0, maintenance_interval=0.01) as pool:
        pool.register("m", mpool.PyModel("text_to_text", lambda d: GatedStreamer(gate), memory_mb=1, max_replicas=3))
        streams = [pool.generate("m", f"w{i}", timeout=120) for i in range(60)]
        # The queue stays deep until the gate opens: growth reaches max_replicas and stops there.
        assert wait_for(lambda: pool.stats()["models"]["m"]["replicas"] == 3, 30)
        gate.set()
        assert [s.text() for s in streams] == [f"w{i}" for i in range(60)]
        # "replicas" counts one still loading; it counts as spawned once its loader
        # returned, which on a loaded machine may come after the last stream ended.
        spawned = lambda: pool.stats()["models"]["m"]["counts"]["replicas_spawned"]  # noqa: E731
        assert wait_for(lambda: spawned() == 3, 30)
        assert pool.stats()["models"]["m"]["replicas"] == 3 and spawned() == 3


def test_a_model_whose_devices_the_pool_lacks_fails_to_spawn_saying_so_not_out_of_memory():
    with mpool.Pool() as pool:
        pool.register("gpu", embedder(10), devices=["cuda:7", "cuda:8"])
        with pytest.raises(mpool.SpawnFailed, match=r"none of its devices \(cuda:7, cuda:8\) is present"):
            pool.embed("gpu", ["x"])
        pool.register("cpu", embedder(10))
        assert pool.embed("cpu", ["x"]).shape[0] == 1


def test_register_overrides_apply_to_that_registration_only_never_to_the_model_object():
    model = embedder(10)  # its own settings: keep_alive unset, not pinned, 4 replicas, cpu
    with mpool.Pool(keep_alive=300.0) as pool:
        pool.register("a", model, keep_alive=5.0, pinned=True, max_replicas=2, devices=["cuda:0"])
        with pytest.raises(mpool.InvalidInput, match="already registered"):  # fails after the overrides
            pool.register("a", model, keep_alive=7.0, pinned=True, max_replicas=3, devices=["cuda:1"])
        pool.register("b", model)
        settings = {m["key"]: m for m in pool.models()}
    keep = ("keep_alive", "pinned", "max_replicas", "devices")
    assert {k: settings["a"][k] for k in keep} == {
        "keep_alive": 5.0, "pinned": True, "max_replicas": 2, "devices": ["cuda:0"]
    }
    assert {k: settings["b"][k] for k in keep} == {
        "keep_alive": 300.0, "pinned": False, "max_replicas": 4, "devices": ["cpu"]
    }
    spec = model._spec
    assert (spec.keep_alive, spec.pinned, spec.max_replicas, spec.devices) == (None, False, 4, ["cpu"])


def test_concurrent_close_returns_only_after_the_pool_is_shut_down():
    gate, finished = threading.Event(), threading.Event()

    class Blocking(HashEmbedder):
        def embed(self, texts, task=None):
            gate.wait(30)
            finished.set()
            return super().embed(texts, task)

    pool = mpool.Pool()
    pool.register("m", mpool.PyModel("text_embedding", lambda d: Blocking(), memory_mb=1))
    request = threading.Thread(target=pool.embed, args=("m", ["x"]))
    request.start()
    assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 1)
    returned_before_request_finished = []

    def close():
        pool.close(timeout=30.0)  # drains: waits for the blocked request
        returned_before_request_finished.append(not finished.is_set())

    first = threading.Thread(target=close)
    first.start()
    assert wait_for(lambda: pool._native.shutting_down())
    second = threading.Thread(target=close)
    second.start()
    second.join(1.0)  # before the fix, the second close returned here at once
    gate.set()
    for t in (first, second, request):
        t.join(30)
    assert returned_before_request_finished == [False, False]
    assert pool.stats()["threads"] == 0  # both returned after every thread was joined


def test_load_starts_replicas_before_any_request_and_reports_what_a_first_request_would():
    loads = []

    def loader(device):
        loads.append(device)
        return HashEmbedder()

    def failing(device):
        raise RuntimeError("weights are missing on purpose")

    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("m", mpool.PyModel("text_embedding", loader, memory_mb=1))
        assert pool.models()[0]["state"] == "unloaded"
        pool.load("m")
        assert pool.models()[0]["state"] == "ready" and loads == ["cpu"]
        pool.load("m")  # loaded already: nothing new starts
        assert loads == ["cpu"]
        assert pool.embed("m", ["x"]).shape == (1, 8) and loads == ["cpu"]
        pool.register("bad", mpool.PyModel("text_embedding", failing, memory_mb=1))
        with pytest.raises(mpool.SpawnFailed, match="weights are missing on purpose"):
            pool.load("bad")
        with pytest.raises(mpool.ModelNotFound):
            pool.load("nope")
        with pytest.raises(mpool.InvalidInput, match="timeout"):
            pool.load("m", timeout=float("nan"))
        pool.register("huge", mpool.PyModel("text_embedding", loader, memory_mb=10**9))
        with pytest.raises(mpool.MemoryExhausted):
            pool.load("huge")


def test_aload_loads_without_blocking_the_event_loop():
    import asyncio

    gate = threading.Event()

    def loader(device):
        gate.wait(60)
        return HashEmbedder()

    async def main(pool):
        task = asyncio.ensure_future(pool.aload("m"))
        await asyncio.sleep(0)
        assert not task.done()  # the loop keeps running while the replica loads
        gate.set()
        await task
        return pool.models()[0]["state"]

    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("m", mpool.PyModel("text_embedding", loader, memory_mb=1))
        assert asyncio.run(main(pool)) == "ready"


def test_aload_holds_no_thread_and_cancelling_it_cancels_the_load_request_not_the_replica():
    import asyncio

    gate, entered = threading.Event(), threading.Event()

    def loader(device):
        entered.set()
        gate.wait(60)
        return HashEmbedder()

    async def cancel_while_loading(pool):
        before = threading.active_count()
        task = asyncio.ensure_future(pool.aload("m", timeout=float("inf")))
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        assert threading.active_count() == before + 1  # the executor thread that waited on `entered`, no other
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("m", mpool.PyModel("text_embedding", loader, memory_mb=1))
        asyncio.run(cancel_while_loading(pool))
        counts = pool.stats()["models"]["m"]["counts"]
        assert (counts["cancellations"], counts["succeeded"]) == (1, 0)
        gate.set()  # the replica the load started still comes up
        assert wait_for(lambda: pool.models()[0]["state"] == "ready", 30)
        asyncio.run(pool.aload("m"))
        assert pool.stats()["models"]["m"]["counts"]["succeeded"] == 1


def test_ctrl_c_during_load_raises_keyboard_interrupt_and_cancels_the_load_request(sigint_raises):
    import _thread

    gate, entered = threading.Event(), threading.Event()

    def loader(device):
        entered.set()
        gate.wait(60)
        return HashEmbedder()

    def interrupt() -> None:
        if entered.wait(30):
            _thread.interrupt_main()

    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("m", mpool.PyModel("text_embedding", loader, memory_mb=1))
        sender = threading.Thread(target=interrupt)
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            pool.load("m", timeout=float("inf"))
        sender.join()
        assert pool.stats()["models"]["m"]["counts"]["cancellations"] == 1
        gate.set()
        pool.load("m")
        assert pool.models()[0]["state"] == "ready"


def test_stats_idle_s_is_zero_while_a_request_runs_and_grows_after():
    gate = threading.Event()
    with mpool.Pool() as pool:
        pool.register("m", mpool.PyModel("text_to_text", lambda d: GatedStreamer(gate), memory_mb=1))
        stream = pool.generate("m", "word", timeout=60)
        assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 1, 30)
        assert pool.stats()["models"]["m"]["idle_s"] == 0
        gate.set()
        assert stream.text() == "word"
        assert wait_for(lambda: pool.stats()["models"]["m"]["idle_s"] > 0, 30)
