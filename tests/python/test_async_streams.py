"""Many asyncio streams on one event loop: each gets exactly its own text, and no stream holds a thread."""

from __future__ import annotations

import asyncio
import os
import threading

import mpool

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
