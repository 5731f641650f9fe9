"""Native Stable Diffusion 3 against diffusers: the MMDiT (SD3Transformer2DModel)
with and without qk-norm and MMDiT-X's dual attention, and skip-layer forward
passes; every comparison is float32 with max relative error <= 1e-4 (max abs
difference / max abs reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mpool
import mpool.testing
from sd3_models import save_mmdit

RTOL = 1e-4


def rel_err(ours: np.ndarray, ref: torch.Tensor) -> float:
    r = ref.detach().double().numpy()
    assert ours.shape == r.shape, f"shape {ours.shape} != reference {r.shape}"
    scale = float(np.max(np.abs(r)))
    assert scale > 0
    return float(np.max(np.abs(ours.astype(np.float64) - r))) / scale


def mmdit_inputs(model, batch: int, h: int, w: int, tokens: int, seed: int = 1) -> dict[str, torch.Tensor]:
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    return dict(
        latents=torch.randn(batch, c.in_channels, h, w, generator=gen),
        timestep=torch.rand(batch, generator=gen) * 1000,
        context=torch.randn(batch, tokens, c.joint_attention_dim, generator=gen),
        pooled=torch.randn(batch, c.pooled_projection_dim, generator=gen),
    )


def run_both(model, path: Path, inputs: dict[str, torch.Tensor], skip_layers=None) -> float:
    with torch.no_grad():
        ref = model(
            hidden_states=inputs["latents"], timestep=inputs["timestep"], encoder_hidden_states=inputs["context"],
            pooled_projections=inputs["pooled"], skip_layers=skip_layers,
        ).sample
    options = {} if skip_layers is None else {"skip_layers": list(skip_layers)}
    ours = mpool.testing.probe("sd3.transformer", {k: v.numpy() for k, v in inputs.items()}, path=str(path), **options)
    return rel_err(ours["sample"], ref)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"qk_norm": "rms_norm"},
        {"qk_norm": "rms_norm", "dual_attention_layers": [0, 1]},
        {"num_layers": 2, "patch_size": 1, "in_channels": 16, "out_channels": 16, "pos_embed_max_size": 20},
        {"out_channels": 8, "num_attention_heads": 2, "attention_head_dim": 16},
        {"pos_embed_max_size": None},
    ],
    ids=["sd3", "qk_norm", "mmdit_x", "patch1_16ch", "wider_heads_8out", "no_position_table"],
)
def test_mmdit_velocity_matches_diffusers(tmp_path: Path, overrides: dict) -> None:
    model = save_mmdit(tmp_path, **overrides)
    p = model.config.patch_size
    for batch, h, w, tokens in [(1, 8 * p, 8 * p, 7), (2, 6 * p, 10 * p, 5)]:
        err = run_both(model, tmp_path, mmdit_inputs(model, batch, h, w, tokens))
        assert err <= RTOL, f"{overrides} {h}x{w}: relative error {err:.2e}"


def test_mmdit_skip_layers_match_diffusers_skip_layers(tmp_path: Path) -> None:
    model = save_mmdit(tmp_path, num_layers=4, dual_attention_layers=[1])
    inputs = mmdit_inputs(model, 1, 8, 8, 6)
    for skip in ([1], [0, 2], [3]):
        err = run_both(model, tmp_path, inputs, skip_layers=skip)
        assert err <= RTOL, f"skip {skip}: relative error {err:.2e}"


def test_mmdit_without_stored_position_table_computes_the_same_one(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = save_mmdit(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    assert "pos_embed.pos_embed" in tensors
    del tensors["pos_embed.pos_embed"]
    save_file(tensors, weights)
    assert run_both(model, tmp_path, mmdit_inputs(model, 1, 10, 6, 4)) <= RTOL


def test_mmdit_whose_config_sets_no_position_table_takes_a_grid_per_size_for_any_size(tmp_path: Path) -> None:
    # pos_embed_max_size null: diffusers' PatchEmbed keeps no table (none is saved)
    # and computes each latent size's grid; it was read as the default 96 and cropped.
    model = save_mmdit(tmp_path, pos_embed_max_size=None)
    p = model.config.patch_size
    for h, w in [(20 * p, 3 * p), (p, 13 * p)]:  # past the 12 of the suite's tables
        err = run_both(model, tmp_path, mmdit_inputs(model, 1, h, w, 4))
        assert err <= RTOL, f"{h}x{w}: relative error {err:.2e}"


def test_mmdit_refuses_a_latent_larger_than_its_position_table(tmp_path: Path) -> None:
    model = save_mmdit(tmp_path)
    side = model.config.pos_embed_max_size * model.config.patch_size + 2
    inputs = mmdit_inputs(model, 1, side, 4, 3)
    with pytest.raises(mpool.InvalidInput, match="at most"):
        mpool.testing.probe("sd3.transformer", {k: v.numpy() for k, v in inputs.items()}, path=str(tmp_path))


def test_mmdit_config_errors_name_the_key(tmp_path: Path) -> None:
    import json

    save_mmdit(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value, needle in [
        ("qk_norm", "layer_norm", "qk_norm"),
        ("caption_projection_dim", 40, "caption_projection_dim"),
        ("dual_attention_layers", [7], "dual_attention_layers"),
    ]:
        bad = dict(config, **{key: value})
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(mpool.InvalidInput, match=needle):
            mpool.testing.probe("sd3.transformer", {}, path=str(tmp_path))


@pytest.mark.parametrize("act,layers", [("quick_gelu", 2), ("gelu", 3)])
def test_clip_text_encoder_penultimate_state_and_projection_match_transformers(
    tmp_path: Path, act: str, layers: int
) -> None:
    from sd3_models import save_clip_text

    model, tok = save_clip_text(tmp_path, hidden=24, layers=layers, act=act)
    ids = tok(["a photo of a cat", "the big red house on a tree in the blue"], padding="max_length", max_length=77,
              truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True)
    for index in (-2, -1, 0):
        ours = mpool.testing.probe("clip.text_encoder", {"input_ids": ids.numpy()}, path=str(tmp_path),
                                   hidden_index=index)
        assert rel_err(ours["hidden"], ref.hidden_states[index]) <= RTOL, index
        assert rel_err(ours["pooled"], ref.text_embeds) <= RTOL
    with pytest.raises(mpool.InvalidInput, match="hidden state"):
        mpool.testing.probe("clip.text_encoder", {"input_ids": ids.numpy()}, path=str(tmp_path),
                            hidden_index=layers + 1)


SCHEDULERS = [
    {"shift": 3.0},  # SD3 / SD3.5
    {"shift": 1.0},
    {"shift": 3.0, "shift_terminal": 0.1},
    {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},  # FLUX dev
    {"use_dynamic_shifting": True, "time_shift_type": "linear", "base_shift": 0.5, "max_shift": 1.15},
    {"shift": 2.0, "invert_sigmas": True},
    {"shift": 3.0, "num_train_timesteps": 500},
]


@pytest.mark.parametrize("config", SCHEDULERS)
def test_flow_match_schedule_equals_diffusers_bit_for_bit(config: dict) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    ref = FlowMatchEulerDiscreteScheduler(**config)
    for steps in (1, 2, 4, 7, 28, 50):
        if steps == 1 and config.get("shift_terminal"):
            # diffusers divides by zero here (its one level is 1); mpool refuses.
            with pytest.raises(mpool.InvalidInput, match="at least 2 steps"):
                mpool.testing.probe("nn.flow_match_schedule", config=config, steps=1)
            continue
        mu = None
        if config.get("use_dynamic_shifting"):
            mu = calculate_shift(4096 // steps, 256, 4096, 0.5, 1.15)
        ref.set_timesteps(steps, mu=mu)
        options: dict = {"config": config, "steps": steps, "image_seq_len": 4096 // steps}
        if mu is not None:
            options["mu"] = mu
        ours = mpool.testing.probe("nn.flow_match_schedule", **options)
        assert np.array_equal(ours["sigmas"], ref.sigmas.numpy()), (steps, ours["sigmas"], ref.sigmas)
        assert np.array_equal(ours["timesteps"], ref.timesteps.numpy()), steps
        if config.get("use_dynamic_shifting"):
            assert float(ours["mu"]) == pytest.approx(mu, rel=1e-12)


@pytest.mark.parametrize("steps,strength", [(8, 0.3), (8, 1.0), (10, 0.55), (4, 0.01), (28, 0.8), (3, 0.5)])
def test_img2img_start_step_is_diffusers_get_timesteps(steps: int, strength: float) -> None:
    init = min(steps * strength, steps)
    expected = int(max(steps - init, 0))
    ours = mpool.testing.probe("nn.flow_match_schedule", config={"shift": 3.0}, steps=steps, strength=strength)
    assert int(ours["start"]) == expected


@pytest.mark.parametrize("steps", [1, 4, 28])
def test_img2img_strength_that_leaves_no_step_is_refused_as_diffusers_does(steps: int) -> None:
    # diffusers' img2img pipelines raise ValueError when get_timesteps leaves fewer than one step.
    with pytest.raises(mpool.InvalidInput, match=f"strength 0.000000 leaves none of the {steps} steps"):
        mpool.testing.probe("nn.flow_match_schedule", config={"shift": 3.0}, steps=steps, strength=0.0)
    assert int(mpool.testing.probe("nn.flow_match_schedule", config={}, steps=steps, strength=1e-9)["start"]) == steps - 1


def test_flow_match_config_refuses_what_it_does_not_compute() -> None:
    for config, needle in [
        ({"use_karras_sigmas": True}, "use_karras_sigmas"),
        ({"stochastic_sampling": True}, "stochastic_sampling"),
        ({"_class_name": "EulerDiscreteScheduler"}, "_class_name"),
        ({"shift": -1.0}, "shift"),
        ({"time_shift_type": "cubic"}, "time_shift_type"),
    ]:
        with pytest.raises(mpool.InvalidInput, match=needle):
            mpool.testing.probe("nn.flow_match_schedule", config=config, steps=4)
    with pytest.raises(mpool.InvalidInput, match="needs mu"):
        mpool.testing.probe("nn.flow_match_schedule", config={"use_dynamic_shifting": True}, steps=4)
    with pytest.raises(mpool.InvalidInput, match="strength"):
        mpool.testing.probe("nn.flow_match_schedule", config={}, steps=4, strength=1.5)
