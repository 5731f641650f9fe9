"""Continuous batching of text generation: requests join a replica's running
batch between its steps and leave when they end, each with the output it has
alone.

Every test holds the batch open with an *anchor*: a long stream that is not read,
so its bounded buffer fills and it pauses (a paused sequence sits out steps and
stalls no other) while the replica stays in its batch. With one replica, every
request submitted meanwhile runs in that batch. Solo runs are the same requests
one at a time on an idle pool. Tiny random decoders (decoder_models.py).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mpool
import mpool.testing
from decoder_models import build_decoder

VOCAB = 400


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batching")
    return {arch: build_decoder(root, arch) for arch in ("llama", "qwen2_sliding", "phi3_longrope", "qwen2_moe")}


def ids_of(n: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.RandomState(seed).randint(8, VOCAB, size=n)]


def collect(stream: mpool.TextStream, first: list[Any] | None = None) -> tuple[Any, ...]:
    """Everything a caller sees of a stream: ids, text, logprobs, finish reason."""
    chunks = list(first or []) + list(stream)
    ids = [i for c in chunks for i in c.token_ids]
    text = "".join(c.text for c in chunks)
    logprobs = [(lp.token_id, round(lp.logprob, 6)) for c in chunks for lp in (c.logprobs or [])]
    return ids, text, logprobs, stream.finish_reason


def request_specs(n: int) -> list[tuple[list[int], dict[str, Any]]]:
    """n requests of different prompt lengths, sampling parameters and stop conditions."""
    specs = []
    for i in range(n):
        params: dict[str, Any] = dict(max_tokens=6 + 5 * (i % 7))
        kind = i % 4
        if kind == 0:
            params.update(temperature=0, ignore_eos=True)
        elif kind == 1:
            params.update(temperature=0.7 + 0.1 * i, top_k=40, top_p=0.9, seed=100 + i, ignore_eos=True)
        elif kind == 2:
            params.update(temperature=1.2, min_p=0.05, seed=7 * i, repetition_penalty=1.3, logprobs=3)
        else:
            params.update(temperature=0, stop=["e", "a "], frequency_penalty=0.5, presence_penalty=0.3)
        specs.append((ids_of(3 + 5 * i, seed=i), params))
    return specs


def anchor(pool: mpool.Pool, key: str = "m") -> tuple[mpool.TextStream, list[Any]]:
    """A stream that outlasts its buffer: unread, it pauses and keeps the batch open."""
    stream = pool.generate(key, ids_of(4, seed=999), max_tokens=200, temperature=0, ignore_eos=True, timeout=120)
    return stream, [next(stream)]  # its first piece: the batch is running


def running_settles_at(pool: mpool.Pool, n: int) -> bool:
    """Whether the running count reaches n: a stream's end reaches its reader just
    before its sequence leaves the replica's count."""
    deadline = time.monotonic() + 30
    while pool.stats()["models"]["m"]["running"] != n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# Cache room for every sequence of a test at once (the default is one context,
# which the anchor alone nearly fills).
ROOMY = {"kv_cache_tokens": 8192}
# The identity tests run each request solo first, which caches its prompt's blocks;
# the batch then reads them instead of computing them, in other chunk shapes, and
# prompts keep their bits in any chunking in every dtype (the tests after
# tokens_of). The identity tests hold every dtype to equal bits through that
# reuse; EXACT turns the prefix cache off where a test compares against a run
# without it or counts blocks.
EXACT = {**ROOMY, "prefix_cache": False}

ANCHOR_SPEC = (ids_of(4, seed=999), dict(max_tokens=200, temperature=0, ignore_eos=True))


@pytest.mark.parametrize(
    "arch,dtype,kv",
    [("llama", "float32", "auto"), ("llama", "bfloat16", "auto"), ("llama", "int8", "auto"),
     ("llama", "float32", "bfloat16"), ("llama", "int8", "bfloat16"), ("llama", "bfloat16", "float32"),
     ("qwen2_sliding", "float32", "auto"),
     ("phi3_longrope", "float32", "auto"), ("qwen2_moe", "float32", "auto")],
)
def test_sixteen_sequences_joining_at_staggered_times_each_equal_their_solo_run(
    models: dict[str, Path], arch: str, dtype: str, kv: str
) -> None:
    specs = request_specs(16)
    with mpool.Pool() as pool:
        # Prompts from 3 to 78 tokens run in prefill chunks of 16, interleaved with decode
        # steps; kv: the dtype the cache stores keys and values in.
        options = {"prefill_chunk": 16, "kv_cache_dtype": kv, **ROOMY}
        pool.register("m", models[arch], max_replicas=1, dtype=dtype, options=options)
        solo = [collect(pool.generate("m", ids, **params)) for ids, params in specs]
        solo_anchor = collect(pool.generate("m", ANCHOR_SPEC[0], **ANCHOR_SPEC[1]))

        held, held_first = anchor(pool)
        streams = [pool.generate("m", ids, timeout=120, **params) for ids, params in specs[:8]]
        firsts: list[list[Any]] = []
        for s in streams:  # the first eight are running when the last eight arrive
            firsts.append([c for c in [next(s, None)] if c is not None])
        streams += [pool.generate("m", ids, timeout=120, **params) for ids, params in specs[8:]]
        firsts += [[] for _ in specs[8:]]
        batched = [collect(s, f) for s, f in zip(streams, firsts)]
        assert running_settles_at(pool, 1)  # all done; the anchor still holds the batch
        assert collect(held, held_first) == solo_anchor
    for i, (got, want) in enumerate(zip(batched, solo)):
        assert got == want, f"request {i} ({specs[i][1]}) differs in the batch"


def test_cancelled_and_timed_out_sequences_leave_without_disturbing_the_others(models: dict[str, Path]) -> None:
    specs = request_specs(6)
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1, options=EXACT)
        solo = [collect(pool.generate("m", ids, **params)) for ids, params in specs]
        held, held_first = anchor(pool)
        streams = [pool.generate("m", ids, timeout=120, **params) for ids, params in specs]
        cancelled = pool.generate("m", ids_of(9, 50), max_tokens=150, temperature=0, ignore_eos=True)
        timed_out = pool.generate("m", ids_of(9, 51), max_tokens=150, temperature=0, ignore_eos=True, timeout=0.5)
        next(cancelled)
        cancelled.close()  # its consumer leaves mid-generation
        time.sleep(1.0)  # the unread one pauses, then its deadline passes inside the batch
        with pytest.raises(mpool.Timeout):
            collect(timed_out)
        assert cancelled.finish_reason == "cancelled"
        assert [collect(s) for s in streams] == solo
        assert running_settles_at(pool, 1)
        collect(held, held_first)
        # The replica serves on.
        assert collect(pool.generate("m", *specs[0][:1], **specs[0][1])) == solo[0]


def usage_settles_at(pool: mpool.Pool, **expected: float) -> dict[str, float]:
    """The model's usage gauges once they read `expected` (they change between steps)."""
    deadline = time.monotonic() + 30
    while True:
        usage = pool.stats()["models"]["m"]["usage"]
        if all(usage.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
            return usage


def blocks(usage: dict[str, float]) -> tuple[float, float, float]:
    """Blocks held or promised, blocks free (cached ones included), and sequences."""
    held = usage["kv_cache_blocks_in_use"] + usage["kv_cache_blocks_reserved"]
    return held, usage["kv_cache_blocks_free"], usage["batch_sequences"]


def test_a_closed_stream_frees_its_cache_blocks_within_a_step_and_stats_show_them(
    models: dict[str, Path],
) -> None:
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1, options={"kv_cache_tokens": 1000})
        pool.load("m")
        # 1000 positions in blocks of 16: 63 blocks.
        assert blocks(usage_settles_at(pool, batch_sequences=0)) == (0, 63, 0)
        held, held_first = anchor(pool)  # 4 + 200 positions: 13 blocks
        closing = pool.generate("m", ids_of(10, 4), max_tokens=100, temperature=0, ignore_eos=True)  # 110: 7
        next(closing)
        assert blocks(usage_settles_at(pool, batch_sequences=2)) == (20, 43, 2)
        closing.close()
        assert blocks(usage_settles_at(pool, batch_sequences=1)) == (13, 50, 1)
        collect(held, held_first)
        usage = usage_settles_at(pool, batch_sequences=0)
        assert blocks(usage) == (0, 63, 0)
        # What the two generated, in full blocks of known tokens, stays cached for reuse (and counts as free).
        assert usage["kv_cache_blocks_cached"] > 0 and usage["kv_cache_blocks_in_use"] == 0


def test_busy_batching_replica_counts_each_sequence_as_running(models: dict[str, Path]) -> None:
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1, options=ROOMY)
        a, a_first = anchor(pool)
        b, b_first = anchor(pool)  # same request: pauses the same way, in the same batch
        stats = pool.stats()["models"]["m"]
        assert stats["running"] == 2 and stats["busy_replicas"] == 1 and stats["replicas"] == 1
        assert collect(a, a_first) == collect(b, b_first)


def test_request_beyond_free_cache_waits_then_completes_and_beyond_the_whole_cache_is_refused(
    models: dict[str, Path],
) -> None:
    prompt = ids_of(10, 3)
    with mpool.Pool() as pool:
        # The anchor holds 4 + 200 positions; the cache holds 230 (the context is 256).
        pool.register("m", models["llama"], max_replicas=1, options={"kv_cache_tokens": 230})
        solo = collect(pool.generate("m", prompt, max_tokens=50, temperature=0, ignore_eos=True))
        held, held_first = anchor(pool)
        with pytest.raises(mpool.InvalidInput, match=r"needs 240 cache positions .* holds 230 \(option kv_cache_tokens\)"):
            collect(pool.generate("m", prompt, max_tokens=230, temperature=0, ignore_eos=True))
        waiting = pool.generate("m", prompt, max_tokens=50, temperature=0, ignore_eos=True, timeout=120)
        expires = pool.generate("m", prompt, max_tokens=50, temperature=0, ignore_eos=True, timeout=0.3)
        with pytest.raises(mpool.Timeout):  # it waited for room (behind the first), under its own deadline
            collect(expires)
        assert running_settles_at(pool, 2)  # the anchor, and the first in line for room
        collect(held, held_first)  # the anchor ends; its positions go back
        assert collect(waiting) == solo


def test_a_request_that_leaves_max_tokens_unset_stops_where_the_kv_cache_ends_not_refused(
    models: dict[str, Path],
) -> None:
    # A cache smaller than the context: the default length asks for no particular
    # length, so it ends with "length" at the cache's end; an explicit one beyond it is refused.
    prompt = ids_of(10, 3)
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1, options={"kv_cache_tokens": 64})
        chunks = list(pool.generate("m", prompt, temperature=0, ignore_eos=True))
        assert sum(len(c.token_ids) for c in chunks) == 64 - len(prompt)
        assert chunks[-1].finish_reason == "length"
        with pytest.raises(mpool.InvalidInput, match=r"cache positions .* holds 64 \(option kv_cache_tokens\)"):
            list(pool.generate("m", prompt, max_tokens=100, temperature=0, ignore_eos=True))


def test_max_batch_bounds_the_sequences_a_replica_runs_at_once(models: dict[str, Path]) -> None:
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1, options={"max_batch": 2, **ROOMY})
        a, a_first = anchor(pool)
        b, b_first = anchor(pool)
        c = pool.generate("m", ids_of(5, 8), max_tokens=3, temperature=0, timeout=0.5)
        with pytest.raises(mpool.Timeout):  # no third seat while both anchors run
            collect(c)
        collect(a, a_first)
        collect(b, b_first)
        assert len(collect(pool.generate("m", ids_of(5, 8), max_tokens=3, temperature=0, ignore_eos=True))[0]) == 3
    with pytest.raises(mpool.InvalidInput, match=r"max_batch must be in \[1, 1024\], got 0"):
        with mpool.Pool() as pool:
            pool.register("m", models["llama"], options={"max_batch": 0})
            pool.load("m")


SHARED = ids_of(40, seed=4242)


def test_soak_of_500_mixed_requests_frees_every_sequence_and_returns_the_memory(models: dict[str, Path]) -> None:
    with mpool.Pool() as pool:
        pool.register("m", models["qwen2_sliding"], max_replicas=1, options={"prefill_chunk": 8, **ROOMY})
        pool.load("m")
        committed = pool.stats()["devices"][0]["committed_mb"]
        outcomes: dict[str, int] = {}
        lock = threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(125):  # prompts that share prefixes of 0 to 40 tokens, and some whole
                ids = SHARED[: rng.randint(0, 40)] + ids_of(rng.randint(0, 20), rng.randint(0, 10**6))
                ids = ids or SHARED[:16]
                params: dict[str, Any] = dict(max_tokens=rng.randint(1, 12), temperature=rng.choice([0, 0.9]),
                                              seed=rng.randint(0, 99), stop=rng.choice([[], ["e"]]))
                stream = pool.generate("m", ids, timeout=120, **params)
                action = rng.random()
                try:
                    if action < 0.2:
                        next(stream, None)
                        stream.close()
                        outcome = "cancelled"
                    else:
                        collect(stream)
                        outcome = str(stream.finish_reason)
                except mpool.PoolError as e:  # none expected: counted so the assertion names it
                    outcome = type(e).__name__
                with lock:
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1

        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert sum(outcomes.values()) == 500
        assert set(outcomes) <= {"stop", "length", "cancelled"}, outcomes
        stats = pool.stats()
        deadline = time.monotonic() + 30
        while stats["models"]["m"]["busy_replicas"] and time.monotonic() < deadline:
            time.sleep(0.01)  # the last closed stream's sequence leaves at the batch's next step
            stats = pool.stats()
        m = stats["models"]["m"]
        assert m["running"] == 0 and m["queued"] == 0 and m["replicas"] == 1
        usage = usage_settles_at(pool, batch_sequences=0)
        assert usage["kv_cache_blocks_in_use"] == usage["kv_cache_blocks_reserved"] == 0
        assert usage["kv_cache_blocks_free"] == 8192 // 16  # every block, the cached prefixes included
        assert usage["prefix_cache_hit_tokens"] > 0 and 0 < usage["prefix_cache_hit_rate"] < 1
        assert stats["devices"][0]["committed_mb"] == committed
        counts = m["counts"]
        assert counts["requests"] == counts["succeeded"] + counts["cancellations"]  # load() succeeded too


# --- the paged cache's prefix reuse ------------------------------------------------


def collect_raw(stream: mpool.TextStream) -> tuple[Any, ...]:
    """ids, finish reason and each step's logprobs as the floats the model gave."""
    chunks = list(stream)
    logprobs = [(lp.token_id, lp.logprob, list(lp.top))
                for c in chunks for lp in (c.logprobs or [])]
    return [i for c in chunks for i in c.token_ids], stream.finish_reason, logprobs


# Prompts run under kernels::RowInvariant: float32, bfloat16 and int8 linears
# give a row the bits it has alone, and a prompt's rows attend as their decode
# steps do. So a prompt gives the same bits in any chunking: all at once, in
# chunks, or a cached prefix (prefilled or decoded) and the rest; latent
# attention's per-head maps too (row by row).
INVARIANT_ARCHS = {
    "llama": {},
    "qwen2_sliding": {},
    "phi3_longrope": {},
    "qwen3": {},
    "qwen2_moe": {},
    "qwen3_moe": {},
    "llama_bias": {},
    "deepseek_v3": {},  # latent attention, its experts, the sigmoid router
    # odd widths: vector tails in every row
    "llama_odd": dict(arch="llama", hidden_size=36, num_attention_heads=6, num_key_value_heads=3, intermediate_size=37),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("arch", INVARIANT_ARCHS)
def test_a_prompt_gives_the_same_logits_bits_in_any_chunking_in_every_dtype(
    tmp_path: Path, arch: str, dtype: str
) -> None:
    overrides = dict(INVARIANT_ARCHS[arch])
    path = build_decoder(tmp_path, overrides.pop("arch", arch), name=arch, **overrides)
    ids = ids_of(120, seed=21)
    for kv in ["auto"] + (["bfloat16"] if arch == "llama" else []):  # and a cache of another dtype
        by_position: dict[int, dict[int, np.ndarray]] = {}
        for chunk in (1, 5, 16, 17, 40, 512):
            out = mpool.testing.probe("decoder.logits", path=str(path), ids=ids, chunk=chunk, dtype=dtype,
                                      kv_cache_dtype=kv)
            by_position[chunk] = dict(zip(out["positions"].tolist(), out["logits"]))
        one_by_one = by_position[1]  # every position, each a chunk of one row
        assert sorted(one_by_one) == list(range(120))
        for chunk, logits in by_position.items():
            for position, row in logits.items():
                assert np.array_equal(row, one_by_one[position]), f"{kv} cache, chunks of {chunk}: position {position}"


@pytest.mark.parametrize("arch,dtype", [("llama", "float32"), ("llama", "bfloat16"), ("llama", "int8"),
                                        ("qwen2_moe", "float32"), ("qwen2_moe", "bfloat16"),
                                        ("qwen2_sliding", "float32"), ("deepseek_v3", "float32"),
                                        ("deepseek_v3", "bfloat16")])
def test_requests_run_solo_then_batched_over_their_cached_prompts_give_the_same_logprob_bits(
    models: dict[str, Path], arch: str, dtype: str, tmp_path: Path
) -> None:
    # The prefix cache on (the default): the batched requests read their prompts'
    # blocks that their solo runs published and compute only the rest, in other
    # chunks (a prompt of a whole number of blocks recomputes just its last token).
    specs = [(ids, {**params, "logprobs": 2}) for ids, params in request_specs(12)]
    specs.append((ids_of(32, seed=77), dict(max_tokens=10, temperature=0, ignore_eos=True, logprobs=2)))
    path = models[arch] if arch in models else build_decoder(tmp_path, arch)
    with mpool.Pool() as pool:
        pool.register("m", path, max_replicas=1, dtype=dtype, options={"prefill_chunk": 16, **ROOMY})
        solo = [collect_raw(pool.generate("m", ids, **params)) for ids, params in specs]
        again = collect_raw(pool.generate("m", *specs[-1][:1], **specs[-1][1]))
        held, held_first = anchor(pool)
        streams = [pool.generate("m", ids, timeout=120, **params) for ids, params in specs]
        batched = [collect_raw(s) for s in streams]
        collect(held, held_first)
        usage = usage_settles_at(pool, batch_sequences=0)
    # Each batched prompt read its whole blocks (all but the last token of a
    # prompt of whole blocks); so did the solo run met again.
    def read(n: int) -> int:
        return n - 1 if n % 16 == 0 else n // 16 * 16

    assert usage["prefix_cache_hit_tokens"] == sum(read(len(ids)) for ids, _ in specs) + read(32)
    assert again == solo[-1]
    for i, (got, want) in enumerate(zip(batched, solo)):
        assert got == want, f"request {i} ({specs[i][1]}) differs batched over its cached prompt"


@pytest.mark.parametrize("arch,dtype,kv", [("llama", "float32", "auto"), ("llama", "int8", "auto"),
                                           ("llama", "float32", "bfloat16"), ("llama", "bfloat16", "auto"),
                                           ("llama", "bfloat16", "float32"), ("qwen2_moe", "float32", "auto"),
                                           ("qwen2_moe", "bfloat16", "auto"), ("qwen2_sliding", "bfloat16", "auto"),
                                           ("qwen2_sliding", "float32", "auto"), ("deepseek_v3", "float32", "auto"),
                                           ("deepseek_v3", "int8", "auto")])
@pytest.mark.parametrize("together", [False, True], ids=["alone", "batched"])
def test_a_conversations_next_turn_over_blocks_its_decode_steps_wrote_gives_the_bits_of_computing_them(
    models: dict[str, Path], arch: str, dtype: str, kv: str, together: bool, tmp_path: Path
) -> None:
    # Turn 1's answer is decoded step by step and its full blocks are published;
    # turn 2's prompt (turn 1, its answer, a new message) reads them from the
    # prefix cache. Prompts attend as their decode steps would, so those blocks
    # hold what prefill computes: turn 2 gives the bits of a pool that computes
    # the whole prompt, logprobs included, whether turn 1's steps ran alone or in
    # a batch (one row of a step of several); and with a bfloat16 cache of a
    # float32 model (decode steps read the rounded keys where they lie, prefill
    # reads them back widened).
    conversations = [ids_of(21 + 6 * i, seed=300 + i) for i in range(3 if together else 1)]
    answer = dict(max_tokens=40, temperature=0, ignore_eos=True)
    params = dict(max_tokens=10, temperature=0, ignore_eos=True, logprobs=2)
    options = {"prefill_chunk": 16, "kv_cache_dtype": kv, **ROOMY}
    path = models[arch] if arch in models else build_decoder(tmp_path, arch)
    with mpool.Pool() as pool:
        pool.register("m", path, max_replicas=1, dtype=dtype, options=options)
        streams = [pool.generate("m", ids, timeout=120, **answer) for ids in conversations]
        answers = [collect(s)[0] for s in streams]
        turns = [ids + a + ids_of(9, seed=400 + i) for i, (ids, a) in enumerate(zip(conversations, answers))]
        before = usage_settles_at(pool, batch_sequences=0)["prefix_cache_hit_tokens"]
        reused = [collect_raw(pool.generate("m", ids, **params)) for ids in turns]
        hits = usage_settles_at(pool, batch_sequences=0)["prefix_cache_hit_tokens"] - before
    with mpool.Pool() as pool:
        pool.register("m", path, max_replicas=1, dtype=dtype, options=options)
        computed = [collect_raw(pool.generate("m", ids, **params)) for ids in turns]
    # Each turn read every full block of turn 1 and its answer, whose last
    # position is the answer's last token (sampled, never run): at least two
    # blocks written by decode steps.
    assert hits == sum((len(c) + 40 - 1) // 16 * 16 for c in conversations)
    for i, (got, want) in enumerate(zip(reused, computed)):
        assert got == want, f"conversation {i}: the next turn differs over its cached answer"


def tokens_of(result: tuple[Any, ...]) -> tuple[Any, ...]:
    """ids, text and finish reason: what prefix reuse keeps equal in every dtype
    against a pool without the prefix cache (whose float32 and bfloat16 prompts
    run on the GEMM: the logprobs may differ in the last bits)."""
    ids, text, _, finish = result
    return ids, text, finish


def logprobs_close(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return all(x[0] == y[0] and abs(x[1] - y[1]) < 1e-3 for x, y in zip(a[2], b[2])) and len(a[2]) == len(b[2])


@pytest.mark.parametrize("arch", ["llama", "qwen2_sliding", "qwen2_moe", "deepseek_v3"])
def test_prompts_sharing_a_prefix_read_its_blocks_once_computed_with_the_tokens_of_no_reuse_and_stats_count_the_hits(
    models: dict[str, Path], arch: str, tmp_path: Path
) -> None:
    path = models[arch] if arch in models else build_decoder(tmp_path, arch)
    system = ids_of(40, seed=7)  # two full blocks of 16 and 8 tokens more
    prompts = [system + ids_of(3 + i, seed=100 + i) for i in range(6)]
    params = dict(max_tokens=12, temperature=0, ignore_eos=True, logprobs=1)
    with mpool.Pool() as pool:
        pool.register("m", path, max_replicas=1, options=EXACT)
        computed = [collect(pool.generate("m", p, **params)) for p in prompts]
    with mpool.Pool() as pool:
        pool.register("m", path, max_replicas=1, options=ROOMY)
        first = collect(pool.generate("m", prompts[0], **params))  # computes and publishes the shared blocks
        held, held_first = anchor(pool)
        streams = [pool.generate("m", p, timeout=120, **params) for p in prompts[1:]]  # one batch, all sharing
        reused = [first] + [collect(s) for s in streams]
        collect(held, held_first)
        usage = usage_settles_at(pool, batch_sequences=0)
    for got, want in zip(reused, computed):
        assert tokens_of(got) == tokens_of(want) and logprobs_close(got, want)
    prompt_tokens = sum(len(p) for p in prompts) + len(ANCHOR_SPEC[0])
    assert usage["prefix_cache_prompt_tokens"] == prompt_tokens
    assert usage["prefix_cache_hit_tokens"] == 5 * 32  # each later prompt read the two shared blocks
    assert usage["prefix_cache_hit_rate"] == pytest.approx(5 * 32 / prompt_tokens)


def test_a_prompt_met_again_whole_shares_every_block_and_copies_the_last_before_writing_its_last_token(
    models: dict[str, Path],
) -> None:
    prompt = ids_of(32, seed=11)  # exactly two blocks: the second run needs its last token's logits
    params = dict(max_tokens=20, temperature=0, ignore_eos=True)
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1, options=EXACT)
        want = collect(pool.generate("m", prompt, **params))
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1, options=ROOMY)
        runs = [collect(pool.generate("m", prompt, **params)) for _ in range(3)]
        usage = usage_settles_at(pool, batch_sequences=0)
    # The second and third read 31 positions from the first's blocks; had the
    # last shared block been written in place, the third would read what the
    # second wrote there.
    assert all(tokens_of(r) == tokens_of(want) for r in runs)
    assert usage["prefix_cache_hit_tokens"] == 2 * 31
    assert usage["kv_cache_blocks_in_use"] == 0


def test_a_full_cache_evicts_cached_prefix_blocks_least_recently_used_from_the_end_of_a_chain(
    models: dict[str, Path],
) -> None:
    a, b = ids_of(32, seed=21), ids_of(32, seed=22)
    params = dict(max_tokens=8, temperature=0, ignore_eos=True)
    with mpool.Pool() as pool:
        # Four blocks; each request holds three (32 + 8 positions).
        pool.register("m", models["llama"], max_replicas=1, options={"kv_cache_tokens": 64})
        first_a = collect(pool.generate("m", a, **params))  # publishes a's two prompt blocks
        assert usage_settles_at(pool, batch_sequences=0)["kv_cache_blocks_cached"] == 2
        collect(pool.generate("m", b, **params))  # two free blocks and one evicted: a's second
        usage = usage_settles_at(pool, batch_sequences=0)
        assert usage["kv_cache_blocks_cached"] == 3 and usage["prefix_cache_hit_tokens"] == 0
        again_a = collect(pool.generate("m", a, **params))
        usage = usage_settles_at(pool, batch_sequences=0)
    assert usage["prefix_cache_hit_tokens"] == 16  # a's first block was still cached, its second was not
    assert tokens_of(again_a) == tokens_of(first_a)


@pytest.mark.parametrize("block_size", [1, 5, 64])
def test_any_block_size_shares_whole_blocks_of_a_prefix_with_the_tokens_of_no_reuse(
    models: dict[str, Path], block_size: int
) -> None:
    system = ids_of(40, seed=8)
    prompts = [system + ids_of(6, seed=200 + i) for i in range(3)]
    params = dict(max_tokens=10, temperature=0, ignore_eos=True)
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1, options={**EXACT, "kv_block_size": block_size})
        want = [collect(pool.generate("m", p, **params)) for p in prompts]
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1, options={**ROOMY, "kv_block_size": block_size})
        got = [collect(pool.generate("m", p, **params)) for p in prompts]
        usage = usage_settles_at(pool, batch_sequences=0)
    assert [tokens_of(g) for g in got] == [tokens_of(w) for w in want]
    assert usage["prefix_cache_hit_tokens"] == 2 * (40 // block_size * block_size)
    assert usage["kv_cache_blocks_free"] == -(-8192 // block_size)


@pytest.mark.parametrize("value", [0, 1025])
def test_a_block_size_outside_1_to_1024_is_invalid_input_naming_the_option(models: dict[str, Path], value: int) -> None:
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=rf"option kv_block_size must be in \[1, 1024\], got {value}"):
            pool.register("m", models["llama"], options={"kv_block_size": value})
            pool.load("m")
