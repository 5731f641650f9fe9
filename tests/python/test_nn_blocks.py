"""The shared neural layer (mpool_nn), block by block, against the code it reproduces.

Each test runs one native block through a probe (mpool.testing.probe) and compares
it with its transformers / torch counterpart at 1e-5 relative in float32. Where
the counterpart is not a public function (interleaved rotation, masked attention
with GQA), the reference is a few lines of plain torch written from the published
architecture, and the test says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file
from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

import mpool
import mpool.testing

REL = 1e-5


def rel_err(ours: np.ndarray, ref: Any) -> float:
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-30)
    return float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max()) / scale


def config_json(config: transformers.PretrainedConfig) -> dict[str, Any]:
    return json.loads(config.to_json_string())


# --- RoPE: every rope type against transformers' rope init functions -----------------

ROPE_CASES: dict[str, tuple[str, dict[str, Any], int]] = {
    # name -> (config class, config kwargs, seq_len)
    "default": ("LlamaConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), 0),
    "default_partial": (
        "PhiConfig",
        dict(partial_rotary_factor=0.5, rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
        0,
    ),
    "linear": ("LlamaConfig", dict(rope_parameters={"rope_type": "linear", "factor": 3.0, "rope_theta": 10000.0}), 0),
    "dynamic_within": (
        "LlamaConfig",
        dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
        100,
    ),
    "dynamic_beyond": (
        "LlamaConfig",
        dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
        200,
    ),
    "llama3": (
        "LlamaConfig",
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
                "rope_theta": 500000.0,
            }
        ),
        0,
    ),
    "yarn": (
        "LlamaConfig",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
                "rope_theta": 10000.0,
            }
        ),
        0,
    ),
    "yarn_betas_untruncated": (
        "LlamaConfig",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "factor": 8.0,
                "original_max_position_embeddings": 16,
                "beta_fast": 8.0,
                "beta_slow": 0.5,
                "truncate": False,
                "rope_theta": 50000.0,
            }
        ),
        0,
    ),
    "yarn_mscale": (
        "LlamaConfig",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "factor": 40.0,
                "original_max_position_embeddings": 4,
                "mscale": 1.0,
                "mscale_all_dim": 0.8,
                "rope_theta": 10000.0,
            }
        ),
        0,
    ),
    "yarn_explicit_attention_factor": (
        "LlamaConfig",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "factor": 2.0,
                "attention_factor": 0.75,
                "original_max_position_embeddings": 64,
                "rope_theta": 10000.0,
            }
        ),
        0,
    ),
    "longrope_short": (
        "Phi3Config",
        dict(
            original_max_position_embeddings=32,
            rope_parameters={
                "rope_type": "longrope",
                "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5],
                "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 12.0, 16.0],
                "rope_theta": 10000.0,
            },
        ),
        20,
    ),
    "longrope_long": (
        "Phi3Config",
        dict(
            original_max_position_embeddings=32,
            rope_parameters={
                "rope_type": "longrope",
                "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5],
                "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 12.0, 16.0],
                "rope_theta": 10000.0,
            },
        ),
        100,
    ),
}


@pytest.mark.parametrize("case", sorted(ROPE_CASES))
def test_rope_inv_freq_and_attention_factor_match_transformers_init_functions(case: str) -> None:
    cls, kwargs, seq_len = ROPE_CASES[case]
    config = getattr(transformers, cls)(hidden_size=64, num_attention_heads=4, max_position_embeddings=128, **kwargs)
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        # The default init is each model's own static method; Phi's honours partial_rotary_factor.
        from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

        rotary = PhiRotaryEmbedding if cls == "PhiConfig" else LlamaRotaryEmbedding
        ref_inv, ref_factor = rotary.compute_default_rope_parameters(config)
    else:
        ref_inv, ref_factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len or None)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    out = mpool.testing.probe(
        "nn.rope_inv_freq",
        config=config_json(config),
        head_dim=head_dim,
        max_position_embeddings=config.max_position_embeddings,
        seq_len=seq_len,
    )
    assert rel_err(out["inv_freq"], ref_inv) <= REL
    assert float(out["attention_factor"]) == pytest.approx(ref_factor, rel=1e-12)


def test_rope_rotate_half_matches_transformers_apply_rotary_pos_emb() -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 16)
    inv = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    positions = torch.arange(3, 12).float()
    freqs = torch.outer(positions, inv)
    emb = torch.cat([freqs, freqs], -1)
    ref, _ = apply_rotary_pos_emb(q, q, emb.cos()[None], emb.sin()[None])
    out = mpool.testing.probe(
        "nn.rope_apply", {"x": q.numpy(), "positions": positions.numpy(), "inv_freq": inv.numpy()}, layout="rotate_half"
    )
    assert rel_err(out["out"], ref) <= REL


def test_rope_partial_rotation_leaves_the_rest_of_each_head_unchanged() -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 2, 5, 16)
    inv = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))  # rotates 8 of 16 dimensions
    positions = torch.arange(5).float()
    freqs = torch.outer(positions, inv)
    emb = torch.cat([freqs, freqs], -1)
    rot, _ = apply_rotary_pos_emb(x[..., :8], x[..., :8], emb.cos()[None], emb.sin()[None])
    ref = torch.cat([rot, x[..., 8:]], -1)
    out = mpool.testing.probe("nn.rope_apply", {"x": x.numpy(), "positions": positions.numpy(), "inv_freq": inv.numpy()})
    assert rel_err(out["out"], ref) <= REL


def test_rope_interleaved_matches_a_plain_torch_rotate_every_two_reference() -> None:
    # Reference written from GPT-J's published rotation: pairs (2i, 2i+1) rotate together.
    torch.manual_seed(2)
    x = torch.randn(1, 3, 7, 12)
    inv = 1.0 / (10000 ** (torch.arange(0, 12, 2).float() / 12))
    positions = torch.arange(7).float()
    angle = torch.outer(positions, inv)  # (n, 6)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    ref = torch.stack([x1 * angle.cos() - x2 * angle.sin(), x1 * angle.sin() + x2 * angle.cos()], -1).flatten(-2)
    out = mpool.testing.probe(
        "nn.rope_apply", {"x": x.numpy(), "positions": positions.numpy(), "inv_freq": inv.numpy()}, layout="interleaved"
    )
    assert rel_err(out["out"], ref) <= REL


@pytest.mark.parametrize("layout", ["rotate_half", "interleaved"])
@pytest.mark.parametrize("shape,rotated", [((2, 3, 5, 64), 64), ((1, 12, 1, 64), 64), ((1, 2, 7, 80), 32), ((3, 1, 1, 6), 6)])
def test_rope_in_float32_has_the_bits_of_atens_products_and_sum(layout, shape, rotated) -> None:
    # The CPU's one-pass float32 rotation against the operations it replaces, run
    # by torch itself: rot * cos + rotated * sin, each product and the sum rounded
    # (no fused multiply-add), the unrotated tail copied. Bit for bit.
    torch.manual_seed(4)
    x = torch.randn(*shape) * 3
    inv = 1.0 / (10000 ** (torch.arange(0, rotated, 2).float() / rotated))
    positions = torch.arange(shape[2]).float() + 5
    out = mpool.testing.probe(
        "nn.rope_apply", {"x": x.numpy(), "positions": positions.numpy(), "inv_freq": inv.numpy()}, layout=layout
    )
    cos, sin = torch.from_numpy(out["cos"]), torch.from_numpy(out["sin"])
    rot = x[..., :rotated]
    if layout == "rotate_half":
        half = rotated // 2
        turned = torch.cat([-rot[..., half:], rot[..., :half]], -1)
    else:
        pairs = rot.unflatten(-1, (rotated // 2, 2))
        turned = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
    ref = torch.cat([rot * cos + turned * sin, x[..., rotated:]], -1)
    assert np.array_equal(out["out"].view(np.uint32), ref.numpy().view(np.uint32))


def test_multi_axis_rope_matches_diffusers_flux_position_embedding() -> None:
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    torch.manual_seed(3)
    axes = [4, 6, 6]
    ids = torch.cat([torch.zeros(5, 1), torch.randint(0, 9, (5, 2)).float()], 1)
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=axes)(ids)
    x = torch.randn(1, 2, 5, sum(axes))
    ref = apply_rotary_emb(x, (cos, sin))
    out = mpool.testing.probe(
        "nn.multi_axis_rope", {"positions": ids.numpy(), "x": x.numpy()}, axes_dims=axes, theta=10000.0
    )
    assert rel_err(out["cos"], cos) <= REL and rel_err(out["sin"], sin) <= REL
    assert rel_err(out["out"], ref) <= REL


def test_multi_axis_rope_rounds_integer_ids_to_float32_as_diffusers_flux_does() -> None:
    # Ids beyond 2^24 are not float32 numbers: diffusers rounds them (ids.float())
    # before its float64 angles, so 2^24 + 1 must rotate as 2^24 does.
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    axes = [4, 6, 6]
    ids = torch.tensor([[0, 2**24 + 1, 3], [1, 2**25 + 3, 7], [2**24 + 1, 5, 2**26 + 5]], dtype=torch.int64)
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=axes)(ids)
    out = mpool.testing.probe("nn.multi_axis_rope", {"positions": ids.numpy()}, axes_dims=axes, theta=10000.0)
    assert rel_err(out["cos"], cos) <= REL and rel_err(out["sin"], sin) <= REL


def test_rope_of_a_float16_query_is_computed_in_float32_and_returned_in_float16() -> None:
    # diffusers rotates FLUX's half-precision q and k against float32 tables in
    # float32, then casts back.
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    torch.manual_seed(4)
    axes = [4, 6, 6]
    ids = torch.cat([torch.zeros(5, 1), torch.randint(0, 9, (5, 2)).float()], 1)
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=axes)(ids)
    x = torch.randn(1, 2, 5, sum(axes)).half()
    ref = apply_rotary_emb(x, (cos, sin))
    out = mpool.testing.probe(
        "nn.multi_axis_rope", {"positions": ids.numpy(), "x": x.float().numpy()}, axes_dims=axes, theta=10000.0,
        x_dtype="float16",
    )["out"]
    assert out.dtype == np.float16
    assert np.array_equal(out, ref.numpy())


def test_unsupported_rope_type_names_the_type_and_the_supported_ones() -> None:
    config = {"model_type": "llama", "rope_parameters": {"rope_type": "proportional", "rope_theta": 1e4}}
    with pytest.raises(mpool.InvalidInput, match="rope type 'proportional' is not supported .*yarn"):
        mpool.testing.probe("nn.rope_inv_freq", config=config, head_dim=16, max_position_embeddings=64)


# --- norms and activations -------------------------------------------------------


def test_rms_norm_matches_transformers_in_float32() -> None:
    torch.manual_seed(4)
    norm = LlamaRMSNorm(24, eps=1e-6)
    norm.weight.data = torch.randn(24)
    x = torch.randn(3, 5, 24) * 4
    out = mpool.testing.probe("nn.rms_norm", {"x": x.numpy(), "weight": norm.weight.detach().numpy()}, eps=1e-6)
    assert rel_err(out["out"], norm(x)) <= REL


def test_unit_offset_rms_norm_matches_gemma() -> None:
    torch.manual_seed(5)
    norm = GemmaRMSNorm(24, eps=1e-6)
    norm.weight.data = torch.randn(24) * 0.1
    x = torch.randn(2, 7, 24)
    out = mpool.testing.probe(
        "nn.rms_norm", {"x": x.numpy(), "weight": norm.weight.detach().numpy()}, eps=1e-6, unit_offset=True
    )
    assert rel_err(out["out"], norm(x)) <= REL


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("unit_offset", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 768), (3, 5, 24), (2, 300, 512)])
def test_rms_norm_has_the_bits_of_atens_operations(dtype, unit_offset, shape) -> None:
    # The CPU's one-pass tail against the operations it replaces, run by torch:
    # x * rsqrt(mean(x^2) + eps), then the weight (Llama: cast back, then scale;
    # Gemma: scale by 1 + weight in float32, then cast back). Bit for bit, from a
    # decode step's one row to prefill's many (which run on several threads).
    torch.manual_seed(7)
    t = getattr(torch, dtype)
    x = (torch.randn(*shape) * 3).to(t)
    w = (torch.randn(shape[-1]) * (0.1 if unit_offset else 1)).to(t)
    out = mpool.testing.probe(
        "nn.rms_norm", {"x": x.float().numpy(), "weight": w.float().numpy()}, eps=1e-6, unit_offset=unit_offset,
        dtype=dtype,
    )
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
    ref = (normed * (w.float() + 1)).to(t) if unit_offset else w * normed.to(t)
    assert np.array_equal(out["out"].view(np.uint32), ref.float().numpy().view(np.uint32))


def test_layer_norm_with_and_without_bias_matches_torch() -> None:
    torch.manual_seed(6)
    x = torch.randn(4, 10)
    w, b = torch.randn(10), torch.randn(10)
    out = mpool.testing.probe("nn.layer_norm", {"x": x.numpy(), "weight": w.numpy(), "bias": b.numpy()}, eps=1e-5)
    assert rel_err(out["out"], torch.nn.functional.layer_norm(x, (10,), w, b, 1e-5)) <= REL
    out = mpool.testing.probe("nn.layer_norm", {"x": x.numpy(), "weight": w.numpy()}, eps=1e-5)
    assert rel_err(out["out"], torch.nn.functional.layer_norm(x, (10,), w, None, 1e-5)) <= REL


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_group_norm_matches_torch(tmp_path: Path, groups: int) -> None:
    torch.manual_seed(7)
    norm = torch.nn.GroupNorm(groups, 64, eps=1e-6)
    norm.weight.data, norm.bias.data = torch.randn(64), torch.randn(64)
    save_file({k: v.contiguous() for k, v in {"norm.weight": norm.weight, "norm.bias": norm.bias}.items()},
              tmp_path / "w.safetensors")
    x = torch.randn(2, 64, 5, 3)
    out = mpool.testing.probe(
        "nn.group_norm", {"x": x.numpy()}, checkpoint=str(tmp_path / "w.safetensors"), name="norm", groups=groups,
        eps=1e-6,
    )
    assert rel_err(out["out"], norm(x)) <= REL


def test_group_norm_refuses_channels_that_do_not_split_into_groups(tmp_path: Path) -> None:
    save_file({"norm.weight": torch.ones(10), "norm.bias": torch.zeros(10)}, tmp_path / "w.safetensors")
    with pytest.raises(mpool.InvalidInput, match="norm: 10 channels do not split into 4 groups"):
        mpool.testing.probe(
            "nn.group_norm", {"x": np.zeros((1, 10, 2, 2), np.float32)}, checkpoint=str(tmp_path / "w.safetensors"),
            name="norm", groups=4, eps=1e-6,
        )


@pytest.mark.parametrize(
    "name", ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish"]
)
def test_activation_matches_transformers_act2fn(name: str) -> None:
    x = torch.linspace(-6, 6, 301)
    out = mpool.testing.probe("nn.activation", {"x": x.numpy()}, name=name)
    assert rel_err(out["out"], ACT2FN[name](x)) <= REL


def test_unknown_activation_names_itself_and_the_supported_ones() -> None:
    with pytest.raises(mpool.InvalidInput, match="activation 'mish' is not supported \\(gelu"):
        mpool.testing.probe("nn.activation", {"x": np.zeros(3, np.float32)}, name="mish")


# --- MLPs ------------------------------------------------------------------------


def save_module(module: torch.nn.Module, path: Path, prefix: str = "") -> str:
    save_file({prefix + k: v.detach().contiguous() for k, v in module.state_dict().items()}, path)
    return str(path)


def test_gated_mlp_matches_transformers_llama_mlp(tmp_path: Path) -> None:
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(8)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=80, mlp_bias=True, hidden_act="silu")
    mlp = LlamaMLP(config).eval()
    x = torch.randn(2, 6, 32)
    out = mpool.testing.probe(
        "nn.mlp", {"x": x.numpy()}, checkpoint=save_module(mlp, tmp_path / "m.safetensors", "mlp."), prefix="mlp",
        hidden=32, inner=80, act="silu", gated=True, bias=True,
    )
    assert rel_err(out["out"], mlp(x)) <= REL


def test_plain_mlp_matches_transformers_clip_mlp(tmp_path: Path) -> None:
    from transformers.models.clip.modeling_clip import CLIPMLP

    torch.manual_seed(9)
    config = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, hidden_act="quick_gelu"
    )
    mlp = CLIPMLP(config).eval()
    x = torch.randn(3, 32)
    out = mpool.testing.probe(
        "nn.mlp", {"x": x.numpy()}, checkpoint=save_module(mlp, tmp_path / "m.safetensors"), hidden=32, inner=64,
        act="quick_gelu", gated=False, bias=True, up="fc1", down="fc2",
    )
    assert rel_err(out["out"], mlp(x)) <= REL


def test_mlp_down_projection_kept_in_float32_matches_t5s_float16_feed_forward(tmp_path: Path) -> None:
    # transformers' T5DenseGatedActDense as from_pretrained loads it in float16:
    # wi_0 and wi_1 in float16, wo kept in float32 and its input cast up.
    from transformers.models.t5.modeling_t5 import T5DenseGatedActDense

    torch.manual_seed(15)
    config = transformers.T5Config(d_model=32, d_ff=48, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    ff = T5DenseGatedActDense(config).eval()
    checkpoint = save_module(ff, tmp_path / "m.safetensors")  # float32, rounded by the native view as by .half()
    ff.wi_0.half()
    ff.wi_1.half()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = ff(x.half())
    assert expected.dtype == torch.float32
    out = mpool.testing.probe(
        "nn.mlp", {"x": x.numpy()}, checkpoint=checkpoint, hidden=32, inner=48, act="gelu_new", gated=True,
        bias=False, gate="wi_0", up="wi_1", down="wo", weights_dtype="float16", down_dtype="float32",
    )["out"]
    assert out.dtype == np.float32
    assert rel_err(out, expected) <= 2e-3  # float16 rounding of the gated product


def test_mlp_weight_of_the_wrong_shape_names_the_tensor(tmp_path: Path) -> None:
    save_file({"up_proj.weight": torch.zeros(8, 4), "down_proj.weight": torch.zeros(4, 9)}, tmp_path / "m.safetensors")
    with pytest.raises(mpool.InvalidInput, match="tensor 'down_proj.weight' has shape \\[4, 9\\]"):
        mpool.testing.probe(
            "nn.mlp", {"x": np.zeros((1, 4), np.float32)}, checkpoint=str(tmp_path / "m.safetensors"), hidden=4,
            inner=8, act="gelu", gated=False, bias=False,
        )


# --- attention -------------------------------------------------------------------


class RefAttention(torch.nn.Module):
    """Plain-torch multi-head attention written from the published architecture:
    projections, optional per-head RMSNorm on q and k, grouped-query heads
    (each key/value head serves heads / kv_heads query heads), softmax(q k^T /
    sqrt(d) + mask) v (or a given scale in place of 1/sqrt(d)), output projection."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, kv_input: int | None = None,
                 bias: bool = False, qk_norm: bool = False, scale: float | None = None) -> None:
        super().__init__()
        self.scale = head_dim**-0.5 if scale is None else scale
        kv_in = kv_input or hidden
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = torch.nn.Linear(hidden, heads * head_dim, bias=bias)
        self.k_proj = torch.nn.Linear(kv_in, kv_heads * head_dim, bias=bias)
        self.v_proj = torch.nn.Linear(kv_in, kv_heads * head_dim, bias=bias)
        self.o_proj = torch.nn.Linear(heads * head_dim, hidden, bias=bias)
        self.q_norm = LlamaRMSNorm(head_dim, 1e-6) if qk_norm else None
        self.k_norm = LlamaRMSNorm(head_dim, 1e-6) if qk_norm else None
        if qk_norm:
            self.q_norm.weight.data = torch.randn(head_dim)
            self.k_norm.weight.data = torch.randn(head_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                additive: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        kv = x if context is None else context
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim)
        k = self.k_proj(kv).view(b, kv.shape[1], self.kv_heads, self.head_dim)
        v = self.v_proj(kv).view(b, kv.shape[1], self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = q @ k.transpose(-1, -2) * self.scale
        if additive is not None:
            scores = scores + additive
        out = scores.softmax(-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


def additive_from(keep: torch.Tensor) -> torch.Tensor:
    return torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))


def test_causal_gqa_attention_with_qk_norm_and_padding_matches_the_reference(tmp_path: Path) -> None:
    torch.manual_seed(10)
    ref = RefAttention(32, heads=4, kv_heads=2, head_dim=8, bias=True, qk_norm=True).eval()
    x = torch.randn(2, 6, 32)
    key_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    n = 6
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    keep = causal[None, None] & key_mask.bool()[:, None, None, :]
    expected = ref(x, additive=additive_from(keep))
    out = mpool.testing.probe(
        "nn.attention", {"x": x.numpy(), "key_mask": key_mask.numpy()},
        checkpoint=save_module(ref, tmp_path / "a.safetensors"), hidden=32, heads=4, kv_heads=2, head_dim=8,
        qkv_bias=True, o_bias=True, qk_norm_eps=1e-6, causal=True,
    )["out"]
    valid = key_mask.bool().numpy()  # padded queries are not compared
    assert rel_err(out[valid], expected.detach().numpy()[valid]) <= REL


def test_sliding_window_attention_sees_only_the_window(tmp_path: Path) -> None:
    torch.manual_seed(11)
    ref = RefAttention(16, heads=2, kv_heads=2, head_dim=8).eval()
    x = torch.randn(1, 9, 16)
    q = torch.arange(9)[:, None]
    k = torch.arange(9)[None, :]
    keep = (k <= q) & (k > q - 3)
    out = mpool.testing.probe(
        "nn.attention", {"x": x.numpy()}, checkpoint=save_module(ref, tmp_path / "a.safetensors"), hidden=16, heads=2,
        head_dim=8, causal=True, window=3,
    )["out"]
    assert rel_err(out, ref(x, additive=additive_from(keep)[None, None])) <= REL


def test_cross_attention_takes_keys_and_values_from_the_context(tmp_path: Path) -> None:
    torch.manual_seed(12)
    ref = RefAttention(16, heads=2, kv_heads=2, head_dim=8, kv_input=24, bias=True).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 24)
    out = mpool.testing.probe(
        "nn.attention", {"x": x.numpy(), "context": ctx.numpy()}, checkpoint=save_module(ref, tmp_path / "a.safetensors"),
        hidden=16, heads=2, head_dim=8, kv_input=24, qkv_bias=True, o_bias=True,
    )["out"]
    assert rel_err(out, ref(x, context=ctx)) <= REL


def test_additive_bias_adds_to_the_scores_with_the_causal_mask(tmp_path: Path) -> None:
    # An ALiBi-style bias: slope x distance per head, on top of the causal mask.
    torch.manual_seed(13)
    ref = RefAttention(16, heads=2, kv_heads=1, head_dim=8).eval()
    x = torch.randn(1, 6, 16)
    distance = (torch.arange(6)[None, :] - torch.arange(6)[:, None]).float()
    bias = torch.stack([0.5 * distance, 0.25 * distance])[None]  # (1, heads, n, t)
    keep = torch.ones(6, 6, dtype=torch.bool).tril()
    out = mpool.testing.probe(
        "nn.attention", {"x": x.numpy(), "bias": bias.numpy()}, checkpoint=save_module(ref, tmp_path / "a.safetensors"),
        hidden=16, heads=2, kv_heads=1, head_dim=8, causal=True,
    )["out"]
    assert rel_err(out, ref(x, additive=additive_from(keep)[None, None] + bias)) <= REL


def test_attention_scale_replaces_the_inverse_sqrt_head_dim(tmp_path: Path) -> None:
    # T5: unscaled scores plus a relative bias and key padding.
    torch.manual_seed(14)
    ref = RefAttention(16, heads=2, kv_heads=2, head_dim=6, scale=1.0).eval()
    x = torch.randn(2, 5, 16)
    bias = torch.randn(1, 2, 5, 5)
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    keep = key_mask.bool()[:, None, None, :]
    checkpoint = save_module(ref, tmp_path / "a.safetensors")
    out = mpool.testing.probe(
        "nn.attention", {"x": x.numpy(), "bias": bias.numpy(), "key_mask": key_mask.numpy()}, checkpoint=checkpoint,
        hidden=16, heads=2, head_dim=6, scale=1.0,
    )["out"]
    assert rel_err(out, ref(x, additive=additive_from(keep) + bias)) <= REL
    default = mpool.testing.probe("nn.attention", {"x": x.numpy()}, checkpoint=checkpoint, hidden=16, heads=2,
                                  head_dim=6)["out"]
    assert rel_err(default, ref(x)) > 1e-2  # the default 1/sqrt(6) differs
    with pytest.raises(mpool.InvalidInput, match="attention scale must be a positive finite number"):
        mpool.testing.probe("nn.attention", {"x": x.numpy()}, checkpoint=checkpoint, hidden=16, heads=2, head_dim=6,
                            scale=0.0)


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


# (batch, heads, kv_heads, d, dv, t): grouped and plain heads, one shared latent
# "head" with a narrower value (MLA's absorbed decode), widths off the 8-lane
# vector, one key, and a long context.
DECODE_SHAPES = [(1, 12, 4, 64, 64, 37), (2, 4, 4, 20, 20, 8), (1, 16, 1, 72, 64, 300), (3, 2, 1, 6, 6, 1),
                 (1, 8, 2, 128, 128, 2049)]


def _cpu_has_avx512() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f" {f}" in flags for f in ("avx512f", "avx512bw", "avx512vl"))


@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=lambda s: "b{}_h{}_kv{}_d{}_dv{}_t{}".format(*s))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("isa", ["widest", "avx2", "avx512"])
def test_decode_step_attention_kernel_matches_a_float64_reference(shape: tuple[int, ...], dtype: str, isa: str) -> None:
    """One query row per head: mpool's own kernel (where the CPU has AVX2/FMA; on
    the widest path it has, and on each of AVX2 and AVX-512 where it has them)
    against float64 softmax attention on the same (rounded) inputs, reading keys
    and values through a strided view of a longer cache."""
    if (isa == "avx2" and not _cpu_has_avx2_fma()) or (isa == "avx512" and not _cpu_has_avx512()):
        pytest.skip(f"this CPU has no {isa}")
    b, heads, kv_heads, d, dv, t = shape
    gen = torch.Generator().manual_seed(t + heads)
    q = torch.randn(b, heads, 1, d, generator=gen) * 2
    k = torch.randn(b, kv_heads, t + 5, d, generator=gen) * 2  # the cache holds 5 rows more than are read
    v = torch.randn(b, kv_heads, t + 5, dv, generator=gen)
    scale = 0.7
    chosen = {} if isa == "widest" else {"isa": isa}
    out = mpool.testing.probe("nn.attend", {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}, dtype=dtype, length=t,
                              scale=scale, **chosen)
    assert int(out["kernel"]) == int(_cpu_has_avx2_fma())
    cast = getattr(torch, dtype)
    qd, kd, vd = (x.to(cast).double() for x in (q, k[:, :, :t], v[:, :, :t]))
    group = heads // kv_heads
    kd, vd = kd.repeat_interleave(group, dim=1), vd.repeat_interleave(group, dim=1)
    ref = torch.softmax(qd @ kd.transpose(-1, -2) * scale, dim=-1) @ vd
    # float32: accumulation order only; bfloat16: the output is rounded to bf16 once.
    assert rel_err(out["out"], ref) <= (1e-5 if dtype == "float32" else 8e-3)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.to(cast), k[:, :, :t].to(cast), v[:, :, :t].to(cast), scale=scale, enable_gqa=group > 1)
    assert rel_err(out["out"], sdpa.float()) <= (1e-5 if dtype == "float32" else 1.6e-2)


def test_decode_step_attention_kernel_keeps_a_peaked_softmax_exact() -> None:
    """Scores hundreds apart: the exponentials of all but the top key underflow to
    zero, and the output is that key's value row, not NaN."""
    q = torch.zeros(1, 2, 1, 8)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 19, 8)
    k[0, 0, :, 0] = torch.arange(19) * -50.0
    k[0, 0, 4, 0] = 300.0
    v = torch.randn(1, 1, 19, 8, generator=torch.Generator().manual_seed(0))
    out = mpool.testing.probe("nn.attend", {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}, scale=1.0)["out"]
    np.testing.assert_allclose(out[0, 0, 0], v[0, 0, 4].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 0], v[0, 0, 4].numpy(), rtol=1e-6)


def test_missing_attention_weight_names_the_full_tensor_name(tmp_path: Path) -> None:
    ref = RefAttention(16, heads=2, kv_heads=2, head_dim=8)
    weights = {"blk." + k: v.detach().contiguous() for k, v in ref.state_dict().items() if not k.startswith("v_proj")}
    save_file(weights, tmp_path / "a.safetensors")
    with pytest.raises(mpool.InvalidInput, match="checkpoint has no tensor 'blk.v_proj.weight'"):
        mpool.testing.probe(
            "nn.attention", {"x": np.zeros((1, 2, 16), np.float32)}, checkpoint=str(tmp_path / "a.safetensors"),
            prefix="blk", hidden=16, heads=2, head_dim=8,
        )


def test_probe_arguments_of_the_wrong_type_are_invalid_input() -> None:
    with pytest.raises(mpool.InvalidInput, match="tensors must be a mapping"):
        mpool.testing.probe("nn.activation", [np.zeros(3)], name="gelu")  # type: ignore[arg-type]
    with pytest.raises(mpool.InvalidInput, match="tensor 'x' must be a numeric array"):
        mpool.testing.probe("nn.activation", {"x": ["a", "b"]}, name="gelu")
    with pytest.raises(mpool.InvalidInput, match="probe option 'name' has the wrong type"):
        mpool.testing.probe("nn.activation", {"x": np.zeros(3, np.float32)}, name=3)


def test_probe_with_an_unknown_name_lists_the_known_ones() -> None:
    assert "nn.attention" in mpool.testing.probe_names()
    with pytest.raises(mpool.InvalidInput, match="no probe named 'nn.nothing' \\(known: .*nn.attention"):
        mpool.testing.probe("nn.nothing")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_matrix_vector_kernel_matches_a_float64_product_of_the_same_values(dtype: str) -> None:
    # One row against every weight row: the decode step's kernel (AVX2, or
    # AVX512-BF16's pair dot products for bf16 where the CPU has them). Widths off
    # the vector sizes and off the eight-row passes; the reference takes the
    # same rounded inputs, so only the sums' order and the output rounding differ.
    # Rows of up to 2,048 bytes go one a pass with AVX-512, wider ones eight: 512
    # and 1,024 are the last narrow widths of float32 and bfloat16.
    rng = np.random.default_rng(8)
    for k, n in [(7, 3), (32, 8), (33, 9), (100, 17), (768, 70), (512, 20), (513, 11), (1024, 9), (1025, 12)]:
        x = rng.standard_normal((1, 1, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        cast = (lambda a: torch.from_numpy(a).to(torch.bfloat16).float().numpy()) if dtype == "bfloat16" else (lambda a: a)
        ref = cast(x).astype(np.float64) @ cast(w).T.astype(np.float64) + cast(b)
        y = mpool.testing.probe("nn.linear", {"x": x, "weight": w, "bias": b}, dtype=dtype)["y"]
        assert y.shape == (1, 1, n)
        tol = 2**-8 if dtype == "bfloat16" else 1e-5  # the output rounded to bf16, or float32 sums
        assert np.abs(y - ref).max() <= tol * np.abs(ref).max(), f"{k}x{n}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("k", [300, 1100, 2100])
@pytest.mark.parametrize("rows", [16, 11])
def test_decode_row_kernel_gives_a_row_the_same_bits_alone_and_among_many(dtype: str, k: int, rows: int) -> None:
    # A sequence decodes to the same tokens alone or in a batch only if its
    # products do not depend on the rows beside it: one row takes its own
    # blocking (narrow weight rows one a pass, wide ones eight), more rows four
    # by four (bf16 from eight rows: two weight rows against eight, in column
    # spans past 1,024 columns; the rows past a multiple of eight four by four).
    rng = np.random.default_rng(k)
    w = rng.standard_normal((45, k)).astype(np.float32)
    x = rng.standard_normal((rows, 1, k)).astype(np.float32)
    b = rng.standard_normal(45).astype(np.float32)
    many = mpool.testing.probe("nn.linear", {"x": x, "weight": w, "bias": b}, dtype=dtype)["y"]
    for i in range(rows):
        alone = mpool.testing.probe("nn.linear", {"x": x[i : i + 1], "weight": w, "bias": b}, dtype=dtype)["y"]
        assert np.array_equal(alone, many[i : i + 1]), f"row {i}: alone differs from the same row among {rows}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("k", [37, 768, 3072])
def test_row_invariant_linear_gives_every_row_of_hundreds_its_bits_alone_across_tiles(k: int, dtype: str) -> None:
    # Under kernels::RowInvariant (a prompt's chunks), past 16 rows a float32 or
    # bfloat16 linear runs the row kernel in tiles of x rows instead of the GEMM:
    # a row's bits are the ones it has alone, wherever a chunk starts and however
    # long (bfloat16: four weight rows against four x rows, where one row alone
    # or a decode batch of up to 16 takes other blockings).
    rng = np.random.default_rng(k + 1)
    # Several x tiles at 768 and 3,072 columns: about 192 KiB of float32 rows,
    # 1 MiB of bfloat16 ones.
    rows = {"float32": {37: 300, 768: 300, 3072: 70}, "bfloat16": {37: 300, 768: 1500, 3072: 400}}[dtype][k]
    w = rng.standard_normal((45, k)).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    b = rng.standard_normal(45).astype(np.float32)

    def linear(xs: np.ndarray, invariant: bool) -> np.ndarray:
        return mpool.testing.probe("nn.linear", {"x": xs, "weight": w, "bias": b}, row_invariant=invariant,
                                   dtype=dtype)["y"]

    many = linear(x, True)
    for i in sorted({0, 1, 15, 16, 17, 63, 64, rows // 2, rows - 1}):
        assert np.array_equal(linear(x[i : i + 1], True), many[i : i + 1]), f"row {i} of {rows}"
        assert np.array_equal(linear(x[i : i + 1], False), many[i : i + 1]), f"row {i} alone, outside the scope"
    for start, n in [(5, 40), (17, 1), (100, 150)]:
        if start + n <= rows:
            assert np.array_equal(linear(x[start : start + n], True), many[start : start + n]), (start, n)
    cast = (lambda a: torch.from_numpy(a).to(torch.bfloat16).float().numpy()) if dtype == "bfloat16" else (lambda a: a)
    reference = cast(x).astype(np.float64) @ cast(w).T.astype(np.float64) + cast(b)
    tol = 2**-8 if dtype == "bfloat16" else 1e-4  # the output rounded to bf16, or float32 sums
    assert np.abs(many - reference).max() <= tol * np.abs(reference).max()


# --- the paged KV cache -------------------------------------------------------------


@pytest.mark.parametrize("t,block_size,chunk", [(32, 16, 32), (37, 8, 5), (16, 16, 3), (9, 4, 9)])
def test_paged_cache_shares_published_blocks_and_copies_the_shared_one_before_writing_it(
    t: int, block_size: int, chunk: int
) -> None:
    rng = np.random.RandomState(t)
    keys, values = rng.randn(2, t, 8).astype(np.float32), rng.randn(2, t, 8).astype(np.float32)
    new_key, new_value = rng.randn(2, 1, 8).astype(np.float32), rng.randn(2, 1, 8).astype(np.float32)
    blocks = 3 * ((t + block_size - 1) // block_size)
    out = mpool.testing.probe("nn.paged_kv_cache", {"keys": keys, "values": values, "new_key": new_key,
                                                    "new_value": new_value, "q": rng.randn(1, 4, 1, 8)},
                              block_size=block_size, blocks=blocks, chunk=chunk, first=t // 3)
    full = t // block_size
    assert out["matched"] == full
    # A reads back what it wrote, untouched by B's write at t - 1.
    np.testing.assert_array_equal(out["a_keys"], keys)
    np.testing.assert_array_equal(out["a_values"], values)
    # B reads A's positions and its own last one.
    want_k, want_v = keys.copy(), values.copy()
    want_k[:, -1:], want_v[:, -1:] = new_key, new_value
    np.testing.assert_array_equal(out["b_keys"], want_k)
    np.testing.assert_array_equal(out["b_values"], want_v)
    # A decode row over B's positions reads them where they lie with the bits of the gathered read.
    np.testing.assert_array_equal(out["attend_in_blocks"], out["attend_gathered"])
    a_table, b_table = list(out["a_table"]), list(out["b_table"])
    shared = full - 1 if t % block_size == 0 else full  # the block holding t - 1 is B's own copy
    assert b_table[:shared] == a_table[:shared] and not set(b_table[shared:]) & set(a_table)
    assert out["held_in_use"] == len(set(a_table) | set(b_table))
    # Both gone: the published blocks stay cached (and count as available), the rest are free.
    assert out["in_use"] == 0 and out["cached"] == full and out["available"] == blocks
