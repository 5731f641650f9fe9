"""The native Llama-style decoder against transformers on tiny random models.

Every architecture of the family (Llama, Mistral, Qwen2, Qwen3, Phi-3) and every
RoPE variant is built in the test with random weights (decoder_models.py) and
compared with transformers: prefill logits, 64-token greedy generation, and the
KV cache against recomputing the whole sequence.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

import mpool
import mpool.testing
from decoder_models import ARCHS, build_decoder, build_embedder, shared_tokenizer, special_ids

PROMPT_LEN = 12  # fits every variant with 64 new tokens (the dynamic one has 40 x 2 positions)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    return {arch: build_decoder(root, arch) for arch in ARCHS}


def hf_model(path: Path, dtype: Any = None) -> Any:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
    if model.config.tie_word_embeddings:
        # Tie explicitly: whether from_pretrained ties depends on process-wide
        # transformers state that other tests can leave behind.
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def decoder_logits(path: str, ids: list[int], chunk: int = 0, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(positions, float32 logits) of the native decoder: all at once, or `chunk` tokens per cached step."""
    out = mpool.testing.probe("decoder.logits", path=path, ids=[int(i) for i in ids], chunk=chunk, dtype=dtype)
    return out["positions"], out["logits"]


def prompt_ids(n: int = PROMPT_LEN, seed: int = 0, vocab: int = 400) -> list[int]:
    rng = np.random.RandomState(seed)
    return [int(i) for i in rng.randint(8, vocab, size=n)]  # past the special tokens


def hf_greedy(path: Path, ids: list[int], n: int, **kwargs: Any) -> list[int]:
    model = hf_model(path)  # fresh: dynamic RoPE keeps state between calls
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=n, eos_token_id=None, **kwargs
        )
    return [int(t) for t in out[0, len(ids) :]]


def run(stream: mpool.TextStream) -> tuple[list[int], str, list[Any]]:
    ids: list[int] = []
    text = ""
    chunks = []
    for chunk in stream:
        ids.extend(chunk.token_ids)
        text += chunk.text
        chunks.append(chunk)
    return ids, text, chunks


# --- parity with transformers ------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_logits_match_transformers_within_1e4_fp32(each_float32_gemm, models: dict[str, Path], arch: str) -> None:
    check_prefill_logits(models[arch], arch)


def check_prefill_logits(path: Path, label: str) -> None:
    """The native prefill logits of 40 tokens equal transformers' within 1e-4 relative, fp32."""
    ids = prompt_ids(40, seed=1)  # past the sliding windows (8) and the llama3/longrope original lengths (32)
    with torch.no_grad():
        ref = hf_model(path)(torch.tensor([ids])).logits[0].numpy()
    _, ours = decoder_logits(str(path), ids)
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel <= 1e-4, f"{label}: max relative error {rel:.2e}"


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_is_token_identical_to_transformers_for_64_tokens(
    pool: mpool.Pool, models: dict[str, Path], arch: str
) -> None:
    check_greedy_64_tokens(pool, models[arch], arch)


def check_greedy_64_tokens(pool: mpool.Pool, path: Path, key: str) -> None:
    """64 greedy tokens from `path` registered as `key` equal transformers' generate, with the final stats."""
    ids = prompt_ids()
    pool.register(key, path)
    ours, _, chunks = run(pool.generate(key, ids, max_tokens=64, temperature=0, ignore_eos=True))
    assert ours == hf_greedy(path, ids, 64)
    final = chunks[-1]
    assert final.finish_reason == "length"
    assert final.stats.prompt_tokens == PROMPT_LEN and final.stats.completion_tokens == 64
    assert final.stats.time_to_first_token > 0 and final.stats.tokens_per_second > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_decode_equals_recomputing_the_full_sequence(models: dict[str, Path], arch: str) -> None:
    check_cache_equals_recomputing(models[arch], arch)


def check_cache_equals_recomputing(path: Path, label: str) -> None:
    """Logits through the cache, token by token and 7 at a time, equal one pass over all 30 tokens."""
    # 30 tokens: past the sliding windows, inside every original RoPE length, so a
    # recompute and the cache see the same rotations.
    ids = prompt_ids(30, seed=2)
    _, full = decoder_logits(str(path), ids)
    for chunk in (1, 7):  # token by token, and prefill chunks that start mid-sequence
        positions, cached = decoder_logits(str(path), ids, chunk)
        rel = np.abs(cached - full[positions]).max() / np.abs(full).max()
        assert rel <= 1e-5, f"{label}, {chunk} tokens per step: max relative error {rel:.2e}"


def test_longrope_cache_recomputes_once_when_the_sequence_outgrows_the_original_length(
    models: dict[str, Path],
) -> None:
    # phi3_longrope: original length 32. Token by token, the 33rd token switches every
    # position to the long factors, as transformers' Phi-3 does by re-prefilling.
    ids = prompt_ids(48, seed=3)
    _, full = decoder_logits(str(models["phi3_longrope"]), ids)
    positions, cached = decoder_logits(str(models["phi3_longrope"]), ids, 1)
    late = positions >= 32
    rel = np.abs(cached[late] - full[positions[late]]).max() / np.abs(full).max()
    assert rel <= 1e-5
    assert hf_greedy(models["phi3_longrope"], ids[:28], 20) == _greedy_native(models["phi3_longrope"], ids[:28], 20)


def test_longrope_outside_phi3_keeps_its_cached_keys_when_generation_outgrows_the_original_length(
    tmp_path: Path,
) -> None:
    # transformers re-prefills at the crossing for Phi-3 only; a llama with longrope
    # keeps the short-factor keys and rotates each new position as its own length says.
    path = build_decoder(tmp_path, "llama", rope_scaling={
        "rope_type": "longrope", "original_max_position_embeddings": 32,
        "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5],
        "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 12.0, 16.0],
    })
    for prompt in (24, 40):  # crossing while generating; a prompt already past 32
        ids = prompt_ids(prompt, seed=1)
        assert _greedy_native(path, ids, 24) == hf_greedy(path, ids, 24), prompt


@pytest.mark.parametrize("arch", ["llama_dynamic_rope", "phi3_longrope"])
def test_length_dependent_rope_prompt_chunks_past_the_trained_length_rotate_as_the_whole_prompt(
    models: dict[str, Path], arch: str
) -> None:
    # llama_dynamic_rope: 40 trained positions, factor 2. transformers rotates a
    # prompt of 50 with the base of length 50 at every position, and each decode
    # step with the base of its own length (keys cached before keep theirs). Prompt
    # chunks of 16 must rotate as the whole prompt does, not as their own ends.
    # phi3_longrope (original length 32): a prompt of 50 takes the long factors at
    # every position from its first chunk on.
    path = models[arch]
    ids = prompt_ids(50, seed=3)
    _, full = decoder_logits(str(path), ids)
    out = mpool.testing.probe("decoder.logits", path=str(path), ids=ids, chunk=16, whole_prompt=True)
    rel = np.abs(out["logits"] - full[out["positions"]]).max() / np.abs(full).max()
    assert rel <= 1e-5
    want = hf_greedy(path, ids, 20)
    # The next turn extends the first: a cached prefix would hold keys rotated
    # with another base, so a sequence that may pass the trained length reads none.
    turn = ids + want[:10] + prompt_ids(5, seed=9)
    want_turn = hf_greedy(path, turn, 5)
    for options in ({"prefill_chunk": 16}, {"prefill_chunk": 16, "prefix_cache": False}, {"prefill_chunk": 512}):
        with mpool.Pool() as pool:
            pool.register("m", path, max_replicas=1, options=options)
            params = dict(temperature=0, ignore_eos=True)
            assert run(pool.generate("m", ids, max_tokens=20, **params))[0] == want, options
            assert run(pool.generate("m", turn, max_tokens=5, **params))[0] == want_turn, options
            # Together in one batch: each prompt's chunks interleaved with the other's steps.
            streams = [pool.generate("m", ids, max_tokens=20, **params), pool.generate("m", turn, max_tokens=5, **params)]
            assert [run(s)[0] for s in streams] == [want, want_turn], options
            assert pool.stats()["models"]["m"]["usage"].get("prefix_cache_hit_tokens", 0) == 0


@pytest.mark.parametrize("arch", ["llama_dynamic_rope", "phi3_longrope"])
def test_length_dependent_rope_shares_prefix_blocks_among_sequences_within_the_trained_length(
    models: dict[str, Path], arch: str
) -> None:
    # Trained lengths 40 (dynamic) and 32 (longrope's original): a sequence of up
    # to that many positions (prompt and max_tokens) rotates as in any shorter one,
    # so those share a system prompt's blocks; one that may grow past it reads none.
    path = models[arch]
    system = prompt_ids(16, seed=5)  # one block of 16
    short = [system + prompt_ids(4 + i, seed=20 + i) for i in range(3)]  # 20-22 + 8 new <= 32
    long_prompt = system + prompt_ids(6, seed=30)  # 22 + 20 new: past the trained length
    params = dict(temperature=0, ignore_eos=True)
    with mpool.Pool() as pool:
        pool.register("m", path, max_replicas=1, options={"prefill_chunk": 16})
        got = [run(pool.generate("m", ids, max_tokens=8, **params))[0] for ids in short]
        hits = pool.stats()["models"]["m"]["usage"]["prefix_cache_hit_tokens"]
        got_long = run(pool.generate("m", long_prompt, max_tokens=20, **params))[0]
        assert pool.stats()["models"]["m"]["usage"]["prefix_cache_hit_tokens"] == hits
    assert hits == 2 * 16  # the second and third read the first's block
    assert got == [hf_greedy(path, ids, 8) for ids in short]
    assert got_long == hf_greedy(path, long_prompt, 20)


@pytest.mark.parametrize("stop", [[-1], [5, 400], [10**12]], ids=repr)
def test_a_stop_token_id_outside_the_vocabulary_is_invalid_input_naming_it(models: dict[str, Path], stop: list[int]) -> None:
    # Such a token could never be sampled: a stop that silently never fires.
    with mpool.Pool() as pool:
        pool.register("m", models["llama"], max_replicas=1)
        bad = len(stop) - 1
        with pytest.raises(mpool.InvalidInput, match=rf"^stop_token_ids\[{bad}\] is {stop[bad]}, outside the vocabulary \[0, 400\)"):
            run(pool.generate("m", [5, 6], max_tokens=2, stop_token_ids=stop))
        assert len(run(pool.generate("m", [5, 6], max_tokens=2, temperature=0, stop_token_ids=[399]))[0]) >= 1


def _greedy_native(path: Path, ids: list[int], n: int, **params: Any) -> list[int]:
    with mpool.Pool() as p:
        p.register("m", path, max_replicas=1)
        return run(p.generate("m", ids, max_tokens=n, temperature=0, ignore_eos=True, **params))[0]


def test_legacy_rope_scaling_config_loads_like_rope_parameters(tmp_path: Path) -> None:
    modern = build_decoder(tmp_path, "llama3_rope", name="modern")
    legacy = build_decoder(tmp_path, "llama3_rope", name="legacy", legacy_config=True)
    ids = prompt_ids(40)
    _, a = decoder_logits(str(modern), ids)
    _, b = decoder_logits(str(legacy), ids)
    np.testing.assert_array_equal(a, b)


def _edit_config(path: Path, edit: Any) -> Path:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral_sliding", "qwen3_moe"])
def test_a_partial_rotary_factor_is_ignored_where_transformers_rotates_whole_heads(tmp_path: Path, arch: str) -> None:
    # Only Phi-3's modeling rotates part of each head; the others' default rope ignores the key.
    check_prefill_logits(build_decoder(tmp_path, arch, partial_rotary_factor=0.5), arch)


def test_a_partial_rotary_factor_with_a_scaled_rope_where_heads_rotate_whole_is_invalid_input(tmp_path: Path) -> None:
    path = build_decoder(tmp_path, "llama")

    def yarn_on_half_heads(c: dict) -> None:
        c["rope_parameters"] = {**c["rope_parameters"], "rope_type": "yarn", "factor": 2.0, "partial_rotary_factor": 0.5}

    _edit_config(path, yarn_on_half_heads)
    with mpool.Pool() as pool, pytest.raises(mpool.InvalidInput, match="partial_rotary_factor.*rotates whole heads"):
        pool.register("m", path)


def test_phi3_reads_an_old_yarn_rope_type_as_longrope_as_phi3config_does(tmp_path: Path) -> None:
    def yarn_named(c: dict) -> None:
        c["rope_scaling"].pop("rope_type", None)
        c["rope_scaling"]["type"] = "yarn"

    path = _edit_config(build_decoder(tmp_path, "phi3_longrope", legacy_config=True), yarn_named)
    check_prefill_logits(path, "phi3 yarn-named longrope")


def test_a_top_level_original_max_position_embeddings_wins_over_the_rope_node_s(tmp_path: Path) -> None:
    # 40 prompt tokens: past the top-level 32 (long factors), within the node's 64 (short ones).
    def conflicting(c: dict) -> None:
        c["rope_scaling"]["original_max_position_embeddings"] = 64

    path = _edit_config(build_decoder(tmp_path, "phi3_longrope", legacy_config=True), conflicting)
    assert json.loads((path / "config.json").read_text())["original_max_position_embeddings"] == 32
    check_prefill_logits(path, "phi3 with two original lengths")


def test_bfloat16_prefill_logits_track_transformers_bfloat16(models: dict[str, Path]) -> None:
    ids = prompt_ids(24)
    with torch.no_grad():
        ref = hf_model(models["qwen2"], torch.bfloat16)(torch.tensor([ids])).logits[0].float().numpy()
        ref32 = hf_model(models["qwen2"])(torch.tensor([ids])).logits[0].numpy()
    _, ours = decoder_logits(str(models["qwen2"]), ids, 0, "bfloat16")
    scale = np.abs(ref32).max()
    # Both round to bf16 at the same places; they stay far closer to each other than to fp32.
    assert np.abs(ours - ref).max() / scale <= 0.03
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_bfloat16_decode_steps_track_transformers_bfloat16(models: dict[str, Path]) -> None:
    # Token by token through the cache: every projection runs the single-row bf16 kernel.
    ids = prompt_ids(24, seed=12)
    with torch.no_grad():
        ref = hf_model(models["llama_bias"], torch.bfloat16)(torch.tensor([ids])).logits[0].float().numpy()
    positions, ours = decoder_logits(str(models["llama_bias"]), ids, 1, "bfloat16")
    scale = np.abs(ref).max()
    assert np.abs(ours - ref[positions]).max() / scale <= 0.03
    assert (ours.argmax(-1) == ref[positions].argmax(-1)).mean() >= 0.9


def test_repetition_penalty_greedy_matches_transformers(pool: mpool.Pool, models: dict[str, Path]) -> None:
    ids = prompt_ids(seed=4)
    pool.register("m", models["llama"])
    ours, _, _ = run(
        pool.generate("m", ids, max_tokens=32, temperature=0, ignore_eos=True, repetition_penalty=1.5)
    )
    assert ours == hf_greedy(models["llama"], ids, 32, repetition_penalty=1.5)
    plain, _, _ = run(pool.generate("m", ids, max_tokens=32, temperature=0, ignore_eos=True))
    assert ours != plain


def test_text_prompt_is_tokenized_with_bos_like_transformers(pool: mpool.Pool, models: dict[str, Path]) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(str(models["qwen3"]))
    text = "The quick brown fox"
    ids = tok(text)["input_ids"]
    assert ids[0] == special_ids()["<s>"]
    pool.register("m", models["qwen3"])
    ours, out_text, _ = run(pool.generate("m", text, max_tokens=16, temperature=0, ignore_eos=True))
    expected = hf_greedy(models["qwen3"], ids, 16)
    assert ours == expected
    assert out_text == tok.decode(expected, skip_special_tokens=True)


# --- embeddings --------------------------------------------------------------------


def test_decoder_embedder_matches_sentence_transformers_last_token_pooling(
    pool: mpool.Pool, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    path = build_embedder(tmp_path)
    info = pool.register("emb", path)
    assert info["capabilities"] == ["text_embedding"]  # a base model without lm_head cannot generate
    texts = ["a short one", "The cache keeps keys and values.", "東京は日本の首都です。", "x"]
    ours = pool.embed("emb", texts)
    ref = SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = (ours * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999


def test_causal_lm_also_embeds_by_its_last_token(pool: mpool.Pool, models: dict[str, Path]) -> None:
    info = pool.register("m", models["qwen2"])
    assert sorted(info["capabilities"]) == ["text_embedding", "text_to_text"]
    tok = transformers.AutoTokenizer.from_pretrained(str(models["qwen2"]))
    texts = ["first text here", "a second, longer text for padding"]
    ours = pool.embed("m", texts)
    model = hf_model(models["qwen2"])
    with torch.no_grad():
        ref = np.stack(
            [model.model(torch.tensor([tok(t)["input_ids"]])).last_hidden_state[0, -1].numpy() for t in texts]
        )
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


# --- sampling ------------------------------------------------------------------------


def test_same_seed_gives_same_tokens_and_another_seed_differs(pool: mpool.Pool, models: dict[str, Path]) -> None:
    pool.register("m", models["llama"])
    ids = prompt_ids()

    def sample(seed: int) -> list[int]:
        params = dict(max_tokens=32, temperature=1.5, top_p=0.95, top_k=50, min_p=0.01, seed=seed, ignore_eos=True)
        return run(pool.generate("m", ids, **params))[0]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_top_k_1_equals_greedy(pool: mpool.Pool, models: dict[str, Path]) -> None:
    pool.register("m", models["mistral_sliding"])
    ids = prompt_ids(seed=5)
    greedy = run(pool.generate("m", ids, max_tokens=40, temperature=0, ignore_eos=True))[0]
    top1 = run(pool.generate("m", ids, max_tokens=40, temperature=1.3, top_k=1, ignore_eos=True))[0]
    tiny_p = run(pool.generate("m", ids, max_tokens=40, temperature=1.0, top_p=1e-6, ignore_eos=True))[0]
    assert top1 == greedy and tiny_p == greedy


def test_frequency_penalty_stops_tokens_repeating(pool: mpool.Pool, models: dict[str, Path]) -> None:
    pool.register("m", models["llama"])
    ids = prompt_ids(seed=6)
    out = run(pool.generate("m", ids, max_tokens=40, temperature=0, ignore_eos=True, frequency_penalty=1000.0))[0]
    assert len(set(out)) == len(out) == 40


def test_stop_string_split_across_tokens_stops_generation_and_is_not_emitted(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    pool.register("m", models["qwen2"])
    ids = prompt_ids(seed=7)
    _, full, chunks = run(pool.generate("m", ids, max_tokens=64, temperature=0, ignore_eos=True))
    pieces = [c.text for c in chunks if c.text]
    # A stop string made of the end of one token's text and the start of the next.
    for i in range(len(pieces) // 2, len(pieces) - 1):
        a, b = pieces[i], pieces[i + 1]
        if len(a) >= 2 and len(b) >= 1:
            stop = a[-2:] + b[:1]
            break
    else:
        pytest.fail(f"no two adjacent multi-character pieces in {pieces}")
    _, text, chunks = run(pool.generate("m", ids, max_tokens=64, temperature=0, ignore_eos=True, stop=[stop]))
    assert text == full[: full.index(stop)]
    assert stop not in text
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize("arch", ["phi3_longrope", "llama_dynamic_rope"])
def test_a_prompts_tokens_and_logprobs_do_not_depend_on_max_tokens_in_bfloat16(models: dict[str, Path], arch: str) -> None:
    # These RoPEs make positions past the original length depend on the sequence's
    # length, so a long max_tokens keeps the sequence from sharing cached blocks;
    # the prompt must still be computed the same way.
    with mpool.Pool() as pool:
        pool.register("m", models[arch], max_replicas=1, dtype="bfloat16", options={"prefill_chunk": 8})
        for seed in range(6):
            ids = prompt_ids(6 + seed, seed=500 + seed)
            short = run(pool.generate("m", ids, max_tokens=4, temperature=0, ignore_eos=True, logprobs=1))
            long_ = run(pool.generate("m", ids, max_tokens=40, temperature=0, ignore_eos=True, logprobs=1))
            assert short[0] == long_[0][:4]
            lps = lambda chunks: [lp.logprob for c in chunks for lp in c.logprobs]  # noqa: E731
            assert lps(short[2]) == lps(long_[2])[:4]


@pytest.mark.parametrize("max_tokens", [1, 3, 11, 24])
def test_a_stop_string_that_never_completes_leaves_the_text_at_max_tokens_unchanged(
    pool: mpool.Pool, models: dict[str, Path], max_tokens: int
) -> None:
    pool.register("m", models["qwen2"])
    ids = prompt_ids(seed=7)
    out, full, _ = run(pool.generate("m", ids, max_tokens=max_tokens, temperature=0, ignore_eos=True))
    assert full, "the greedy text is empty"
    # The text ends with the stop string's first character: held back until the end.
    stop = full[-1] + "\x01\x02"
    got, text, chunks = run(pool.generate("m", ids, max_tokens=max_tokens, temperature=0, ignore_eos=True, stop=[stop]))
    assert (got, text) == (out, full)
    assert chunks[-1].finish_reason == "length" and chunks[-1].stats.completion_tokens == max_tokens


def test_a_streams_text_is_the_tokenizers_decode_of_its_ids_also_when_it_ends_inside_a_character(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    # Near-uniform draws over a byte-level vocabulary: about a third of the ids are
    # single bytes of 0x80 and above, so many streams end inside a character (or on
    # a byte no character takes). Those bytes are U+FFFD in the tokenizer's decode;
    # the stream used to drop them.
    pool.register("m", models["qwen2"])
    oracle = shared_tokenizer()
    ends_inside = stopped_at_the_end = 0
    for seed in range(12):
        for max_tokens in (1, 2, 5, 24):
            ids, text, _ = run(
                pool.generate("m", prompt_ids(seed=seed), max_tokens=max_tokens, temperature=20.0, seed=seed, ignore_eos=True)
            )
            expected = oracle.decode(ids, skip_special_tokens=True)
            assert text == expected, (seed, max_tokens, ids)
            ends_inside += expected.endswith("\ufffd")
            if expected.endswith("\ufffd") and expected.count("\ufffd") == 1:
                # A stop string the unfinished character completes: cut there, as a stop.
                got, cut, chunks = run(pool.generate(
                    "m", prompt_ids(seed=seed), max_tokens=max_tokens, temperature=20.0, seed=seed, ignore_eos=True,
                    stop=["\ufffd"]))
                assert (got, cut, chunks[-1].finish_reason) == (ids, expected[:-1], "stop")
                stopped_at_the_end += 1
    assert ends_inside >= 3  # the case this test is about did come up
    assert stopped_at_the_end >= 1


def test_stop_token_ids_and_the_generation_config_eos_end_generation(
    pool: mpool.Pool, models: dict[str, Path], tmp_path: Path
) -> None:
    pool.register("m", models["phi3"])
    ids = prompt_ids(seed=8)
    greedy = run(pool.generate("m", ids, max_tokens=30, temperature=0, ignore_eos=True))[0]
    stop_at = next(i for i in range(3, 30) if greedy[i] not in greedy[:i])
    out, _, chunks = run(pool.generate("m", ids, max_tokens=30, temperature=0, stop_token_ids=[greedy[stop_at]]))
    assert out == greedy[:stop_at] and chunks[-1].finish_reason == "stop"
    assert chunks[-1].stats.completion_tokens == stop_at + 1  # the stop token was generated, not emitted

    # The model's eos comes from generation_config.json.
    import json
    import shutil

    copy = tmp_path / "eos"
    shutil.copytree(models["phi3"], copy)
    cfg = json.loads((copy / "generation_config.json").read_text())
    cfg["eos_token_id"] = [greedy[stop_at]]
    (copy / "generation_config.json").write_text(json.dumps(cfg))
    pool.register("eos", copy)
    assert run(pool.generate("eos", ids, max_tokens=30, temperature=0))[0] == greedy[:stop_at]
    assert run(pool.generate("eos", ids, max_tokens=30, temperature=0, ignore_eos=True))[0] == greedy


def test_logprobs_are_the_models_log_softmax_with_top_alternatives(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    pool.register("m", models["qwen3"])
    ids = prompt_ids(seed=9)
    out, _, chunks = run(pool.generate("m", ids, max_tokens=8, temperature=0, ignore_eos=True, logprobs=3))
    lps = [lp for c in chunks for lp in c.logprobs]
    assert [lp.token_id for lp in lps] == out
    with torch.no_grad():
        logits = hf_model(models["qwen3"])(torch.tensor([ids + out])).logits[0, len(ids) - 1 : -1]
    ref = torch.log_softmax(logits, -1).numpy()
    for step, lp in enumerate(lps):
        assert abs(lp.logprob - ref[step, lp.token_id]) <= 1e-4
        assert len(lp.top) == 3 and lp.top[0][0] == lp.token_id  # greedy picks the most likely
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]


# --- streaming, cancellation, concurrency --------------------------------------------


def test_closing_a_stream_mid_generation_frees_the_replica(pool: mpool.Pool, models: dict[str, Path]) -> None:
    pool.register("m", models["llama"], max_replicas=1)
    ids = prompt_ids()
    stream = pool.generate("m", ids, max_tokens=200, temperature=0, ignore_eos=True)
    first = [next(stream) for _ in range(3)]
    assert all(c.finish_reason is None for c in first)
    stream.close()
    assert stream.finish_reason == "cancelled"
    # The only replica is free again: a new request completes.
    out = run(pool.generate("m", ids, max_tokens=5, temperature=0, ignore_eos=True, timeout=10))[0]
    assert len(out) == 5


def test_timeout_ends_a_stream_whose_reader_stalls(pool: mpool.Pool, models: dict[str, Path]) -> None:
    import time

    pool.register("m", models["llama"], max_replicas=1)
    stream = pool.generate("m", prompt_ids(), max_tokens=200, temperature=0, ignore_eos=True, timeout=0.3)
    next(stream)
    time.sleep(0.6)  # the bounded stream fills, the deadline passes
    with pytest.raises(mpool.Timeout):
        for _ in stream:
            pass
    assert len(run(pool.generate("m", prompt_ids(), max_tokens=3, temperature=0))[0]) <= 3


def test_eight_concurrent_streams_on_two_replicas_each_equal_their_solo_run(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    pool.register("m", models["qwen2_sliding"], max_replicas=2)
    prompts = [prompt_ids(6 + i, seed=20 + i) for i in range(8)]
    solo = [run(pool.generate("m", p, max_tokens=40, temperature=0, ignore_eos=True))[0] for p in prompts]
    results: list[Any] = [None] * 8

    def worker(i: int) -> None:
        results[i] = run(pool.generate("m", prompts[i], max_tokens=40, temperature=0, ignore_eos=True))[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == solo
    assert pool.stats()["models"]["m"]["replicas"] <= 2


# --- chat ------------------------------------------------------------------------------


def test_chat_renders_the_template_and_generates_like_transformers(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Count: one two three"},
    ]
    pool.register("m", models["phi3"])
    tok = transformers.AutoTokenizer.from_pretrained(str(models["phi3"]))
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert pool.render_chat("m", messages) == tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    ours, _, chunks = run(pool.chat("m", messages, max_tokens=24, temperature=0, ignore_eos=True))
    assert chunks[-1].stats.prompt_tokens == len(ids)  # one <s>: the template writes it, tokenizing adds none
    assert ours == hf_greedy(models["phi3"], list(ids), 24)


def test_async_chat_streams_the_same_tokens(pool: mpool.Pool, models: dict[str, Path]) -> None:
    import asyncio

    pool.register("m", models["llama"])
    messages = [{"role": "user", "content": "hello"}]
    sync = run(pool.chat("m", messages, max_tokens=10, temperature=0, ignore_eos=True))[0]

    async def main() -> list[int]:
        out: list[int] = []
        async for chunk in pool.achat("m", messages, max_tokens=10, temperature=0, ignore_eos=True):
            out.extend(chunk.token_ids)
        return out

    assert asyncio.run(main()) == sync


# --- bad input ---------------------------------------------------------------------------


def test_bad_generation_inputs_get_typed_errors_and_the_pool_stays_healthy(
    pool: mpool.Pool, models: dict[str, Path], tmp_path: Path
) -> None:
    pool.register("m", models["llama"], context_length=32)
    bad: list[tuple[Any, dict[str, Any], str]] = [
        ("", {}, "empty"),
        ([], {}, "non-empty"),
        (prompt_ids(40), {}, "context holds 32"),
        ([5, 400], {}, "outside the vocabulary"),
        ([-1], {}, "outside the vocabulary"),
        ("hi", {"max_tokens": 0}, "max_tokens"),
        ("hi", {"temperature": -0.5}, "temperature"),
        ("hi", {"top_p": 0.0}, "top_p"),
        ("hi", {"top_p": 1.5}, "top_p"),
        ("hi", {"min_p": 2.0}, "min_p"),
        ("hi", {"top_k": -1}, "top_k"),
        ("hi", {"repetition_penalty": 0.0}, "repetition_penalty"),
        ("hi", {"temprature": 0.5}, "unknown generation parameter 'temprature'"),
        ("hi", {"stop": [""]}, "stop"),
    ]
    for prompt, params, message in bad:
        with pytest.raises(mpool.InvalidInput, match=message):
            run(pool.generate("m", prompt, **params))
    # A prompt that fits, with max_tokens past the context: it ends with "length" at the context.
    out, _, chunks = run(pool.generate("m", prompt_ids(30), max_tokens=10, temperature=0, ignore_eos=True))
    assert len(out) == 2 and chunks[-1].finish_reason == "length"

    build_decoder(tmp_path, "llama", name="no_template")
    cfg = tmp_path / "no_template" / "tokenizer_config.json"
    import json

    data = json.loads(cfg.read_text())
    data.pop("chat_template", None)
    cfg.write_text(json.dumps(data))
    pool.register("plain", tmp_path / "no_template")
    with pytest.raises(mpool.InvalidInput, match="no chat template"):
        pool.chat("plain", [{"role": "user", "content": "hi"}])
    with pytest.raises(mpool.ModelNotFound, match="'nope'"):
        pool.chat("nope", [{"role": "user", "content": "hi"}])
    with pytest.raises(mpool.InvalidInput, match="Unknown role"):
        pool.chat("m", [{"role": "wizard", "content": "hi"}])
    with pytest.raises(mpool.InvalidInput):
        pool.register("bad", models["llama"], context_length=10_000)
    assert len(run(pool.generate("m", "hello", max_tokens=4, temperature=0, ignore_eos=True))[0]) == 4
    assert pool.stats()["models"]["m"]["counts"]["errors"] >= 1


def test_cli_generate_streams_the_greedy_text(models: dict[str, Path]) -> None:
    import subprocess
    import sys

    with mpool.Pool() as p:
        p.register("m", models["qwen2"])
        expected = run(p.generate("m", "Hello there", max_tokens=12, temperature=0))[1]
    out = subprocess.run(
        [sys.executable, "-m", "mpool", "generate", "--model", str(models["qwen2"]), "--max-tokens", "12", "Hello there"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout == expected + "\n"


def test_streamed_text_equals_decoding_all_ids_for_multibyte_prompts(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    # Byte-level BPE: random weights emit byte tokens that split UTF-8 characters;
    # chunks must hold whole characters and add up to the full decode (a character
    # left unfinished at the end is its U+FFFD there too).
    tok = transformers.AutoTokenizer.from_pretrained(str(models["llama"]))
    pool.register("m", models["llama"])
    # Unicode 15/16 emoji, CJK Extension H and Kawi too (issue 20's characters).
    recent = "I feel \U0001FAE8 today \U0001FA77 \U0001FABC \U0001F6DC \U0001FABE \U0001FAC6 \U00031350 \U00011F04"
    for prompt in ["東京は日本の首都です。", "Emoji: 😀 👍🏽 🚀", "Ελληνικά и русский", recent]:
        ids, text, chunks = run(pool.generate("m", prompt, max_tokens=64, temperature=0.8, seed=3, ignore_eos=True))
        assert text == tok.decode(ids, skip_special_tokens=True)
        for chunk in chunks:
            chunk.text.encode("utf-8")  # a str built from valid UTF-8 only


def test_memory_estimate_is_weights_plus_the_kv_cache_of_the_context(pool: mpool.Pool, models: dict[str, Path]) -> None:
    small = pool.register("a", models["qwen3"], context_length=64)
    large = pool.register("b", models["qwen3"], context_length=256)
    cfg = transformers.AutoConfig.from_pretrained(str(models["qwen3"]))
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4  # fp32 keys and values
    params = sum(t.numel() for t in hf_model(models["qwen3"]).state_dict().values())
    assert small["weight_mb"] == pytest.approx(params * 4 / 2**20, rel=1e-6)
    grown = large["memory_mb"] - small["memory_mb"]
    kv = 192 * kv_per_token / 2**20
    assert kv <= grown <= kv + 192 * 512 * cfg.num_attention_heads * 4 / 2**20  # + the prefill chunk's scores


def test_unset_sampling_parameters_take_the_generation_config_defaults(
    pool: mpool.Pool, models: dict[str, Path], tmp_path: Path
) -> None:
    import json
    import shutil

    ids = prompt_ids(seed=11)
    pool.register("greedy_cfg", models["llama"])  # generation_config.json: do_sample false
    greedy = run(pool.generate("greedy_cfg", ids, max_tokens=24, ignore_eos=True))[0]
    assert greedy == hf_greedy(models["llama"], ids, 24)
    sampled = run(pool.generate("greedy_cfg", ids, max_tokens=24, ignore_eos=True, temperature=1.5, seed=1))[0]
    assert sampled != greedy  # an explicit temperature wins over the model's default

    copy = tmp_path / "top1"
    shutil.copytree(models["llama"], copy)
    cfg = json.loads((copy / "generation_config.json").read_text())
    cfg.update(do_sample=True, temperature=1.5, top_k=1)
    (copy / "generation_config.json").write_text(json.dumps(cfg))
    pool.register("top1_cfg", copy)
    assert run(pool.generate("top1_cfg", ids, max_tokens=24, ignore_eos=True, seed=5))[0] == greedy
    assert run(pool.generate("top1_cfg", ids, max_tokens=24, ignore_eos=True, seed=5, top_k=0))[0] != greedy


def test_bad_decoder_directories_get_errors_naming_the_key_or_tensor(pool: mpool.Pool, tmp_path: Path) -> None:
    import json

    def variant(name: str, **changes: Any) -> Path:
        path = build_decoder(tmp_path, "llama", name=name)
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(changes)
        (path / "config.json").write_text(json.dumps(cfg))
        return path

    with pytest.raises(mpool.InvalidInput, match="rope type 'proportional' is not supported"):
        pool.register("prop", variant("prop", rope_parameters={"rope_type": "proportional", "rope_theta": 1e4}))
    with pytest.raises(mpool.InvalidInput, match="hidden_act 'gelu'"):
        pool.register("gelu", variant("gelu", hidden_act="gelu"))
    with pytest.raises(mpool.InvalidInput, match="not a multiple of num_key_value_heads"):
        pool.register("gqa", variant("gqa", num_key_value_heads=3))
    # Shapes are checked when a replica loads: the request fails naming the tensor.
    pool.register("wide", variant("wide", intermediate_size=96))
    with pytest.raises(mpool.SpawnFailed, match=r"model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight' has shape"):
        run(pool.generate("wide", "hello", max_tokens=2))
    pool.register("ok", build_decoder(tmp_path, "llama", name="ok"))  # the pool stays healthy
    assert len(run(pool.generate("ok", "hello", max_tokens=3, ignore_eos=True))[0]) == 3
