"""Request outcomes: timeouts, cancellation, back-pressure, overload, shutdown, GIL, asyncio."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import numpy as np
import pytest

import mpool
import mpool.testing
from models_for_tests import HashEmbedder, WordStreamer, wait_for


def streamer(memory_mb=10, delay=0.0, instances=None, **kw):
    def load(device):
        s = WordStreamer(delay)
        if instances is not None:
            instances.append(s)
        return s

    return mpool.PyModel("text_to_text", load, memory_mb=memory_mb, **kw)



def test_timeout_covers_compute_and_is_a_timeout_error(pool):
    pool.register("slow", mpool.testing.sleep_model(120.0))
    t0 = time.monotonic()
    with pytest.raises(mpool.Timeout) as e:
        pool.embed("slow", ["x"], timeout=0.2)
    assert isinstance(e.value, TimeoutError)
    assert time.monotonic() - t0 < 60.0  # the timeout, not the model's 120 s, ended it
    # the native model saw the cancel and freed its replica
    assert wait_for(lambda: pool.stats()["models"]["slow"]["busy_replicas"] == 0)
    assert pool.stats()["models"]["slow"]["counts"]["timeouts"] == 1


def test_stream_timeout_raises_timeout_mid_stream(pool):
    pool.register("s", streamer(delay=0.05))
    stream = pool.generate("s", "a b c d e f g h", max_tokens=100, timeout=0.3)
    with pytest.raises(mpool.Timeout):
        for _ in stream:
            pass
    assert stream.finish_reason == "error"


def test_closing_a_stream_mid_generation_frees_the_replica(pool):
    instances = []
    pool.register("s", streamer(delay=0.01, instances=instances, max_replicas=1), max_replicas=1)
    stream = pool.generate("s", "one two three", max_tokens=10_000)
    got = [next(stream).text for _ in range(3)]
    assert got == ["one ", "two ", "three "]
    stream.close()
    assert stream.finish_reason == "cancelled"
    assert wait_for(lambda: pool.stats()["models"]["s"]["busy_replicas"] == 0)
    assert wait_for(lambda: sum(i.closed for i in instances) == 1)  # generator's finally ran
    assert pool.generate("s", "again", max_tokens=1).text() == "again "  # the only replica serves again
    assert pool.stats()["models"]["s"]["counts"]["cancellations"] == 1


def test_dropping_a_stream_iterator_cancels_it(pool):
    pool.register("s", mpool.testing.sleep_model(0.01, max_replicas=1), max_replicas=1)
    stream = pool.generate("s", "x", max_tokens=100_000)
    next(stream)
    del stream
    assert wait_for(lambda: pool.stats()["models"]["s"]["counts"]["cancellations"] == 1)
    assert wait_for(lambda: pool.stats()["models"]["s"]["busy_replicas"] == 0)


def test_slow_consumer_gets_every_chunk_in_order(pool):
    pool.register("n", mpool.testing.noop_model())
    stream = pool.generate("n", "x", max_tokens=500)
    texts = []
    for i, chunk in enumerate(stream):
        if i % 100 == 0:
            time.sleep(0.05)  # the producer waits on the bounded buffer meanwhile
        texts.append(chunk.text)
    assert texts[:-1] == [f"{i} " for i in range(500)]
    assert stream.finish_reason == "length"
    assert stream.stats.completion_tokens == 500


def test_final_chunk_carries_finish_reason_and_stats(pool):
    pool.register("s", streamer())
    stream = pool.generate("s", "a b c", max_tokens=2)
    chunks = list(stream)
    assert [c.text for c in chunks] == ["a ", "b ", ""]
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].stats.prompt_tokens == 3
    assert chunks[-1].stats.completion_tokens == 2
    assert chunks[-1].stats.time_to_first_token >= 0
    assert pool.stats()["models"]["s"]["time_to_first_chunk"]["count"] == 1


def test_overloaded_under_a_full_queue_rejects_fast():
    gate = threading.Event()
    with mpool.Pool(max_queue=4, cold_start_replicas=1) as pool:
        pool.register("m", mpool.PyModel("text_embedding", lambda d: HashEmbedder(gate=gate), memory_mb=1,
                                         max_replicas=1))
        futures = [pool._native.embed_async("m", ["x"], None, None)]
        assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 1)
        futures += [pool._native.embed_async("m", ["x"], None, None) for _ in range(4)]  # 1 running + 4 queued
        # Refused while the gate is still shut: a caller that blocked would wait for it.
        with pytest.raises(mpool.Overloaded, match="max_queue=4"):
            pool.embed("m", ["x"])
        assert not gate.is_set() and not futures[0].done()
        gate.set()
        for f in futures:
            assert f.result().shape == (1, 8)


def test_shutdown_mid_stream_ends_the_stream_with_shutting_down():
    pool = mpool.Pool()
    pool.register("s", mpool.testing.sleep_model(0.01))
    stream = pool.generate("s", "x", max_tokens=100_000)
    next(stream)
    closer = threading.Thread(target=pool.close, kwargs={"timeout": 0.05})
    closer.start()
    with pytest.raises(mpool.ShuttingDown):
        for _ in stream:
            pass
    closer.join()
    assert pool.stats()["threads"] == 0
    with pytest.raises(mpool.ShuttingDown):
        pool.embed("s", ["x"])


def test_native_waits_release_the_gil_so_python_threads_progress(pool):
    pool.register("slow", mpool.testing.sleep_model(0.5, max_replicas=1))
    pool.embed("slow", ["warm"])
    ticks = 0
    stop = threading.Event()

    def spin():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.05)
    before = ticks
    pool.embed("slow", ["x"])  # blocks ~0.5 s in C++
    during = ticks - before
    stop.set()
    t.join()
    assert during > 10_000  # the spinning thread ran while we waited


def test_two_thousand_concurrent_mixed_requests_each_get_exactly_one_outcome():
    outcomes: list[tuple[int, str]] = []
    callbacks: dict[int, int] = {}
    lock = threading.Lock()
    with mpool.Pool(max_queue=200, request_timeout=30) as pool:
        pool.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=10))
        pool.register("native", mpool.testing.noop_model())
        pool.register("gen", streamer())
        pool.register("slow", mpool.testing.sleep_model(0.002))

        def called(i):
            with lock:
                callbacks[i] = callbacks.get(i, 0) + 1

        def one(i):
            kind = i % 5
            try:
                if kind == 0:
                    future = pool._native.embed_async("emb", ["boom" if i % 7 == 0 else f"text {i}"], None, None)
                    future.add_done_callback(lambda: called(i))
                    assert future.result().shape == (1, 8)
                elif kind == 1:
                    assert pool.embed("native", [str(i)] * 3).shape == (3, 4)
                elif kind == 2:
                    assert pool.generate("gen", "a b c", max_tokens=3).text() == "a b c "
                elif kind == 3:
                    future = pool._native.embed_async("slow", ["x"], None, 0.001 if i % 11 == 0 else None)
                    future.add_done_callback(lambda: called(i))
                    future.result()
                else:
                    s = pool.generate("native", "x", max_tokens=50)
                    next(s)
                    s.close()  # consumer walks away
                result = "value"
            except mpool.PoolError as e:
                result = type(e).__name__
            with lock:
                outcomes.append((i, result))

        threads = [threading.Thread(target=lambda k=k: [one(k * 100 + j) for j in range(100)]) for k in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Every request ended in exactly one outcome for its caller ...
        assert sorted(i for i, _ in outcomes) == list(range(2000))
        results = dict(outcomes)
        assert set(results.values()) <= {"value", "ModelError", "Timeout", "Overloaded"}
        assert "ModelError" in results.values()
        # ... every future's callbacks ran exactly once, whatever its outcome ...
        futures = [i for i in range(2000) if i % 5 in (0, 3) and results[i] != "Overloaded"]
        assert wait_for(lambda: all(callbacks.get(i) == 1 for i in futures), 30)
        assert all(n == 1 for n in callbacks.values())
        # ... and the pool counted each accepted request once.
        stats = pool.stats()["models"]
        for m in stats.values():
            c = m["counts"]
            assert c["requests"] == c["succeeded"] + c["errors"] + c["timeouts"] + c["cancellations"] + c["rejections"]
        assert stats["emb"]["counts"]["errors"] == sum(1 for i in range(0, 2000, 5) if i % 7 == 0)


def test_asyncio_twins_do_not_block_the_event_loop(pool):
    pool.register("slow", mpool.testing.sleep_model(0.2))
    pool.register("s", streamer())

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        vecs = await asyncio.gather(*(pool.aembed("slow", [f"{i}"]) for i in range(4)))
        words = [c.text async for c in pool.agenerate("s", "x y z", max_tokens=3)]
        t.cancel()
        return vecs, words, ticks

    vecs, words, ticks = asyncio.run(main())
    assert all(v.shape == (1, 4) for v in vecs)
    assert words == ["x ", "y ", "z ", ""]
    assert ticks > 10


def test_async_timeout_raises_timeout(pool):
    pool.register("slow", mpool.testing.sleep_model(5.0))
    with pytest.raises(mpool.Timeout):
        asyncio.run(pool.aembed("slow", ["x"], timeout=0.1))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: p.embed("emb", []), "texts is empty"),
        (lambda p: p.embed("emb", [3]), r"texts\[0\] must be a str"),
        (lambda p: p.embed("emb", None), "texts must be"),
        (lambda p: p.embed("emb", ["x"], timeout=0), "timeout must be"),
        (lambda p: p.generate("gen", ""), "prompt is empty"),
        (lambda p: p.generate("gen", "x", max_tokens=0), r"max_tokens must be an int in \[1, 2147483647\], got 0"),
        (lambda p: p.generate("gen", "x", temperature=-1.0), "temperature must be a finite number >= 0, got -1.0"),
        (lambda p: p.generate("gen", "x", top_p=1.5), r"top_p must be a finite number in \(0, 1\], got 1.5"),
        (lambda p: p.generate("gen", "x", topp=0.5), "unknown generation parameter 'topp'"),
        (lambda p: p.generate_image("gen", "fox", init_image=np.zeros((4, 4, 3), np.uint8), strength=1.5),
         r"strength must be a finite number in \[0, 1\], got 1.5"),
        (lambda p: p.generate_image("gen", "fox", strength=0.5), "strength applies to img2img: give init_image too"),
        (lambda p: p.embed("gen", ["x"]), "does not serve text_embedding"),
    ],
)
def test_bad_arguments_raise_invalid_input_and_the_pool_stays_healthy(pool, call, match):
    pool.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
    pool.register("gen", streamer())
    with pytest.raises(mpool.InvalidInput, match=match) as e:
        call(pool)
    assert isinstance(e.value, ValueError)
    assert pool.embed("emb", ["ok"]).shape == (1, 8)


def test_unknown_model_is_model_not_found_listing_registered_keys(pool):
    pool.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
    with pytest.raises(mpool.ModelNotFound, match="registered: emb"):
        pool.embed("nope", ["x"])


def test_task_argument_reaches_the_model(pool):
    pool.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
    doc = pool.embed("emb", ["abc"])
    query = pool.embed("emb", ["abc"], task="query")
    np.testing.assert_array_equal(query, -doc)


def test_random_mixed_load_from_many_threads_leaves_the_pool_idle_and_consistent():
    rng = random.Random(0)
    with mpool.Pool(max_queue=64) as pool:
        pool.register("native", mpool.testing.noop_model())
        errors = []
        done = {"embed": 0, "stream": 0, "closed": 0, "overloaded": 0}
        lock = threading.Lock()

        def count(what):
            with lock:
                done[what] += 1

        def worker(seed):
            r = random.Random(seed)
            for _ in range(50):
                try:
                    if r.random() < 0.5:
                        n = r.randint(1, 4)
                        out = pool.embed("native", ["x"] * n)
                        assert out.shape == (n, 4) and not out.any()  # the noop model's zeros
                        count("embed")
                    else:
                        n = r.randint(1, 20)
                        s = pool.generate("native", "x", max_tokens=n)
                        if r.random() < 0.3:
                            s.close()
                            assert s.finish_reason == "cancelled"
                            count("closed")
                        else:
                            assert s.text() == "".join(f"{i} " for i in range(n))
                            assert s.finish_reason == "length" and s.stats.completion_tokens == n
                            count("stream")
                except mpool.Overloaded:
                    count("overloaded")
                except Exception as e:  # noqa: BLE001 - the assertion below reports it
                    errors.append(e)

        threads = [threading.Thread(target=worker, args=(rng.random(),)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sum(done.values()) == 400
        assert wait_for(lambda: pool.stats()["models"]["native"]["busy_replicas"] == 0)
        m = pool.stats()["models"]["native"]
        c = m["counts"]
        assert m["queued"] == 0
        assert c["requests"] == 400
        assert c["rejections"] == done["overloaded"]
        # A closed stream settles as cancelled, unless it had already finished.
        assert c["succeeded"] + c["cancellations"] == done["embed"] + done["stream"] + done["closed"]
        assert c["cancellations"] <= done["closed"]
        assert c["errors"] == 0 and c["timeouts"] == 0


def test_max_tokens_holds_even_for_a_model_that_ignores_it(pool):
    class Chatty:
        def generate(self, prompt, params):
            while True:
                yield "blah "

    pool.register("chatty", mpool.PyModel("text_to_text", lambda d: Chatty(), memory_mb=1))
    stream = pool.generate("chatty", "hi", max_tokens=3)
    assert stream.text() == "blah blah blah "
    assert stream.finish_reason == "length"
    assert stream.stats.completion_tokens == 3
