"""The position blocks (nn/positions.h) and the VAE's convolutional blocks (nn/conv.h)
against the transformers and diffusers code they reproduce.

Each block runs through its probe (mpool.testing.probe) on random inputs; blocks
with weights read them from a safetensors file written here from a randomly
initialised reference module. Every comparison is float32 against float32 and
must agree to 1e-5 relative (max abs difference / max abs reference); bucket
indices must agree exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from random_weights import randomize
from safetensors.torch import save_file
from transformers import T5Config
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor
from transformers.models.t5.modeling_t5 import T5Attention

import mpool
import mpool.testing

RTOL = 1e-5


@pytest.fixture(scope="module")
def diffusers() -> Any:
    # A test requirement (scripts/setup.sh --test): the oracles never skip.
    import diffusers as module

    return module


def rel_err(ours: np.ndarray, ref: Any) -> float:
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    scale = float(np.max(np.abs(ref)))
    assert scale > 0, "the reference is all zeros: the comparison would prove nothing"
    return float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)))) / scale


def assert_close(ours: np.ndarray, ref: Any, what: str, rtol: float = RTOL) -> None:
    err = rel_err(ours, ref)
    print(f"{what}: max relative error {err:.3e}")
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.0e}"


def save(module: torch.nn.Module, path: Path, edit: dict[str, torch.Tensor] | None = None) -> str:
    # Cloned: diffusers' Downsample2D registers its conv twice (conv, Conv2d_0), and
    # safetensors refuses tensors that share memory.
    tensors = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    tensors.update(edit or {})
    save_file(tensors, str(path))
    return str(path)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- ALiBi


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 40, 64, 71])
def test_alibi_slopes_and_bias_match_bloom_on_a_padded_batch(heads: int) -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1, 1]])
    ref = build_alibi_tensor(mask, heads, torch.float32).view(mask.shape[0], heads, 1, mask.shape[1])
    key_positions = ((mask.cumsum(-1) - 1) * mask).numpy()  # BLOOM's positions of a padded batch
    out = mpool.testing.probe(
        "nn.alibi",
        {"query_positions": np.zeros((mask.shape[0], 1), np.int64), "key_positions": key_positions},
        heads=heads,
    )
    assert out["slopes"].shape == (heads,)
    assert_close(out["slopes"], ref[0, :, 0, 1], f"bloom slopes, {heads} heads")
    assert_close(out["bias"], ref, f"bloom bias, {heads} heads")


@pytest.mark.parametrize(("heads", "bias_max"), [(5, 8), (8, 8), (12, 8), (12, 4), (7, 16)])
def test_alibi_matches_mpt_including_its_alibi_bias_max(heads: int, bias_max: int) -> None:
    t = 9
    ref = build_mpt_alibi_tensor(heads, t, alibi_bias_max=bias_max)  # (heads, 1, t): slope x (key - (t - 1))
    out = mpool.testing.probe(
        "nn.alibi",
        {"query_positions": np.array([t - 1]), "key_positions": np.arange(t)},
        heads=heads,
        max_bias=bias_max,
    )
    assert_close(out["bias"], ref, f"mpt bias, {heads} heads, max {bias_max}")


def test_alibi_relative_bias_gives_bloom_attention_weights_for_every_query() -> None:
    # Ours is slope x (key - query); BLOOM's slope x key differs by a constant per
    # query row, which softmax ignores: the attention weights must agree.
    heads, n = 6, 10
    mask = torch.ones(1, n, dtype=torch.long)
    bloom = build_alibi_tensor(mask, heads, torch.float32).view(1, heads, 1, n)
    out = mpool.testing.probe(
        "nn.alibi", {"query_positions": np.arange(n), "key_positions": np.arange(n)}, heads=heads
    )
    ours = torch.from_numpy(out["bias"])
    assert ours.shape == (heads, n, n)
    scores = randn(1, heads, n, n, seed=1)
    causal = torch.full((n, n), float("-inf")).triu(1)
    ref = torch.softmax(scores + bloom + causal, -1)
    assert_close(torch.softmax(scores + ours + causal, -1).numpy(), ref, "attention weights, ours vs bloom")


def test_alibi_rejects_bad_heads_and_mismatched_positions() -> None:
    with pytest.raises(mpool.InvalidInput, match="heads must be at least 1"):
        mpool.testing.probe("nn.alibi", heads=0)
    with pytest.raises(mpool.InvalidInput, match="max_bias must be a positive number"):
        mpool.testing.probe("nn.alibi", heads=4, max_bias=0.0)
    with pytest.raises(mpool.InvalidInput, match="both be 1-D"):
        mpool.testing.probe(
            "nn.alibi", {"query_positions": np.zeros((2, 3), np.int64), "key_positions": np.arange(3)}, heads=4
        )
    with pytest.raises(mpool.InvalidInput, match="different batch sizes"):
        mpool.testing.probe(
            "nn.alibi",
            {"query_positions": np.zeros((2, 3), np.int64), "key_positions": np.zeros((3, 3), np.int64)},
            heads=4,
        )


# --- T5


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (64, 256), (8, 20), (16, 9)])
def test_t5_buckets_equal_transformers_for_every_relative_position(
    bidirectional: bool, num_buckets: int, max_distance: int
) -> None:
    rel = torch.arange(-400, 401)
    ref = T5Attention._relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    out = mpool.testing.probe(
        "nn.t5_buckets",
        {"relative_position": rel.numpy()},
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    np.testing.assert_array_equal(out["buckets"], ref.numpy())


@pytest.mark.parametrize(
    ("decoder", "n", "t", "start"),
    [(False, 13, 13, 0), (False, 5, 300, 0), (True, 7, 7, 0), (True, 1, 40, 39), (True, 4, 180, 176)],
)
def test_t5_bias_matches_compute_bias(tmp_path: Path, decoder: bool, n: int, t: int, start: int) -> None:
    config = T5Config(
        d_model=16, d_kv=4, num_heads=4, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, is_decoder=decoder,
    )
    attn = randomize(T5Attention(config, has_relative_attention_bias=True, layer_idx=0), seed=3)
    path = save(attn, tmp_path / "t5.safetensors")  # q, k, v, o and relative_attention_bias
    with torch.no_grad():
        ref = attn.compute_bias(n, t, past_seen_tokens=start)
    out = mpool.testing.probe(
        "nn.t5_bias", checkpoint=path, num_buckets=32, heads=4, max_distance=128,
        bidirectional=not decoder, n=n, t=t, start=start,
    )
    assert_close(out["bias"], ref, f"t5 bias decoder={decoder} n={n} t={t} start={start}")


def test_t5_bias_wrong_weight_shape_names_the_tensor_and_bad_buckets_are_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "t5.safetensors")
    save_file({"relative_attention_bias.weight": torch.zeros(16, 4)}, path)
    with pytest.raises(mpool.InvalidInput, match=r"relative_attention_bias\.weight.*\[16, 4\].*\[32, 4\]"):
        mpool.testing.probe(
            "nn.t5_bias", checkpoint=path, num_buckets=32, heads=4, max_distance=128, bidirectional=True, n=2, t=2
        )
    with pytest.raises(mpool.InvalidInput, match="no exact bucket per direction"):
        mpool.testing.probe(
            "nn.t5_buckets", {"relative_position": np.arange(3)}, bidirectional=True, num_buckets=2, max_distance=8
        )
    with pytest.raises(mpool.InvalidInput, match="max_distance 8 must exceed the 8 exact buckets"):
        mpool.testing.probe(
            "nn.t5_buckets", {"relative_position": np.arange(3)}, bidirectional=True, num_buckets=32, max_distance=8
        )
    with pytest.raises(mpool.InvalidInput, match="integer tensor"):
        mpool.testing.probe(
            "nn.t5_buckets", {"relative_position": np.arange(3.0)}, bidirectional=True, num_buckets=32,
            max_distance=128,
        )


# --- timesteps

TIMESTEPS = np.array([0.0, 1.0, 0.25, 17.5, 500.0, 999.0], np.float32)


@pytest.mark.parametrize(
    ("dim", "flip", "shift", "scale", "max_period"),
    [
        (320, True, 0.0, 1.0, 10000),  # SD's UNet
        (256, True, 0.0, 1000.0, 10000),  # timesteps in [0, 1] scaled (FLUX-style)
        (33, False, 1.0, 1.0, 10000),  # odd: zero-padded
        (64, False, 1.0, 1.0, 500),
        (128, True, 0.5, 2.0, 10000),
    ],
)
def test_timestep_embedding_matches_diffusers(
    diffusers: Any, dim: int, flip: bool, shift: float, scale: float, max_period: int
) -> None:
    from diffusers.models.embeddings import get_timestep_embedding

    t = TIMESTEPS / 1000.0 if scale == 1000.0 else TIMESTEPS
    ref = get_timestep_embedding(torch.from_numpy(t), dim, flip, shift, scale, max_period)
    out = mpool.testing.probe(
        "nn.timestep_embedding", {"timesteps": t}, dim=dim, flip_sin_to_cos=flip, downscale_freq_shift=shift,
        scale=scale, max_period=max_period,
    )
    assert_close(out["out"], ref, f"timestep embedding dim={dim} flip={flip} shift={shift} scale={scale}")


@pytest.mark.parametrize(("act", "out_dim"), [("silu", None), ("gelu", 48)])
def test_timestep_mlp_on_the_embedding_matches_diffusers_chain(
    diffusers: Any, tmp_path: Path, act: str, out_dim: int | None
) -> None:
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    mlp = randomize(TimestepEmbedding(32, 64, act_fn=act, out_dim=out_dim), seed=5)
    path = save(mlp, tmp_path / "temb.safetensors")
    with torch.no_grad():
        ref = mlp(Timesteps(32, flip_sin_to_cos=True, downscale_freq_shift=0)(torch.from_numpy(TIMESTEPS)))
    emb = mpool.testing.probe(
        "nn.timestep_embedding", {"timesteps": TIMESTEPS}, dim=32, flip_sin_to_cos=True, downscale_freq_shift=0.0
    )["out"]
    out = mpool.testing.probe(
        "nn.timestep_mlp", {"sample": emb}, checkpoint=path, in_channels=32, time_embed_dim=64, act=act,
        out_dim=out_dim or 0,
    )
    assert_close(out["out"], ref, f"timestep MLP act={act} out_dim={out_dim}")


def test_timestep_blocks_reject_bad_inputs_and_wrong_weights(tmp_path: Path) -> None:
    with pytest.raises(mpool.InvalidInput, match=r"timesteps must be 1-D \(n\), got \[2, 3\]"):
        mpool.testing.probe("nn.timestep_embedding", {"timesteps": np.zeros((2, 3), np.float32)}, dim=8)
    with pytest.raises(mpool.InvalidInput, match="dim 2 with downscale_freq_shift 1 gives no frequencies"):
        mpool.testing.probe("nn.timestep_embedding", {"timesteps": TIMESTEPS}, dim=2)
    path = str(tmp_path / "temb.safetensors")
    save_file(
        {"linear_1.weight": torch.zeros(64, 16), "linear_1.bias": torch.zeros(64),
         "linear_2.weight": torch.zeros(64, 64), "linear_2.bias": torch.zeros(64)},
        path,
    )
    with pytest.raises(mpool.InvalidInput, match=r"linear_1\.weight.*\[64, 16\].*\[64, 32\]"):
        mpool.testing.probe(
            "nn.timestep_mlp", {"sample": np.zeros((1, 32), np.float32)}, checkpoint=path, in_channels=32,
            time_embed_dim=64,
        )


# --- 2-D sin-cos


@pytest.mark.parametrize(
    ("dim", "grid", "base_size", "interp"), [(64, (8, 8), 8, 1.0), (32, (4, 6), 16, 1.0), (48, (5, 3), 4, 2.0)]
)
def test_sincos_2d_matches_diffusers(
    diffusers: Any, dim: int, grid: tuple[int, int], base_size: int, interp: float
) -> None:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ref = get_2d_sincos_pos_embed(dim, grid, base_size=base_size, interpolation_scale=interp).float()
    out = mpool.testing.probe(
        "nn.sincos_2d", dim=dim, grid_h=grid[0], grid_w=grid[1], base_size=base_size, interpolation_scale=interp
    )
    assert_close(out["out"], ref, f"sincos 2d dim={dim} grid={grid}")


@pytest.mark.parametrize(("h", "w"), [(12, 12), (8, 8), (5, 9), (1, 12)])
def test_sd3_cropped_patch_positions_match_diffusers_patch_embed(diffusers: Any, h: int, w: int) -> None:
    from diffusers.models.embeddings import PatchEmbed

    patch, max_size, sample = 2, 12, 16  # SD3's layout, scaled down: base size = sample / patch
    embed = PatchEmbed(
        height=sample, width=sample, patch_size=patch, in_channels=4, embed_dim=64, interpolation_scale=1.5,
        pos_embed_max_size=max_size,
    )
    ref = embed.cropped_pos_embed(h * patch, w * patch)[0]
    out = mpool.testing.probe(
        "nn.sincos_2d", dim=64, max_size=max_size, base_size=sample // patch, interpolation_scale=1.5, h=h, w=w
    )
    assert_close(out["out"], ref, f"SD3 crop {h}x{w}")


def test_sincos_2d_rejects_bad_dim_and_oversized_crop() -> None:
    with pytest.raises(mpool.InvalidInput, match="dim must be a positive multiple of 4, got 30"):
        mpool.testing.probe("nn.sincos_2d", dim=30, grid_h=4, grid_w=4)
    with pytest.raises(mpool.InvalidInput, match="13 x 4 patches does not fit pos_embed_max_size 12"):
        mpool.testing.probe("nn.sincos_2d", dim=32, max_size=12, base_size=8, h=13, w=4)


# --- convolutional blocks


@pytest.mark.parametrize(("stride", "padding", "bias"), [(1, 1, True), (2, 1, False), (2, 0, True)])
def test_conv2d_matches_torch(tmp_path: Path, stride: int, padding: int, bias: bool) -> None:
    conv = torch.nn.Module()
    conv.conv = torch.nn.Conv2d(6, 10, 3, stride=stride, padding=padding, bias=bias)
    randomize(conv, seed=7)
    path = save(conv, tmp_path / "conv.safetensors")
    x = randn(2, 6, 9, 7, seed=8)
    with torch.no_grad():
        ref = conv.conv(x)
    out = mpool.testing.probe(
        "nn.conv2d", {"x": x.numpy()}, checkpoint=path, in_channels=6, out_channels=10, kernel=3, stride=stride,
        padding=padding, bias=bias,
    )
    assert_close(out["out"], ref, f"conv2d stride={stride} padding={padding} bias={bias}")


RESNET_CASES = {
    "vae_same_channels_groups32": dict(in_channels=64, out_channels=64, groups=32, temb_channels=None),
    "vae_widening_shortcut_groups32": dict(in_channels=64, out_channels=96, groups=32, temb_channels=None),
    "unet_temb_groups4": dict(in_channels=8, out_channels=16, groups=4, temb_channels=12),
    "unet_temb_same_channels_groups4": dict(in_channels=16, out_channels=16, groups=4, temb_channels=12),
    "scale_shift_output_scale": dict(
        in_channels=16, out_channels=8, groups=4, temb_channels=12, time_embedding_norm="scale_shift",
        output_scale_factor=2.0,
    ),
    "skip_time_act_groups_out": dict(
        in_channels=8, out_channels=8, groups=4, groups_out=2, temb_channels=12, skip_time_act=True, eps=1e-5
    ),
}


@pytest.mark.parametrize("case", list(RESNET_CASES))
def test_resnet_block_matches_diffusers(diffusers: Any, tmp_path: Path, case: str) -> None:
    from diffusers.models.resnet import ResnetBlock2D

    kw = RESNET_CASES[case]
    block = randomize(ResnetBlock2D(**kw), seed=11)
    path = save(block, tmp_path / "resnet.safetensors")
    x = randn(2, kw["in_channels"], 8, 6, seed=12)
    temb = randn(2, kw["temb_channels"], seed=13) if kw["temb_channels"] else None
    with torch.no_grad():
        ref = block(x, temb)
    options = {k: v for k, v in kw.items() if v is not None}
    tensors = {"x": x.numpy()} | ({"temb": temb.numpy()} if temb is not None else {})
    out = mpool.testing.probe("nn.resnet_block", tensors, checkpoint=path, **options)
    assert_close(out["out"], ref, f"resnet block {case}")


def test_resnet_block_wrong_weight_shape_names_the_tensor(diffusers: Any, tmp_path: Path) -> None:
    from diffusers.models.resnet import ResnetBlock2D

    block = ResnetBlock2D(in_channels=8, out_channels=16, groups=4, temb_channels=None)
    x = {"x": np.zeros((1, 8, 4, 4), np.float32)}
    path = save(block, tmp_path / "bad.safetensors", {"conv_shortcut.weight": torch.zeros(16, 8, 3, 3)})
    with pytest.raises(mpool.InvalidInput, match=r"'conv_shortcut\.weight' has shape \[16, 8, 3, 3\].*\[16, 8, 1, 1\]"):
        mpool.testing.probe("nn.resnet_block", x, checkpoint=path, in_channels=8, out_channels=16, groups=4)
    # The scope is part of the name.
    nested = tmp_path / "nested.safetensors"
    tensors = {f"decoder.mid_block.resnets.0.{k}": v for k, v in block.state_dict().items()}
    tensors["decoder.mid_block.resnets.0.conv1.weight"] = torch.zeros(16, 8, 1, 1)
    save_file(tensors, str(nested))
    with pytest.raises(mpool.InvalidInput, match=r"'decoder\.mid_block\.resnets\.0\.conv1\.weight'"):
        mpool.testing.probe(
            "nn.resnet_block", x, checkpoint=str(nested), prefix="decoder.mid_block.resnets.0", in_channels=8,
            out_channels=16, groups=4,
        )


def test_resnet_block_refuses_bad_groups_and_mismatched_inputs(diffusers: Any, tmp_path: Path) -> None:
    from diffusers.models.resnet import ResnetBlock2D

    block = ResnetBlock2D(in_channels=8, out_channels=8, groups=4, temb_channels=12)
    path = save(block, tmp_path / "resnet.safetensors")
    x = np.zeros((2, 8, 4, 4), np.float32)
    temb = np.zeros((2, 12), np.float32)
    with pytest.raises(mpool.InvalidInput, match="norm1: 8 channels do not split into 3 groups"):
        mpool.testing.probe("nn.resnet_block", {"x": x}, checkpoint=path, in_channels=8, groups=3, temb_channels=12)
    with pytest.raises(mpool.InvalidInput, match="norm2: 8 channels do not split into 5 groups"):
        mpool.testing.probe(
            "nn.resnet_block", {"x": x}, checkpoint=path, in_channels=8, groups=4, groups_out=5, temb_channels=12
        )
    with pytest.raises(mpool.InvalidInput, match=r"input must be \(b, 8, h, w\), got \[2, 6, 4, 4\]"):
        mpool.testing.probe(
            "nn.resnet_block", {"x": x[:, :6], "temb": temb}, checkpoint=path, in_channels=8, groups=4,
            temb_channels=12,
        )
    with pytest.raises(mpool.InvalidInput, match=r"temb must be \(2, 12\), got none"):
        mpool.testing.probe("nn.resnet_block", {"x": x}, checkpoint=path, in_channels=8, groups=4, temb_channels=12)
    # A VAE block (no projection) given a timestep embedding.
    vae = save(ResnetBlock2D(in_channels=8, groups=4, temb_channels=None), tmp_path / "vae.safetensors")
    with pytest.raises(mpool.InvalidInput, match="has no time_emb_proj, but a temb was given"):
        mpool.testing.probe("nn.resnet_block", {"x": x, "temb": temb}, checkpoint=vae, in_channels=8, groups=4)


@pytest.mark.parametrize(
    ("use_conv", "out_channels", "size"),
    [(True, None, None), (True, 12, None), (True, None, (9, 11)), (False, None, None)],
)
def test_upsample_matches_diffusers(
    diffusers: Any, tmp_path: Path, use_conv: bool, out_channels: int | None, size: tuple[int, int] | None
) -> None:
    from diffusers.models.upsampling import Upsample2D

    up = randomize(Upsample2D(8, use_conv=use_conv, out_channels=out_channels), seed=17)
    path = save(up, tmp_path / "up.safetensors")
    x = randn(2, 8, 5, 6, seed=18)
    with torch.no_grad():
        ref = up(x, output_size=size)
    options: dict[str, Any] = {"use_conv": use_conv, "out_channels": out_channels or 0}
    if size is not None:
        options["size"] = list(size)
    out = mpool.testing.probe("nn.upsample", {"x": x.numpy()}, checkpoint=path, channels=8, **options)
    assert_close(out["out"], ref, f"upsample use_conv={use_conv} out={out_channels} size={size}")


@pytest.mark.parametrize(
    ("use_conv", "padding", "out_channels", "hw"),
    [
        (True, 0, None, (8, 8)),  # the VAE encoder: pad right and bottom, stride 2
        (True, 0, None, (7, 9)),  # odd sizes: the asymmetric padding decides the last row and column
        (True, 1, 12, (7, 9)),  # a UNet's down block
        (False, 1, None, (8, 6)),  # average pooling
    ],
)
def test_downsample_matches_diffusers(
    diffusers: Any, tmp_path: Path, use_conv: bool, padding: int, out_channels: int | None, hw: tuple[int, int]
) -> None:
    from diffusers.models.downsampling import Downsample2D

    down = randomize(Downsample2D(8, use_conv=use_conv, padding=padding, out_channels=out_channels), seed=19)
    path = save(down, tmp_path / "down.safetensors")
    x = randn(2, 8, *hw, seed=20)
    with torch.no_grad():
        ref = down(x)
    out = mpool.testing.probe(
        "nn.downsample", {"x": x.numpy()}, checkpoint=path, channels=8, use_conv=use_conv, padding=padding,
        out_channels=out_channels or 0,
    )
    assert_close(out["out"], ref, f"downsample use_conv={use_conv} padding={padding} hw={hw}")


def test_up_and_downsample_refuse_wrong_channels_and_weights(diffusers: Any, tmp_path: Path) -> None:
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    up = save(Upsample2D(8, use_conv=True), tmp_path / "up.safetensors")
    down = save(Downsample2D(8, use_conv=True, padding=0), tmp_path / "down.safetensors")
    x = {"x": np.zeros((1, 4, 4, 4), np.float32)}
    with pytest.raises(mpool.InvalidInput, match=r"conv: input must be \(b, 8, h, w\), got \[1, 4, 4, 4\]"):
        mpool.testing.probe("nn.upsample", x, checkpoint=up, channels=8)
    with pytest.raises(mpool.InvalidInput, match=r"conv: input must be \(b, 8, h, w\), got \[1, 4, 4, 4\]"):
        mpool.testing.probe("nn.downsample", x, checkpoint=down, channels=8, padding=0)
    with pytest.raises(mpool.InvalidInput, match=r"'conv\.weight' has shape \[8, 8, 3, 3\].*\[16, 8, 3, 3\]"):
        mpool.testing.probe("nn.downsample", x, checkpoint=down, channels=8, out_channels=16, padding=0)
    with pytest.raises(mpool.InvalidInput, match="keeps its 8 channels"):
        mpool.testing.probe("nn.downsample", x, checkpoint=down, channels=8, use_conv=False, out_channels=16)


# --- the VAE mid-block attention


def mid_block(channels: int, head_dim: int, groups: int, scale: float) -> Any:
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D

    return UNetMidBlock2D(
        in_channels=channels, temb_channels=None, resnet_groups=groups, attention_head_dim=head_dim,
        output_scale_factor=scale, resnet_eps=1e-6, add_attention=True,
    )


@pytest.mark.parametrize(
    ("channels", "head_dim", "groups", "scale"),
    [(64, 64, 32, 1.0), (32, 32, 4, 1.0), (32, 8, 4, 2.0)],  # the VAE's single head; several heads, rescaled
)
def test_vae_attention_matches_diffusers_mid_block_attention(
    diffusers: Any, tmp_path: Path, channels: int, head_dim: int, groups: int, scale: float
) -> None:
    attn = randomize(mid_block(channels, head_dim, groups, scale), seed=23).attentions[0]
    assert type(attn.processor).__name__ == "AttnProcessor2_0"
    path = save(attn, tmp_path / "attn.safetensors")
    x = randn(2, channels, 6, 5, seed=24)
    with torch.no_grad():
        ref = attn(x)
    out = mpool.testing.probe(
        "nn.vae_attention", {"x": x.numpy()}, checkpoint=path, channels=channels, groups=groups,
        heads=channels // head_dim, rescale_output_factor=scale,
    )
    assert_close(out["out"], ref, f"vae attention c={channels} heads={channels // head_dim} scale={scale}")


def test_vae_mid_block_composes_from_resnet_attention_resnet(diffusers: Any, tmp_path: Path) -> None:
    # AutoencoderKL's mid-block: resnets.0, attentions.0, resnets.1, read by prefix from one checkpoint.
    mid = randomize(mid_block(32, 32, 4, 1.0), seed=29)
    path = save(mid, tmp_path / "mid.safetensors")
    x = randn(1, 32, 6, 6, seed=30)
    with torch.no_grad():
        ref = mid(x)
    h = mpool.testing.probe(
        "nn.resnet_block", {"x": x.numpy()}, checkpoint=path, prefix="resnets.0", in_channels=32, groups=4
    )["out"]
    h = mpool.testing.probe(
        "nn.vae_attention", {"x": h}, checkpoint=path, prefix="attentions.0", channels=32, groups=4
    )["out"]
    h = mpool.testing.probe("nn.resnet_block", {"x": h}, checkpoint=path, prefix="resnets.1", in_channels=32, groups=4)[
        "out"
    ]
    assert_close(h, ref, "VAE mid-block")


def test_vae_attention_refuses_bad_groups_heads_and_weights(diffusers: Any, tmp_path: Path) -> None:
    attn = mid_block(32, 32, 4, 1.0).attentions[0]
    path = save(attn, tmp_path / "attn.safetensors")
    x = {"x": np.zeros((1, 32, 2, 2), np.float32)}
    with pytest.raises(mpool.InvalidInput, match="group_norm: 32 channels do not split into 5 groups"):
        mpool.testing.probe("nn.vae_attention", x, checkpoint=path, channels=32, groups=5)
    with pytest.raises(mpool.InvalidInput, match="3 heads do not divide 32 channels"):
        mpool.testing.probe("nn.vae_attention", x, checkpoint=path, channels=32, groups=4, heads=3)
    bad = save(attn, tmp_path / "bad.safetensors", {"to_k.weight": torch.zeros(32, 16)})
    with pytest.raises(mpool.InvalidInput, match=r"'to_k\.weight' has shape \[32, 16\].*\[32, 32\]"):
        mpool.testing.probe("nn.vae_attention", x, checkpoint=bad, channels=32, groups=4)
    with pytest.raises(mpool.InvalidInput, match=r"input must be \(b, 32, h, w\), got \[1, 32, 4\]"):
        mpool.testing.probe("nn.vae_attention", {"x": np.zeros((1, 32, 4), np.float32)}, checkpoint=path,
                            channels=32, groups=4)
