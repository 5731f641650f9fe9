"""Native FLUX.1 transformer against diffusers' FluxTransformer2DModel: tiny
random models (every parameter drawn, see random_weights.randomize) without and
with the guidance embedding, other rotary axes, no single-stream or no
double-stream blocks; position ids as FluxPipeline makes them and arbitrary ones;
batches of 1 and 2. float32 comparisons use max relative error <= 1e-4 (max abs
difference / max abs reference). Then the single file in Black Forest Labs'
original names (the inverse of diffusers' converter, checked against it), the
errors, and half precision bounded by diffusers' own half-precision error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mpool
import mpool.testing
from original_names import flux_to_original
from random_weights import randomize

RTOL = 1e-4


def rel_err(ours: np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    r = ref.detach().double().numpy() if isinstance(ref, torch.Tensor) else ref.astype(np.float64)
    assert ours.shape == r.shape, f"shape {ours.shape} != reference {r.shape}"
    scale = float(np.max(np.abs(r)))
    assert scale > 0
    return float(np.max(np.abs(ours.astype(np.float64) - r))) / scale


def flux_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(
        patch_size=1, in_channels=16, out_channels=None, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )
    config.update(overrides)
    return config


def save_flux(path: Path, seed: int = 0, scale: float = 0.15, **overrides: Any):
    """A random FluxTransformer2DModel saved at ``path``; returns it."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = randomize(FluxTransformer2DModel(**flux_config(**overrides)), seed, scale=scale)
    model.save_pretrained(path)
    return model


def pipeline_ids(h: int, w: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ids (0, row, col) per packed latent and all-zero text ids, as FluxPipeline makes them."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, h, w, "cpu", torch.float32), torch.zeros(tokens, 3)


def flux_inputs(model, batch: int, h: int, w: int, tokens: int, seed: int = 1, arbitrary_ids: bool = False,
                guidance: bool | None = None) -> dict[str, torch.Tensor]:
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    axes = len(c.axes_dims_rope)
    if arbitrary_ids:
        # Fractional, negative and large coordinates on every axis.
        image_ids = torch.randn(h * w, axes, generator=gen) * 40
        text_ids = torch.randint(-5, 3000, (tokens, axes), generator=gen).float()
    else:
        assert axes == 3
        image_ids, text_ids = pipeline_ids(h, w, tokens)
    inputs = dict(
        latents=torch.randn(batch, h * w, c.in_channels, generator=gen),
        timestep=torch.rand(batch, generator=gen),
        pooled=torch.randn(batch, c.pooled_projection_dim, generator=gen),
        context=torch.randn(batch, tokens, c.joint_attention_dim, generator=gen),
        image_ids=image_ids,
        text_ids=text_ids,
    )
    if c.guidance_embeds if guidance is None else guidance:
        inputs["guidance"] = 1.0 + 4.0 * torch.rand(batch, generator=gen)
    return inputs


def reference(model, inputs: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype)

    with torch.no_grad():
        return model(
            hidden_states=cast(inputs["latents"]), encoder_hidden_states=cast(inputs["context"]),
            pooled_projections=cast(inputs["pooled"]), timestep=inputs["timestep"], img_ids=inputs["image_ids"],
            txt_ids=inputs["text_ids"], guidance=inputs.get("guidance"),
        ).sample.float()


def probe(inputs: dict[str, torch.Tensor], **options: Any) -> dict[str, np.ndarray]:
    return mpool.testing.probe("flux.transformer", {k: v.numpy() for k, v in inputs.items()}, **options)


CONFIGS = [
    ({}, "schnell"),
    ({"guidance_embeds": True}, "dev"),
    ({"axes_dims_rope": (2, 8, 6), "guidance_embeds": True}, "other_axes"),
    ({"num_single_layers": 0, "num_layers": 3}, "doubles_only"),
    ({"num_layers": 0, "num_single_layers": 3}, "singles_only"),
    ({"num_attention_heads": 3, "attention_head_dim": 32, "axes_dims_rope": (8, 12, 12), "out_channels": 8,
      "patch_size": 2}, "wide_heads_patch2_8out"),
]


@pytest.mark.parametrize("overrides", [c for c, _ in CONFIGS], ids=[i for _, i in CONFIGS])
def test_flux_transformer_matches_diffusers_with_pipeline_and_arbitrary_ids(tmp_path: Path, overrides: dict) -> None:
    model = save_flux(tmp_path, **overrides)
    for batch, h, w, tokens, arbitrary in [(1, 4, 4, 7, False), (2, 3, 5, 6, False), (2, 4, 3, 5, True)]:
        inputs = flux_inputs(model, batch, h, w, tokens, seed=batch + h, arbitrary_ids=arbitrary)
        ours = probe(inputs, path=str(tmp_path))
        err = rel_err(ours["sample"], reference(model, inputs))
        assert err <= RTOL, f"{overrides} batch {batch} {h}x{w} arbitrary ids {arbitrary}: relative error {err:.2e}"
        assert int(ours["unused_tensors"]) == 0


def test_flux_transformer_with_four_position_axes_matches_diffusers(tmp_path: Path) -> None:
    model = save_flux(tmp_path, axes_dims_rope=(4, 4, 2, 6))
    inputs = flux_inputs(model, 2, 3, 3, 4, arbitrary_ids=True)
    assert rel_err(probe(inputs, path=str(tmp_path))["sample"], reference(model, inputs)) <= RTOL


def test_flux_transformer_without_any_block_is_the_embedders_and_final_layer(tmp_path: Path) -> None:
    model = save_flux(tmp_path, num_layers=0, num_single_layers=0, guidance_embeds=True)
    inputs = flux_inputs(model, 2, 2, 3, 3)
    assert rel_err(probe(inputs, path=str(tmp_path))["sample"], reference(model, inputs)) <= RTOL


# --- single files in Black Forest Labs' names


class _SplitAtModelWidth:
    """torch, except that split() at FLUX.1's widths (diffusers' converter
    hard-codes 3072 for the single blocks' fused linear1) splits at the tiny
    model's width instead."""

    def __init__(self, inner: int) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def split(self, tensor: torch.Tensor, sizes: Any, dim: int = 0):
        if tuple(sizes) == (3072, 3072, 3072, 12288):
            sizes = (self._inner,) * 3 + (4 * self._inner,)
        return torch.split(tensor, sizes, dim=dim)


BFL_SHAPED = dict(num_attention_heads=2, attention_head_dim=128, axes_dims_rope=(16, 56, 56), in_channels=16,
                  joint_attention_dim=32, pooled_projection_dim=24)


@pytest.fixture(scope="module")
def bfl_models(tmp_path_factory) -> dict[str, Any]:
    """FLUX-shaped tiny models (128-wide heads, so the axes can be inferred): schnell-like and dev-like."""
    return {
        "schnell": save_flux(tmp_path_factory.mktemp("schnell"), seed=3, scale=0.1, **BFL_SHAPED),
        "dev": save_flux(tmp_path_factory.mktemp("dev"), seed=4, scale=0.1, guidance_embeds=True, num_layers=1,
                         num_single_layers=3, **BFL_SHAPED),
    }


@pytest.mark.parametrize("kind", ["schnell", "dev"])
def test_inverse_name_map_round_trips_through_diffusers_converter(
    bfl_models: dict[str, Any], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers.loaders import single_file_utils

    model = bfl_models[kind]
    monkeypatch.setattr(single_file_utils, "torch", _SplitAtModelWidth(model.inner_dim))
    original = {f"model.diffusion_model.{k}": v for k, v in flux_to_original(model).items()}
    converted = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    expected = model.state_dict()
    assert sorted(converted) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(converted[name], value), name


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""], ids=["ldm_prefix", "no_prefix"])
@pytest.mark.parametrize("kind", ["schnell", "dev"])
def test_single_file_in_original_names_matches_diffusers_and_infers_its_config(
    bfl_models: dict[str, Any], tmp_path: Path, kind: str, prefix: str
) -> None:
    model = bfl_models[kind]
    file = tmp_path / "flux.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in flux_to_original(model).items()}, str(file))

    inferred = mpool.testing.probe("flux.single_file_config", {}, file=str(file))
    c = model.config
    expected = dict(
        patch_size=c.patch_size, in_channels=c.in_channels, out_channels=model.out_channels, num_layers=c.num_layers,
        num_single_layers=c.num_single_layers, attention_head_dim=c.attention_head_dim,
        num_attention_heads=c.num_attention_heads, joint_attention_dim=c.joint_attention_dim,
        pooled_projection_dim=c.pooled_projection_dim, guidance_embeds=int(c.guidance_embeds),
    )
    assert {k: int(inferred[k]) for k in expected} == expected
    assert list(inferred["axes_dims_rope"]) == list(c.axes_dims_rope)
    assert int(inferred["prefix_length"]) == len(prefix)

    for batch, arbitrary in [(1, False), (2, True)]:
        inputs = flux_inputs(model, batch, 3, 4, 5, seed=batch, arbitrary_ids=arbitrary)
        ours = probe(inputs, file=str(file))
        err = rel_err(ours["sample"], reference(model, inputs))
        assert err <= RTOL, f"{kind} {prefix!r} batch {batch}: relative error {err:.2e}"
        assert int(ours["unused_tensors"]) == 0


def test_single_file_with_heads_other_than_128_wide_is_refused_naming_the_norm(tmp_path: Path) -> None:
    model = save_flux(tmp_path / "d")
    file = tmp_path / "flux.safetensors"
    save_file({k: v.contiguous() for k, v in flux_to_original(model).items()}, str(file))
    with pytest.raises(mpool.InvalidInput, match=r"query_norm\.scale.*16 wide"):
        mpool.testing.probe("flux.single_file_config", {}, file=str(file))


# --- errors


def test_wrong_input_shapes_are_refused_naming_the_input(tmp_path: Path) -> None:
    model = save_flux(tmp_path)
    good = flux_inputs(model, 2, 3, 3, 4)
    bad_cases = [
        ("latents", torch.zeros(2, 9, 15), "latents"),
        ("timestep", torch.zeros(3), "timestep"),
        ("pooled", torch.zeros(2, 21), "pooled"),
        ("context", torch.zeros(2, 4, 23), "context"),
        ("image_ids", torch.zeros(8, 3), "image_ids"),
        ("text_ids", torch.zeros(4, 2), "text_ids"),
    ]
    for name, value, needle in bad_cases:
        with pytest.raises(mpool.InvalidInput, match=needle):
            probe(dict(good, **{name: value}), path=str(tmp_path))


def test_guidance_is_required_by_dev_models_and_refused_by_schnell_models(tmp_path: Path) -> None:
    dev = save_flux(tmp_path / "dev", guidance_embeds=True)
    with pytest.raises(mpool.InvalidInput, match="guidance .* is required"):
        probe(flux_inputs(dev, 1, 2, 2, 3, guidance=False), path=str(tmp_path / "dev"))
    schnell = save_flux(tmp_path / "schnell")
    with pytest.raises(mpool.InvalidInput, match="no guidance embedding"):
        probe(flux_inputs(schnell, 1, 2, 2, 3, guidance=True), path=str(tmp_path / "schnell"))


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    save_flux(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value, needle in [
        ("axes_dims_rope", [4, 4, 4], "axes_dims_rope.*adds up to 12"),
        ("axes_dims_rope", [3, 7, 6], "axes_dims_rope.*even"),
        ("axes_dims_rope", [], "axes_dims_rope"),
        ("num_single_layers", -1, "num_single_layers"),
        ("attention_head_dim", 0, "attention_head_dim"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps(dict(config, **{key: value})))
        with pytest.raises(mpool.InvalidInput, match=needle):
            probe({}, path=str(tmp_path))


# --- half precision


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_half_precision_tracks_diffusers_half_precision(tmp_path: Path, dtype: str, torch_dtype) -> None:
    # Both in half precision against the float32 model: the native error is within
    # twice diffusers' own, and the two half-precision outputs are as close as
    # either is to float32. Weights at scale 0.05: at 0.15 the tiny model amplifies
    # rounding so much that diffusers' own bfloat16 output is 40% off.
    from diffusers import FluxTransformer2DModel

    model = save_flux(tmp_path, scale=0.05, guidance_embeds=True)
    inputs = flux_inputs(model, 2, 3, 4, 5)
    exact = reference(model, inputs).numpy()
    half = FluxTransformer2DModel.from_pretrained(tmp_path, torch_dtype=torch_dtype, low_cpu_mem_usage=False).eval()
    theirs = reference(half, inputs, torch_dtype).numpy()
    ours = probe(inputs, path=str(tmp_path), dtype=dtype)["sample"].astype(np.float32)
    theirs_err = rel_err(theirs, exact)
    assert 0 < theirs_err < 0.05
    assert rel_err(ours, exact) <= 2 * theirs_err
    assert rel_err(ours, theirs) <= 3 * theirs_err
