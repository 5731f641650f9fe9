"""Cross-request batching: queued embedding requests share one model call, and nothing else changes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import mpool
from models_for_tests import HashEmbedder, wait_for


class RecordingEmbedder(HashEmbedder):
    """HashEmbedder that records how many texts each call got; the first call waits on a gate."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.first_gate = gate

    def embed(self, texts, task=None):
        if not self.calls:
            self.first_gate.wait(10)
        self.calls.append(list(texts))
        return super().embed(texts, task)



@pytest.fixture
def one_replica_pool():
    with mpool.Pool(cold_start_replicas=1) as pool:
        yield pool


def busy_gated_model(pool, **kw):
    """Registers a one-replica RecordingEmbedder as "m" and holds its replica busy
    on a first request; returns (model, gate, first): set the gate to release it."""
    gate = threading.Event()
    model = RecordingEmbedder(gate)
    pool.register("m", mpool.PyModel("text_embedding", lambda d: model, memory_mb=1, max_replicas=1, **kw))
    first = pool._native.embed_async("m", ["first"], None, None)
    assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 1)
    return model, gate, first


def test_requests_queued_behind_a_busy_replica_run_as_one_model_call(one_replica_pool):
    pool = one_replica_pool
    model, gate, first = busy_gated_model(pool)
    texts = [f"text number {i}" + "!" * i for i in range(10)]
    futures = [pool._native.embed_async("m", [t], None, None) for t in texts]
    gate.set()
    first.result()
    rows = [f.result() for f in futures]
    assert len(model.calls) == 2  # the first request, then all ten together
    assert sorted(model.calls[1]) == sorted(texts)
    assert [len(t) for t in model.calls[1]] == sorted(len(t) for t in texts)  # shortest first
    expected = HashEmbedder().embed(texts)
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(r, expected[i : i + 1])


def test_results_are_identical_together_one_by_one_and_from_16_threads(pool):
    pool.register("m", mpool.PyModel("text_embedding", lambda d: HashEmbedder(delay=0.001), memory_mb=1))
    texts = [f"sentence {i} " * (1 + i % 5) for i in range(64)]
    together = pool.embed("m", texts)
    one_by_one = np.concatenate([pool.embed("m", [t]) for t in texts])
    from_threads = [None] * len(texts)

    def worker(k):
        for i in range(k, len(texts), 16):
            from_threads[i] = pool.embed("m", [texts[i]])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(together, one_by_one)
    np.testing.assert_array_equal(together, np.concatenate(from_threads))


def test_a_malformed_input_in_a_batch_fails_only_its_own_request(one_replica_pool):
    pool = one_replica_pool
    model, gate, first = busy_gated_model(pool)
    good = [pool._native.embed_async("m", [f"good {i}"], None, None) for i in range(3)]
    bad = pool._native.embed_async("m", ["boom"], None, None)
    more = [pool._native.embed_async("m", [f"more {i}"], None, None) for i in range(3)]
    gate.set()
    first.result()
    for f in good + more:
        assert f.result().shape == (1, 8)
    with pytest.raises(mpool.ModelError, match="cannot embed 'boom'"):
        bad.result()


def test_requests_with_different_tasks_are_never_merged(one_replica_pool):
    pool = one_replica_pool
    model, gate, first = busy_gated_model(pool)
    doc = pool._native.embed_async("m", ["abc"], None, None)
    query = pool._native.embed_async("m", ["abc"], "query", None)
    gate.set()
    first.result()
    np.testing.assert_array_equal(query.result(), -doc.result())
    assert len(model.calls) == 3


def test_batch_budget_zero_turns_merging_off(one_replica_pool):
    pool = one_replica_pool
    model, gate, first = busy_gated_model(pool, batch_budget=0)
    futures = [pool._native.embed_async("m", [str(i)], None, None) for i in range(4)]
    gate.set()
    first.result()
    for f in futures:
        f.result()
    assert [len(c) for c in model.calls] == [1, 1, 1, 1, 1]


class GatedImageEmbedder:
    """Mean colour per image; records each call's image count; the first call waits
    on a gate; an all-black image is one it cannot embed."""

    dimension = 3

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.calls: list[int] = []

    def embed_images(self, images):
        if not self.calls:
            self.gate.wait(10)
        self.calls.append(len(images))
        if any(int(i.max()) == 0 for i in images):
            raise ValueError("cannot embed a black image")
        return np.stack([i.reshape(-1, 3).mean(0) for i in images]).astype(np.float32)


def test_queued_image_requests_share_one_call_and_a_bad_image_fails_only_its_request(one_replica_pool):
    pool = one_replica_pool
    gate = threading.Event()
    model = GatedImageEmbedder(gate)
    pool.register("img", mpool.PyModel("image_embedding", lambda d: model, memory_mb=1, max_replicas=1))
    def submit(pixels):
        return pool._native.embed_images_async("img", [("array", pixels)], 60.0, 10.0, False, 1 << 20)

    first = submit(np.full((2, 2, 3), 1, np.uint8))
    assert wait_for(lambda: pool.stats()["models"]["img"]["busy_replicas"] == 1)
    colors = [10 * (i + 1) for i in range(5)]
    good = [submit(np.full((3, 3, 3), c, np.uint8)) for c in colors]
    bad = submit(np.zeros((3, 3, 3), np.uint8))
    gate.set()
    first.result()
    for c, f in zip(colors, good):
        np.testing.assert_array_equal(f.result(), np.full((1, 3), c, np.float32))
    with pytest.raises(mpool.ModelError, match="black image"):
        bad.result()
    # The six queued requests ran as one call, which failed; then one by one.
    assert model.calls[:2] == [1, 6] and sorted(model.calls[2:]) == [1] * 6
