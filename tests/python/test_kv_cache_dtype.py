"""Option kv_cache_dtype: the KV cache of a float32 or int8 decoder stored in bfloat16.

The oracle is transformers' Llama with its keys (after RoPE) and values rounded
to bfloat16 where they enter attention: the rounding the cache applies. Here
too: half the cache's memory, and clear errors; test_continuous_batching.py
checks that a sequence gets the same tokens alone and in a batch with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
import transformers.models.llama.modeling_llama as modeling_llama

import mpool
import mpool.testing
from decoder_models import build_decoder

VOCAB = 400


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_decoder(tmp_path_factory.mktemp("kv_dtype"), "llama")


def ids_of(n: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.RandomState(seed).randint(8, VOCAB, size=n)]


def native_logits(path: Path, ids: list[int], chunk: int, kv: str, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    out = mpool.testing.probe("decoder.logits", path=str(path), ids=ids, chunk=chunk, dtype=dtype, kv_cache_dtype=kv)
    return out["positions"], out["logits"]


def transformers_logits(path: Path, ids: list[int], round_keys_and_values: bool) -> np.ndarray:
    """All positions' logits of transformers' Llama, its attention's keys and
    values rounded to bfloat16 (and back) when asked."""
    return transformers_run(path, round_keys_and_values, lambda model: model(torch.tensor([ids])).logits[0].numpy())


def transformers_greedy(path: Path, ids: list[int], n: int) -> list[int]:
    """n greedy tokens of transformers' Llama with keys and values rounded to bfloat16."""
    def generate(model: Any) -> list[int]:
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, eos_token_id=None)
        return [int(t) for t in out[0, len(ids) :]]

    return transformers_run(path, True, generate)


def transformers_run(path: Path, round_keys_and_values: bool, run: Any) -> Any:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    rotate = modeling_llama.apply_rotary_pos_emb
    hooks = []

    def rotate_then_round(q: torch.Tensor, k: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = rotate(q, k, *args, **kwargs)
        return q, k.to(torch.bfloat16).to(torch.float32)

    if round_keys_and_values:
        modeling_llama.apply_rotary_pos_emb = rotate_then_round
        for layer in model.model.layers:
            hooks.append(
                layer.self_attn.v_proj.register_forward_hook(lambda m, i, o: o.to(torch.bfloat16).to(torch.float32))
            )
    try:
        with torch.no_grad():
            return run(model)
    finally:
        modeling_llama.apply_rotary_pos_emb = rotate
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("chunk", [1, 7])
def test_bfloat16_kv_cache_logits_match_transformers_with_keys_and_values_rounded_to_bfloat16(
    llama: Path, chunk: int
) -> None:
    ids = ids_of(40, seed=3)
    rounded = transformers_logits(llama, ids, round_keys_and_values=True)
    plain = transformers_logits(llama, ids, round_keys_and_values=False)
    positions, ours = native_logits(llama, ids, chunk, "bfloat16")
    scale = np.abs(rounded).max()
    assert np.abs(ours - rounded[positions]).max() / scale <= 1e-5
    # The rounding is real: the plain model's logits are far from these.
    assert np.abs(ours - plain[positions]).max() / scale > 1e-3
    # And "float32" (as "auto" for this model) keeps the plain model's.
    positions, full = native_logits(llama, ids, chunk, "float32")
    assert np.abs(full - plain[positions]).max() / scale <= 1e-5


def collect(stream: mpool.TextStream) -> list[int]:
    return [i for c in stream for i in c.token_ids]


def test_bfloat16_kv_cache_decodes_in_a_batch_the_greedy_tokens_of_transformers_with_rounded_keys_and_values(
    llama: Path,
) -> None:
    # Through the pool: the paged cache's blocks in bfloat16, read by the batched
    # decode kernel against float32 queries, three sequences at once.
    prompts = [ids_of(n, seed=20 + n) for n in (6, 19, 33)]
    options = {"kv_cache_dtype": "bfloat16", "prefill_chunk": 16, "kv_cache_tokens": 4096}
    with mpool.Pool() as pool:
        pool.register("m", llama, max_replicas=1, options=options)
        streams = [pool.generate("m", ids, max_tokens=32, temperature=0, ignore_eos=True) for ids in prompts]
        ours = [collect(s) for s in streams]
    assert ours == [transformers_greedy(llama, ids, 32) for ids in prompts]


def kv_positions_mb(path: Path, dtype: str, kv: str) -> float:
    with mpool.Pool() as pool:
        info = pool.register("m", path, dtype=dtype, options={"kv_cache_dtype": kv, "kv_cache_tokens": 8192})
        return float(info["memory_mb"])


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_bfloat16_kv_cache_halves_the_cache_in_the_memory_estimate(llama: Path, dtype: str) -> None:
    config = transformers.AutoConfig.from_pretrained(str(llama))
    # 8,192 positions of keys and values in every layer, float32 against bfloat16.
    kv_mb = 8192 * 2 * config.num_hidden_layers * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads) * 4 / 2**20
    full = kv_positions_mb(llama, dtype, "auto")
    half = kv_positions_mb(llama, dtype, "bfloat16")
    assert full - half == pytest.approx(kv_mb / 2, rel=1e-3)
    assert kv_positions_mb(llama, dtype, "float32") == full


@pytest.mark.parametrize("value", ["float16", "bf16", ""])
def test_an_unknown_kv_cache_dtype_is_invalid_input_naming_the_option(llama: Path, value: str) -> None:
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=r"kv_cache_dtype must be auto, float32 or bfloat16"):
            pool.register("m", llama, options={"kv_cache_dtype": value})
        pool.register("ok", llama)  # the pool stays usable
        assert collect(pool.generate("ok", ids_of(4, 1), max_tokens=3, temperature=0, ignore_eos=True))
