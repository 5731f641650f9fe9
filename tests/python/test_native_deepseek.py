"""The native DeepSeek-V3 decoder (latent attention, grouped sigmoid routing) against transformers.

Tiny random DeepseekV3ForCausalLM models (decoder_models.DEEPSEEK_ARCHS): 8 experts
in 4 groups, 3 per token from the 2 best groups, two shared experts, a dense
first layer (first_k_dense_replace=1), a random routing bias; with and without
q_lora_rank, interleaved and rotate-half rope, and yarn with mscale_all_dim.
Compared with transformers: prefill logits, 64-token greedy generation, the
latent KV cache against recomputing, and the router's choices at every MoE
layer. The absorbed attention the decoder runs equals the expanded form, the
memory estimate budgets the latent per token, kimi_k2 configs that name the
architecture load as DeepSeek-V3, and bad configs fail naming the key.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

import mpool
import mpool.testing
from decoder_models import DEEPSEEK_ARCHS, build_decoder
from test_native_decoder import (
    check_cache_equals_recomputing,
    check_greedy_64_tokens,
    check_prefill_logits,
    decoder_logits,
    hf_model,
    prompt_ids,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deepseek")
    return {arch: build_decoder(root, arch) for arch in DEEPSEEK_ARCHS}


def config_of(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def variant(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    cfg = config_of(dst)
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return dst


def test_the_variants_cover_lora_and_plain_queries_both_rope_layouts_and_yarn(models: dict[str, Path]) -> None:
    plain, no_lora, yarn = (config_of(models[a]) for a in DEEPSEEK_ARCHS)
    assert plain["q_lora_rank"] == 24 and no_lora["q_lora_rank"] is None
    assert plain["rope_interleave"] is True and no_lora["rope_interleave"] is False
    assert yarn["rope_parameters"]["rope_type"] == "yarn" and yarn["rope_parameters"]["mscale_all_dim"] == 0.7
    assert plain["first_k_dense_replace"] == 1 and plain["num_hidden_layers"] == 3


@pytest.mark.parametrize("arch", DEEPSEEK_ARCHS)
def test_prefill_logits_match_transformers_within_1e4_fp32(models: dict[str, Path], arch: str) -> None:
    check_prefill_logits(models[arch], arch)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic"])
def test_mscale_all_dim_scales_the_softmax_for_any_scaled_rope_as_transformers_does(
    models: dict[str, Path], tmp_path: Path, rope_type: str
) -> None:
    # transformers' yarn_apply_mscale folds mscale_all_dim into MLA's softmax
    # scale for every rope type but the default; mpool read it for yarn alone.
    params = {"rope_type": rope_type, "factor": 2.0, "mscale_all_dim": 1.0, "rope_theta": 10000.0}
    path = variant(models["deepseek_v3"], tmp_path / rope_type, rope_parameters=params)
    check_prefill_logits(path, f"deepseek_v3 {rope_type} rope with mscale_all_dim")


@pytest.mark.parametrize("arch", DEEPSEEK_ARCHS)
def test_greedy_generation_is_token_identical_to_transformers_for_64_tokens(
    pool: mpool.Pool, models: dict[str, Path], arch: str
) -> None:
    check_greedy_64_tokens(pool, models[arch], arch)


@pytest.mark.parametrize("arch", DEEPSEEK_ARCHS)
def test_latent_kv_cache_decode_equals_recomputing_the_full_sequence(models: dict[str, Path], arch: str) -> None:
    # One token per step runs the decode path against the cached latents; chunks
    # of 7 run the masked path from mid-sequence.
    check_cache_equals_recomputing(models[arch], arch)


@pytest.mark.parametrize("arch", DEEPSEEK_ARCHS)
def test_absorbed_latent_attention_equals_the_expanded_per_head_form_batched_and_row_by_row(
    models: dict[str, Path], arch: str
) -> None:
    # "rows": the absorbed maps row by row (kernels::rows_times, the row kernel)
    # and attention as decode steps, as a prompt runs with the prefix cache.
    hidden = np.random.RandomState(7).randn(1, 20, 64).astype(np.float32)
    for layer in range(3):
        out = mpool.testing.probe(
            "mla.attend", {"hidden": hidden}, path=str(models[arch]), layer=layer, dtype="float32"
        )
        scale = np.abs(out["expanded"]).max()
        assert scale > 0.1
        for form in ("absorbed", "rows"):
            assert np.abs(out[form] - out["expanded"]).max() / scale <= 1e-5, f"{arch} layer {layer}, {form}"


@pytest.mark.parametrize("arch", DEEPSEEK_ARCHS)
def test_router_picks_transformers_experts_and_weights_at_every_moe_layer(
    models: dict[str, Path], arch: str
) -> None:
    model = hf_model(models[arch])
    seen: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for i in (1, 2):  # layer 0 is dense (first_k_dense_replace=1)

        def keep(module: Any, args: Any, out: Any, i: int = i) -> None:
            _, weights, indices = out
            seen[i] = (args[0].detach().clone().view(-1, 64), weights.detach().clone(), indices.detach().clone())

        hooks.append(model.model.layers[i].mlp.gate.register_forward_hook(keep))
    with torch.no_grad():
        model(torch.tensor([prompt_ids(24, seed=3)]))
    for h in hooks:
        h.remove()
    assert sorted(seen) == [1, 2]
    cfg = config_of(models[arch])
    biased_choice_differs = False
    for layer, (hidden, weights, indices) in seen.items():
        out = mpool.testing.probe(
            "moe.route", {"hidden": hidden.numpy()}, path=str(models[arch]), layer=layer, dtype="float32"
        )
        # transformers leaves the top-k unsorted: compare per token in expert order.
        ref_order, our_order = np.argsort(indices.numpy(), -1), np.argsort(out["experts"], -1)
        ref_experts = np.take_along_axis(indices.numpy(), ref_order, -1)
        np.testing.assert_array_equal(np.take_along_axis(out["experts"], our_order, -1), ref_experts)
        np.testing.assert_allclose(
            np.take_along_axis(out["weights"], our_order, -1),
            np.take_along_axis(weights.numpy(), ref_order, -1),
            rtol=1e-5,
            atol=1e-6,
        )
        # The chosen experts come from at most topk_group groups of 2 experts each.
        groups = ref_experts // (cfg["n_routed_experts"] // cfg["n_group"])
        assert max(len(set(g)) for g in groups) <= cfg["topk_group"]
        # Weights are the unbiased sigmoid scores (times the scaling factor): with
        # norm_topk_prob they sum to routed_scaling_factor.
        if cfg["norm_topk_prob"]:
            np.testing.assert_allclose(out["weights"].sum(-1), cfg["routed_scaling_factor"], rtol=1e-5)
        gate = model.model.layers[layer].mlp.gate
        scores = torch.sigmoid(hidden @ gate.weight.T)
        plain_top = torch.topk(scores, cfg["num_experts_per_tok"], -1).indices.sort(-1).values.numpy()
        biased_choice_differs |= bool((plain_top != ref_experts).any())
    assert biased_choice_differs, "the correction bias never changed a choice: the test would not see it ignored"


def test_memory_estimate_budgets_the_latent_per_token_not_expanded_keys_and_values(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    small = pool.register("a", models["deepseek_v3"], context_length=64)
    large = pool.register("b", models["deepseek_v3"], context_length=256)
    cfg = config_of(models["deepseek_v3"])
    latent_per_token = cfg["num_hidden_layers"] * (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * 4
    params = sum(t.numel() for t in hf_model(models["deepseek_v3"]).state_dict().values())
    assert small["weight_mb"] == pytest.approx(params * 4 / 2**20, rel=1e-6)
    assert small["warnings"] == []
    grown = large["memory_mb"] - small["memory_mb"]
    latent = 192 * latent_per_token / 2**20
    assert latent <= grown <= latent + 192 * 512 * cfg["num_attention_heads"] * 4 / 2**20  # + the prefill's scores
    expanded = 192 * 2 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * 24 * 4 / 2**20
    assert latent < expanded / 5


def test_kimi_k2_config_naming_deepseek_v3_loads_as_deepseek_v3(
    pool: mpool.Pool, models: dict[str, Path], tmp_path: Path
) -> None:
    kimi = variant(models["deepseek_v3"], tmp_path / "kimi", model_type="kimi_k2")
    ids = prompt_ids(20, seed=4)
    np.testing.assert_array_equal(decoder_logits(str(kimi), ids)[1], decoder_logits(str(models["deepseek_v3"]), ids)[1])
    assert mpool.inspect(str(kimi))["support"] == "supported by llama"
    other = variant(models["deepseek_v3"], tmp_path / "other", model_type="kimi_k2", architectures=["KimiForCausalLM"])
    with pytest.raises(mpool.InvalidInput, match="kimi_k2.*DeepseekV3ForCausalLM"):
        pool.register("other", other)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_experts_per_tok": 9}, r'"num_experts_per_tok" \(9\) is more than the number of experts \(8\)'),
        (
            {"num_experts_per_tok": 5},
            r'"num_experts_per_tok" \(5\) is more than the experts of "topk_group" groups \(4\)',
        ),
        ({"topk_group": 5}, r'"topk_group" \(5\) is more than "n_group" \(4\)'),
        ({"n_group": 3}, r'"n_routed_experts" \(8\) is not divisible by "n_group" \(3\)'),
        ({"n_group": 8}, r'"n_group" \(8\) leaves fewer than 2 experts per group'),
        ({"scoring_func": "softmax"}, r"\"scoring_func\" is 'softmax'; only 'sigmoid' is supported"),
        ({"topk_method": "greedy"}, r"\"topk_method\" is 'greedy'; only 'noaux_tc' is supported"),
        ({"kv_lora_rank": 0}, r'"kv_lora_rank" must be a positive integer'),
        ({"routed_scaling_factor": 0}, r'"routed_scaling_factor" must be a finite number > 0'),
        ({"first_k_dense_replace": -1}, r'"first_k_dense_replace" must be >= 0'),
    ],
)
def test_bad_deepseek_configs_are_invalid_input_naming_the_key(
    pool: mpool.Pool, models: dict[str, Path], tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    bad = variant(models["deepseek_v3"], tmp_path / "bad", **changes)
    with pytest.raises(mpool.InvalidInput, match=message):
        pool.register("bad", bad)


def test_transformers_builds_the_same_model_type_we_register(models: dict[str, Path]) -> None:
    # Guards the fixture: the tiny models are transformers' own DeepSeek-V3.
    assert isinstance(hf_model(models["deepseek_v3"]), transformers.DeepseekV3ForCausalLM)
