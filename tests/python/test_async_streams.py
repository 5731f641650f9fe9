"""Many asyncio streams on one event loop: each gets exactly its own text, and no stream holds a thread."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

import mpool
from models_for_tests import wait_for

STREAMS = 500
WORDS = 6
MAX_REPLICAS = 4
# Threads a pool adds besides its replicas: its maintenance thread.
POOL_OWN_THREADS = 1
# Room for a helper thread the runtime may start on its own (none is expected).
SLACK = 2


def thread_count() -> int:
    """Every thread of this process, native ones included (/proc/self/task has one entry per thread)."""
    return len(os.listdir("/proc/self/task"))


class GatedCounter:
    """A text_to_text model: writes "<prompt>.<k> " for k < WORDS, once the gate is open.

    Every word carries its stream's prompt, so a chunk delivered to the wrong
    stream, or twice, or not at all, changes that stream's text.
    """

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def generate(self, prompt, params):
        if not self.gate.wait(120):  # on the replica thread, with the GIL released
            raise RuntimeError("the gate never opened")
        for k in range(WORDS):
            yield {"text": f"{prompt}.{k} ", "token_ids": [k]}
        yield {"finish_reason": "stop", "prompt_tokens": 1}


def expected_text(i: int) -> str:
    return "".join(f"s{i}.{k} " for k in range(WORDS))


def test_500_concurrent_agenerate_streams_on_one_loop_get_exact_texts_with_bounded_threads():
    gate = threading.Event()
    baseline = thread_count()
    limit = baseline + POOL_OWN_THREADS + MAX_REPLICAS + SLACK
    samples: list[int] = []
    waiting = 0
    waiting_when_opened = -1

    async def one(pool: mpool.Pool, i: int) -> tuple[str, list[str | None]]:
        nonlocal waiting, waiting_when_opened
        chunks = pool.agenerate("counter", f"s{i}", timeout=600)
        samples.append(thread_count())
        waiting += 1
        if waiting == STREAMS:
            # Every other stream has been submitted and is awaiting its first chunk now.
            waiting_when_opened = waiting
            samples.append(thread_count())
            gate.set()
        texts: list[str] = []
        reasons: list[str | None] = []
        async for chunk in chunks:
            samples.append(thread_count())
            texts.append(chunk.text)
            reasons.append(chunk.finish_reason)
        return "".join(texts), reasons

    async def main(pool: mpool.Pool) -> list[tuple[str, list[str | None]]]:
        return await asyncio.gather(*(one(pool, i) for i in range(STREAMS)))

    with mpool.Pool(max_queue=STREAMS) as pool:
        pool.register(
            "counter",
            mpool.PyModel("text_to_text", lambda device: GatedCounter(gate), memory_mb=1),
            max_replicas=MAX_REPLICAS,
        )
        results = asyncio.run(main(pool))
        samples.append(thread_count())
        counts = pool.stats()["models"]["counter"]["counts"]

    assert waiting_when_opened == STREAMS
    assert len(results) == STREAMS
    for i, (text, reasons) in enumerate(results):
        assert text == expected_text(i), f"stream {i}"
        assert reasons[-1] == "stop" and reasons.count("stop") == 1, f"stream {i}"
    assert counts["timeouts"] == 0 and counts["cancellations"] == 0
    # Sampled at each stream's start, at the gate (all 500 waiting), at every chunk and after the run.
    assert max(samples) <= limit, (baseline, max(samples), limit)


def _slow_image_server(fetching: threading.Event, release: threading.Event):
    """A local HTTP server that sets ``fetching`` when asked, and sends its PNG once
    ``release`` is set; (server, url)."""
    import http.server
    import io
    import socketserver

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    png = buf.getvalue()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetching.set()
            release.wait(60)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/x.png"


def test_cancelling_aembed_images_while_its_image_is_fetched_cancels_the_request_it_then_makes():
    import numpy as np

    fetching, release, hold = threading.Event(), threading.Event(), threading.Event()

    class Images:
        dimension = 4

        def embed_images(self, images):
            hold.wait(60)
            return np.ones((len(images), 4), np.float32)

    server, url = _slow_image_server(fetching, release)
    try:
        with mpool.Pool(allow_private_urls=True) as pool:
            pool.register("img", mpool.PyModel("image_embedding", lambda d: Images(), memory_mb=1, max_replicas=1))
            pool.load("img")
            counts = lambda: pool.stats()["models"]["img"]["counts"]  # noqa: E731
            before = counts()

            async def cancel_during_the_fetch() -> None:
                task = asyncio.ensure_future(pool.aembed_images("img", [url]))
                assert await asyncio.get_running_loop().run_in_executor(None, fetching.wait, 30)
                task.cancel()  # the executor is in the fetch, held by the server
                release.set()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

            asyncio.run(cancel_during_the_fetch())
            hold.set()
            pool.close()  # drains: a request queued after the fetch would run now
            after = counts()
            assert after["requests"] == before["requests"]  # none was queued for the cancelled call
            assert after["succeeded"] == before["succeeded"]
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_request_that_ends_after_its_event_loop_closed_reports_nothing_from_the_replica_thread():
    import gc

    import numpy as np

    entered, gate = threading.Event(), threading.Event()

    class Slow:
        dimension = 4

        def embed(self, texts, task=None):
            entered.set()
            gate.wait(60)
            return np.ones((len(texts), 4), np.float32)

    with mpool.Pool() as pool:
        pool.register("m", mpool.PyModel("text_embedding", lambda d: Slow(), memory_mb=1))
        loop = asyncio.new_event_loop()
        task = loop.create_task(pool.aembed("m", ["x"]))
        task._log_destroy_pending = False  # it stays pending with its loop: that is the point
        assert loop.run_until_complete(loop.run_in_executor(None, entered.wait, 30))
        loop.close()  # e.g. a loop stopped by Ctrl-C, then closed
        gate.set()  # the request ends now; its callback finds the loop closed
        assert wait_for(lambda: pool.stats()["models"]["m"]["counts"]["succeeded"] == 1, 30)
        del task
        gc.collect()


class _FakeNativeStream:
    """A native stream as ``_async.wait_chunks`` sees it: nothing there at first,
    then its end. The test calls the registered ``on_ready`` callback itself."""

    def __init__(self) -> None:
        self.ready = None
        self.polls = 0
        self.cancels = 0

    def poll(self):
        self.polls += 1
        return (False, None) if self.polls == 1 else (True, None)

    def on_ready(self, fn):
        self.ready = fn

    def remaining(self):
        return float("inf")

    def cancel(self):
        self.cancels += 1

    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration

    def final_image(self):
        import numpy as np

        return np.zeros((1, 1, 3), np.uint8)


def _cancel_as_woken(start, waiting, wake, hops: int, settle: int = 0) -> asyncio.Task:
    """Runs ``start()`` as a task until ``waiting()`` (it registered its wake-up),
    lets it settle ``settle`` loop steps, then the native side's wake-up arrives
    (``wake()``, as a producing thread's call_soon_threadsafe) and, ``hops`` loop
    steps later, the task is cancelled. Some of these orders made
    asyncio.wait_for (before Python 3.12) return normally and lose the cancel;
    each hop count tries another of them."""

    async def main():
        task = asyncio.ensure_future(start())
        while not waiting():
            await asyncio.sleep(0)
        for _ in range(settle):
            await asyncio.sleep(0)
        wake()
        for _ in range(hops):
            await asyncio.sleep(0)
        accepted = task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return task, accepted

    task, accepted = asyncio.run(main())
    assert accepted, "the task ended before it was cancelled: this hop count tests nothing"
    return task


def _cancel_as_the_stream_wakes(consume, native, hops: int) -> asyncio.Task:
    return _cancel_as_woken(consume, lambda: native.ready is not None, lambda: native.ready(), hops)


@pytest.mark.parametrize("hops", [0, 1])
def test_an_image_streams_aresult_cancelled_as_a_chunk_wakes_it_raises_cancelled_and_cancels_the_generation(hops):
    native = _FakeNativeStream()
    stream = mpool.ImageStream(native)
    task = _cancel_as_the_stream_wakes(stream.aresult, native, hops)
    assert task.cancelled()
    assert native.cancels == 1


@pytest.mark.parametrize("hops", [0, 1])
def test_a_text_streams_async_for_cancelled_as_a_chunk_wakes_it_raises_cancelled_and_cancels_the_generation(hops):
    native = _FakeNativeStream()
    stream = mpool.TextStream(native)

    async def consume():
        return [chunk async for chunk in stream]

    task = _cancel_as_the_stream_wakes(consume, native, hops)
    assert task.cancelled()
    assert native.cancels == 1
    assert stream.finish_reason == "cancelled"


class _FakeNativeFuture:
    def __init__(self) -> None:
        self.done_callback = None
        self.cancels = 0

    def add_done_callback(self, fn):
        self.done_callback = fn

    def remaining(self):
        return float("inf")

    def cancel(self):
        self.cancels += 1

    def result(self):
        return "value"


@pytest.mark.parametrize("hops", [0, 1, 2])
def test_a_task_awaiting_a_native_future_cancelled_as_the_result_arrives_is_cancelled_and_cancels_the_call(hops):
    from mpool._async import await_native

    future = _FakeNativeFuture()
    task = _cancel_as_woken(
        lambda: await_native(future), lambda: future.done_callback is not None, lambda: future.done_callback(), hops,
        settle=1,  # the task now waits
    )
    assert task.cancelled()
    assert future.cancels == 1
