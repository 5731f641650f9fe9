"""A diffusers state dict written back in a model's original (pre-diffusers)
names, for the single-file tests: the inverse of diffusers' converters, built
one move at a time."""

from __future__ import annotations

import re

import torch


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(scale, shift) <-> (shift, scale): diffusers' swap_scale_shift is its own inverse."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


class ToOriginal:
    """Moves the tensors of ``module``'s state dict to their original names;
    ``finish`` checks that none was left behind."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.left = {k: v.detach() for k, v in module.state_dict().items()}
        self.out: dict[str, torch.Tensor] = {}

    def pop(self, name: str) -> torch.Tensor:
        return self.left.pop(name)

    def take(self, ours: str, theirs: str) -> None:
        """``ours``.weight and, when present, ``ours``.bias as ``theirs``.*."""
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in self.left:
                self.out[f"{theirs}.{kind}"] = self.left.pop(f"{ours}.{kind}")

    def fuse(self, theirs: str, parts: list[str]) -> None:
        """The weights and biases of ``parts`` stacked by rows as ``theirs``.* (a fused qkv)."""
        for kind in ("weight", "bias"):
            self.out[f"{theirs}.{kind}"] = torch.cat([self.left.pop(f"{p}.{kind}") for p in parts])

    def final_layer(self) -> None:
        """norm_out (halves swapped) and proj_out as final_layer.*, as SD3 and FLUX store them."""
        for kind in ("weight", "bias"):
            self.out[f"final_layer.adaLN_modulation.1.{kind}"] = swap_halves(self.left.pop(f"norm_out.linear.{kind}"))
        self.take("proj_out", "final_layer.linear")

    def finish(self, what: str) -> dict[str, torch.Tensor]:
        assert not self.left, f"unmapped {what} tensors: {sorted(self.left)}"
        return self.out


def vae_to_ldm_names(state: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """``state`` (diffusers names, ``num_blocks`` levels) under the LDM names,
    attention projections as 1x1 convs, each tensor a contiguous copy."""
    out = {}
    for key, value in state.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", k)
        k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", k)
        k = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{num_blocks - 1 - int(m[1])}.block.", k)
        k = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{num_blocks - 1 - int(m[1])}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
            for ours, theirs in [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                                 ("to_out.0", "proj_out")]:
                k = k.replace(f".{ours}.", f".{theirs}.")
            if k.endswith("weight") and value.dim() == 2:
                value = value[:, :, None, None]
        out[k] = value.detach().clone().contiguous()
    return out


def flux_to_original(model) -> dict[str, torch.Tensor]:
    """FluxTransformer2DModel's names -> Black Forest Labs' (the inverse of diffusers'
    convert_flux_transformer_checkpoint_to_diffusers)."""
    m = ToOriginal(model)
    take, fuse = m.take, m.fuse
    take("x_embedder", "img_in")
    take("context_embedder", "txt_in")
    for ours, theirs in [("timestep_embedder", "time_in"), ("guidance_embedder", "guidance_in"),
                         ("text_embedder", "vector_in")]:
        take(f"time_text_embed.{ours}.linear_1", f"{theirs}.in_layer")
        take(f"time_text_embed.{ours}.linear_2", f"{theirs}.out_layer")
    for i in range(model.config.num_layers):
        d, o = f"transformer_blocks.{i}", f"double_blocks.{i}"
        take(f"{d}.norm1.linear", f"{o}.img_mod.lin")
        take(f"{d}.norm1_context.linear", f"{o}.txt_mod.lin")
        fuse(f"{o}.img_attn.qkv", [f"{d}.attn.to_{p}" for p in "qkv"])
        fuse(f"{o}.txt_attn.qkv", [f"{d}.attn.add_{p}_proj" for p in "qkv"])
        for stream, q, k in [("img", "norm_q", "norm_k"), ("txt", "norm_added_q", "norm_added_k")]:
            m.out[f"{o}.{stream}_attn.norm.query_norm.scale"] = m.pop(f"{d}.attn.{q}.weight")
            m.out[f"{o}.{stream}_attn.norm.key_norm.scale"] = m.pop(f"{d}.attn.{k}.weight")
        take(f"{d}.attn.to_out.0", f"{o}.img_attn.proj")
        take(f"{d}.attn.to_add_out", f"{o}.txt_attn.proj")
        take(f"{d}.ff.net.0.proj", f"{o}.img_mlp.0")
        take(f"{d}.ff.net.2", f"{o}.img_mlp.2")
        take(f"{d}.ff_context.net.0.proj", f"{o}.txt_mlp.0")
        take(f"{d}.ff_context.net.2", f"{o}.txt_mlp.2")
    for i in range(model.config.num_single_layers):
        s, o = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        take(f"{s}.norm.linear", f"{o}.modulation.lin")
        fuse(f"{o}.linear1", [f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v", f"{s}.proj_mlp"])
        m.out[f"{o}.norm.query_norm.scale"] = m.pop(f"{s}.attn.norm_q.weight")
        m.out[f"{o}.norm.key_norm.scale"] = m.pop(f"{s}.attn.norm_k.weight")
        take(f"{s}.proj_out", f"{o}.linear2")
    m.final_layer()
    return m.finish("FLUX")
