"""The native mixture-of-experts decoders (Qwen3-MoE, Qwen2-MoE) against transformers.

Tiny random models (decoder_models.MOE_ARCHS) with 8 experts, 2 per token, and a
dense layer between MoE layers (mlp_only_layers or decoder_sparse_step); Qwen3-MoE
with and without renormalised top-k weights, Qwen2-MoE with its gated shared
expert. Compared with transformers: prefill logits, 64-token greedy generation,
the KV cache against recomputing, and the router's choices at every MoE layer.
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
from safetensors.torch import load_file, save_file

import mpool
import mpool.testing
from decoder_models import MOE_ARCHS, build_decoder
from test_native_decoder import (
    check_cache_equals_recomputing,
    check_greedy_64_tokens,
    check_prefill_logits,
    decoder_logits,
    hf_model,
    prompt_ids,
    run,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    return {arch: build_decoder(root, arch) for arch in MOE_ARCHS}


def native_logits(path: Path, ids: list[int], chunk: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return decoder_logits(str(path), ids, chunk)


def moe_layers(path: Path) -> list[int]:
    cfg = json.loads((path / "config.json").read_text())
    step, dense = cfg.get("decoder_sparse_step", 1), set(cfg.get("mlp_only_layers") or [])
    return [i for i in range(cfg["num_hidden_layers"]) if (i + 1) % step == 0 and i not in dense]


def test_the_variants_have_dense_layers_between_moe_layers(models: dict[str, Path]) -> None:
    assert moe_layers(models["qwen3_moe"]) == [0, 2]
    assert moe_layers(models["qwen3_moe_unnormalized"]) == [1, 3]
    assert moe_layers(models["qwen2_moe"]) == [0, 2]
    # transformers 5 names Qwen3-MoE's expert count num_local_experts in config.json.
    assert "num_local_experts" in json.loads((models["qwen3_moe"] / "config.json").read_text())


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_prefill_logits_match_transformers_within_1e4_fp32(models: dict[str, Path], arch: str) -> None:
    check_prefill_logits(models[arch], arch)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_greedy_generation_is_token_identical_to_transformers_for_64_tokens(
    pool: mpool.Pool, models: dict[str, Path], arch: str
) -> None:
    check_greedy_64_tokens(pool, models[arch], arch)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_kv_cache_decode_equals_recomputing_the_full_sequence(models: dict[str, Path], arch: str) -> None:
    # One token per step runs the decode path (the chosen experts one by one);
    # chunks of 7 run the grouped path from mid-sequence.
    check_cache_equals_recomputing(models[arch], arch)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_router_picks_transformers_experts_and_weights_at_every_moe_layer(
    models: dict[str, Path], arch: str
) -> None:
    model = hf_model(models[arch])
    seen: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for i in moe_layers(models[arch]):

        def keep(module: Any, args: Any, out: Any, i: int = i) -> None:
            _, scores, indices = out
            seen[i] = (args[0].detach().clone(), scores.detach().clone(), indices.detach().clone())

        hooks.append(model.model.layers[i].mlp.gate.register_forward_hook(keep))
    with torch.no_grad():
        model(torch.tensor([prompt_ids(24, seed=3)]))
    for h in hooks:
        h.remove()
    assert sorted(seen) == moe_layers(models[arch])
    for layer, (hidden, scores, indices) in seen.items():
        out = mpool.testing.probe(
            "moe.route", {"hidden": hidden.numpy()}, path=str(models[arch]), layer=layer, dtype="float32"
        )
        np.testing.assert_array_equal(out["experts"], indices.numpy(), err_msg=f"{arch} layer {layer}")
        np.testing.assert_allclose(out["weights"], scores.numpy(), rtol=1e-5, atol=1e-6)
        # norm_topk_prob: the chosen weights sum to 1; without it, to less.
        sums = out["weights"].sum(-1)
        if json.loads((models[arch] / "config.json").read_text())["norm_topk_prob"]:
            np.testing.assert_allclose(sums, 1.0, rtol=1e-6)
        else:
            assert (sums < 0.999).all()


def test_moe_route_probe_refuses_a_dense_layer(models: dict[str, Path]) -> None:
    with pytest.raises(mpool.InvalidInput, match="layer 1 is not a mixture-of-experts layer"):
        mpool.testing.probe("moe.route", {"hidden": np.zeros((1, 64), np.float32)}, path=str(models["qwen3_moe"]), layer=1)


def test_stacked_expert_tensors_load_like_per_expert_ones(models: dict[str, Path], tmp_path: Path) -> None:
    # transformers 5 holds experts stacked (experts.gate_up_proj, experts.down_proj)
    # but saves them per expert; a checkpoint written stacked loads the same.
    stacked = tmp_path / "stacked"
    shutil.copytree(models["qwen2_moe"], stacked)
    tensors = load_file(str(stacked / "model.safetensors"))
    for layer in moe_layers(stacked):
        prefix = f"model.layers.{layer}.mlp.experts."
        gate_up, down = [], []
        for e in range(8):
            gate, up = tensors.pop(f"{prefix}{e}.gate_proj.weight"), tensors.pop(f"{prefix}{e}.up_proj.weight")
            gate_up.append(torch.cat([gate, up]))
            down.append(tensors.pop(f"{prefix}{e}.down_proj.weight"))
        tensors[prefix + "gate_up_proj"] = torch.stack(gate_up)
        tensors[prefix + "down_proj"] = torch.stack(down)
    save_file(tensors, str(stacked / "model.safetensors"), metadata={"format": "pt"})
    ids = prompt_ids(20, seed=4)
    np.testing.assert_array_equal(native_logits(stacked, ids)[1], native_logits(models["qwen2_moe"], ids)[1])


def test_memory_estimate_counts_every_expert(pool: mpool.Pool, models: dict[str, Path]) -> None:
    info = pool.register("m", models["qwen2_moe"])
    params = sum(t.numel() for t in load_file(str(models["qwen2_moe"] / "model.safetensors")).values())
    assert info["weight_mb"] == pytest.approx(params * 4 / 2**20, rel=1e-6)
    assert info["warnings"] == []


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_inspect_states_the_parameters_and_the_active_parameters_per_token(models: dict[str, Path], arch: str) -> None:
    # Every expert is resident; a token runs top-k of each MoE layer's experts.
    cfg = json.loads((models[arch] / "config.json").read_text())
    experts = cfg.get("num_experts") or cfg.get("num_local_experts")
    tensors = load_file(str(models[arch] / "model.safetensors"))
    total = sum(t.numel() for t in tensors.values())
    routed = sum(t.numel() for name, t in tensors.items() if ".experts." in name)
    assert routed > 0
    details = mpool.inspect(models[arch])["details"]
    assert details["parameters"] == total
    k = cfg["num_experts_per_tok"]
    assert details["active_parameters_per_token"] == total - int(routed * (1 - k / experts))
    assert (details["experts"], details["experts_per_token"]) == (experts, k)


def test_inspect_of_a_dense_decoder_states_no_expert_details(tmp_path: Path) -> None:
    assert mpool.inspect(build_decoder(tmp_path, "llama"))["details"] == {}


def test_more_experts_per_token_than_experts_is_invalid_input_naming_the_key(
    pool: mpool.Pool, models: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(models["qwen3_moe"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_experts_per_tok"] = 9
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mpool.InvalidInput, match=r'"num_experts_per_tok" \(9\) is more than the number of experts \(8\)'):
        pool.register("bad", bad)


def test_a_missing_expert_tensor_is_named_when_the_model_loads(
    pool: mpool.Pool, models: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "missing"
    shutil.copytree(models["qwen3_moe"], bad)
    tensors = load_file(str(bad / "model.safetensors"))
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    del tensors[name]
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(mpool.InvalidInput, match=name.replace(".", r"\.")):
        native_logits(bad, prompt_ids())
    # As for every family, registration records it and the load fails naming it.
    info = pool.register("missing", bad)
    assert any(name in w for w in info["warnings"])
    with pytest.raises(mpool.SpawnFailed, match=name.replace(".", r"\.")):
        run(pool.generate("missing", prompt_ids(), max_tokens=2))


def test_closing_a_stream_mid_generation_cancels_it_and_frees_the_replica(
    pool: mpool.Pool, models: dict[str, Path]
) -> None:
    pool.register("m", models["qwen2_moe"], max_replicas=1)
    ids = prompt_ids(seed=5)
    stream = pool.generate("m", ids, max_tokens=200, temperature=0, ignore_eos=True)
    first = [next(stream) for _ in range(3)]
    assert all(c.finish_reason is None for c in first)
    stream.close()
    assert stream.finish_reason == "cancelled"
    sampled = run(pool.generate("m", ids, max_tokens=8, temperature=1.0, seed=3, ignore_eos=True, timeout=10))[0]
    assert sampled == run(pool.generate("m", ids, max_tokens=8, temperature=1.0, seed=3, ignore_eos=True))[0]
    assert len(sampled) == 8


def test_bfloat16_decode_steps_track_transformers_bfloat16(models: dict[str, Path]) -> None:
    # Token by token: the routed experts run the single-row bf16 kernel.
    ids = prompt_ids(24, seed=6)
    with torch.no_grad():
        ref = hf_model(models["qwen3_moe"], torch.bfloat16)(torch.tensor([ids])).logits[0].float().numpy()
    positions, ours = decoder_logits(str(models["qwen3_moe"]), ids, 1, "bfloat16")
    assert np.abs(ours - ref[positions]).max() / np.abs(ref).max() <= 0.03
    assert (ours.argmax(-1) == ref[positions].argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_concurrent_requests_each_get_the_tokens_they_get_alone(
    pool: mpool.Pool, models: dict[str, Path], arch: str
) -> None:
    # Two replicas and four threads: routing state is per request, never shared.
    import threading

    pool.register("c", models[arch], max_replicas=2)
    prompts = {s: prompt_ids(seed=s) for s in (11, 12, 13, 14)}
    alone = {s: run(pool.generate("c", ids, max_tokens=12, temperature=0, ignore_eos=True))[0] for s, ids in prompts.items()}
    together: dict[int, list[int]] = {}

    def go(s: int) -> None:
        together[s] = run(pool.generate("c", prompts[s], max_tokens=12, temperature=0, ignore_eos=True))[0]

    threads = [threading.Thread(target=go, args=(s,)) for s in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
