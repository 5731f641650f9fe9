"""The family kit: text generation over the CausalLM interface (embeddings spliced
into a prompt give the same tokens as the ids they embed), the typed family
options bag, and a model's own defaults for the settings of its requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mpool
import mpool.testing
from decoder_models import build_decoder


@pytest.fixture(scope="module")
def decoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kit")
    return {arch: build_decoder(root, arch) for arch in ("llama", "qwen3", "phi3_longrope")}


def greedy_ids(path: Path, ids: list[int], splice: tuple[int, int], max_tokens: int, chunk: int = 512) -> list[int]:
    out = mpool.testing.probe(
        "decoder.generate_spliced", path=str(path), ids=ids, **{"from": splice[0], "to": splice[1]},
        max_tokens=max_tokens, prefill_chunk=chunk,
    )
    return out["ids"].tolist()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("splice", [(0, 4), (3, 9), (10, 14), (0, 14)])
def test_embeddings_spliced_into_a_prompt_generate_what_their_ids_generate(
    decoders: dict[str, Path], arch: str, splice: tuple[int, int]
) -> None:
    ids = [int(i) for i in np.random.RandomState(7).randint(8, 400, size=14)]
    plain = greedy_ids(decoders[arch], ids, (0, 0), 12)
    assert len(plain) == 12
    # A small prefill chunk makes the splice straddle chunk boundaries too.
    assert greedy_ids(decoders[arch], ids, splice, 12, chunk=5) == plain
    assert greedy_ids(decoders[arch], ids, splice, 12) == plain


def test_longrope_replays_spliced_embeddings_when_the_prompt_crosses_to_the_long_factors(
    decoders: dict[str, Path],
) -> None:
    # phi3_longrope switches factors past 32 positions: a 40-token prompt prefilled
    # 16 at a time crosses mid-prefill, and the model recomputes from the inputs it kept.
    ids = [int(i) for i in np.random.RandomState(8).randint(8, 400, size=40)]
    plain = greedy_ids(decoders["phi3_longrope"], ids, (0, 0), 6)
    assert greedy_ids(decoders["phi3_longrope"], ids, (20, 36), 6, chunk=16) == plain


def test_decoder_prefill_chunk_option_keeps_the_greedy_output(decoders: dict[str, Path]) -> None:
    with mpool.Pool() as pool:
        pool.register("default", decoders["llama"])
        pool.register("small", decoders["llama"], options={"prefill_chunk": 3})
        prompt = "the quick brown fox jumps over the lazy dog"
        a = pool.generate("default", prompt, max_tokens=8, temperature=0, ignore_eos=True).text()
        b = pool.generate("small", prompt, max_tokens=8, temperature=0, ignore_eos=True).text()
        assert a == b


def test_family_options_are_checked_against_the_family_declared_ones(decoders: dict[str, Path]) -> None:
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match="option 'chunk' is not one the llama family takes \\(prefill_chunk, max_batch, kv_cache_tokens, kv_block_size, kv_cache_dtype, prefix_cache, tokenizer_pattern\\)"):
            pool.register("m", decoders["llama"], options={"chunk": 3})
        with pytest.raises(mpool.InvalidInput, match="option 'prefill_chunk' must be an int for the llama family"):
            pool.register("m", decoders["llama"], options={"prefill_chunk": "3"})
        with pytest.raises(mpool.InvalidInput, match="option 'prefill_chunk' must be an int"):
            pool.register("m", decoders["llama"], options={"prefill_chunk": True})
        with pytest.raises(mpool.InvalidInput, match="prefill_chunk must be in \\[1, 1048576\\], got 0"):
            pool.register("m", decoders["llama"], options={"prefill_chunk": 0})
        with pytest.raises(mpool.InvalidInput, match="option 'x' must be a bool, int, float or str"):
            pool.register("m", decoders["llama"], options={"x": [1]})
        with pytest.raises(mpool.InvalidInput, match="options apply to native models"):
            pool.register("p", mpool.PyModel("text_embedding", lambda d: None, memory_mb=1), options={"a": 1})
        pool.register("ok", decoders["llama"])  # the pool stays healthy
        assert pool.generate("ok", "hello", max_tokens=2, ignore_eos=True).text()


def test_bert_tokens_per_forward_option_splits_batches_without_changing_embeddings(tmp_path: Path) -> None:
    from test_native_bert import build_tiny

    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens")
    texts = [f"sentence number {i} with some words" * (1 + i % 3) for i in range(12)]
    with mpool.Pool() as pool:
        pool.register("big", d)
        pool.register("small", d, options={"tokens_per_forward": 40})
        np.testing.assert_allclose(pool.embed("small", texts), pool.embed("big", texts), rtol=1e-5, atol=1e-6)


class Recorder:
    """Records the settings each generate_image call receives."""

    seen: list[dict[str, Any]] = []

    def generate_image(self, prompt: str, config: dict[str, Any], progress: Any) -> np.ndarray:
        Recorder.seen.append(dict(config))
        return np.zeros((config["height"], config["width"], 3), np.uint8)


def test_an_image_model_supplies_its_own_defaults_for_unset_settings() -> None:
    Recorder.seen.clear()
    defaults = {"steps": 4, "width": 16, "height": 8, "guidance_scale": 0.0, "strength": 0.5}
    with mpool.Pool() as pool:
        pool.register("turbo", mpool.PyModel("text_to_image", lambda d: Recorder(), memory_mb=1, defaults=defaults))
        pool.register("plain", mpool.PyModel("text_to_image", lambda d: Recorder(), memory_mb=1))
        pool.generate_image("turbo", "fox").result()
        pool.generate_image("turbo", "fox", steps=2, width=4).result()
        pool.generate_image("plain", "fox").result()
    first, overridden, plain = Recorder.seen
    assert (first["steps"], first["width"], first["height"], first["guidance_scale"], first["strength"]) == (
        4, 16, 8, 0.0, 0.5
    )
    assert (overridden["steps"], overridden["width"], overridden["height"]) == (2, 4, 8)
    assert (plain["steps"], plain["width"], plain["height"], plain["guidance_scale"]) == (20, 512, 512, 7.0)


def test_bad_model_defaults_get_typed_errors_naming_the_setting() -> None:
    def make(defaults: Any, capability: str = "text_to_image") -> Any:
        return mpool.PyModel(capability, lambda d: Recorder(), memory_mb=1, defaults=defaults)

    with pytest.raises(mpool.InvalidInput, match="unknown settings \\['stepz'\\]"):
        make({"stepz": 4})
    with pytest.raises(mpool.InvalidInput, match="defaults\\['steps'\\]"):
        make({"steps": 0})
    with pytest.raises(mpool.InvalidInput, match="defaults\\['strength'\\]"):
        make({"strength": 2.0})
    with pytest.raises(mpool.InvalidInput, match="defaults must be a mapping"):
        make([("steps", 4)])
    with pytest.raises(mpool.InvalidInput, match="defaults apply to text_to_image models"):
        make({"steps": 4}, "text_embedding")
