"""Native Stable Diffusion 3 from a single-file checkpoint (Stability's original
layout) against diffusers: the tiny pipeline of sd3_models.sd3_pipeline (sized
with SD3's 64-wide heads and 32 VAE norm groups, so configs can be inferred
from shapes) written in the test as model.diffusion_model.* (the MMDiT's original
names: fused qkv, adaLN halves of the last context block and final layer in
(shift, scale) order), first_stage_model.* (the LDM VAE names) and the text
encoders either inside the file (text_encoders.*) or as separate files given by
option; the tokenizers in a folder beside it. Images from the same latents are
compared with diffusers' output_type="np" (max absolute difference <= 1e-3).
Then: no T5, a contradicting shape, missing tokenizers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mpool
from image_checks import assert_same
from original_names import ToOriginal, swap_halves, vae_to_ldm_names
from sd3_models import sd3_pipeline

SIZE = 32


def mmdit_to_original(transformer) -> dict[str, torch.Tensor]:
    """SD3Transformer2DModel's names -> the original mmdit ones (the inverse of
    diffusers' convert_sd3_transformer_checkpoint_to_diffusers)."""
    m = ToOriginal(transformer)
    take, out = m.take, m.out
    layers = transformer.config.num_layers

    take("pos_embed.proj", "x_embedder.proj")
    out["pos_embed"] = m.pop("pos_embed.pos_embed")
    take("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0")
    take("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2")
    take("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0")
    take("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2")
    take("context_embedder", "context_embedder")
    for i in range(layers):
        d, x, c = f"transformer_blocks.{i}", f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        for attn in ("attn", "attn2"):
            if f"{d}.{attn}.to_q.weight" not in m.left:
                continue
            m.fuse(f"{x}.{attn}.qkv", [f"{d}.{attn}.to_{p}" for p in "qkv"])
            take(f"{d}.{attn}.to_out.0", f"{x}.{attn}.proj")
            take(f"{d}.{attn}.norm_q", f"{x}.{attn}.ln_q")
            take(f"{d}.{attn}.norm_k", f"{x}.{attn}.ln_k")
        m.fuse(f"{c}.attn.qkv", [f"{d}.attn.add_{p}_proj" for p in "qkv"])
        take(f"{d}.attn.to_add_out", f"{c}.attn.proj")
        take(f"{d}.attn.norm_added_q", f"{c}.attn.ln_q")
        take(f"{d}.attn.norm_added_k", f"{c}.attn.ln_k")
        take(f"{d}.norm1.linear", f"{x}.adaLN_modulation.1")
        for kind in ("weight", "bias"):
            t = m.pop(f"{d}.norm1_context.linear.{kind}")
            out[f"{c}.adaLN_modulation.1.{kind}"] = swap_halves(t) if i == layers - 1 else t
        take(f"{d}.ff.net.0.proj", f"{x}.mlp.fc1")
        take(f"{d}.ff.net.2", f"{x}.mlp.fc2")
        take(f"{d}.ff_context.net.0.proj", f"{c}.mlp.fc1")
        take(f"{d}.ff_context.net.2", f"{c}.mlp.fc2")
    m.final_layer()
    return m.finish("MMDiT")


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    return vae_to_ldm_names(vae.state_dict(), len(vae.config.block_out_channels))


def state(module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach() for k, v in module.state_dict().items()}


def save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    # Tied tensors (T5's shared / embed_tokens) are written as separate copies.
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_single_file(pipe, folder: Path, *, encoders_inside: bool, with_tokenizers: bool = True) -> dict[str, str]:
    """The pipeline as sd3.safetensors in `folder` (tokenizers beside it unless told
    not to); with the text encoders as separate files, the options naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.diffusion_model.{k}": v for k, v in mmdit_to_original(pipe.transformer).items()}
    tensors.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(pipe.vae).items()})
    encoders = {"clip_l": pipe.text_encoder, "clip_g": pipe.text_encoder_2, "t5xxl": pipe.text_encoder_3}
    options: dict[str, str] = {}
    for name, module in encoders.items():
        if module is None:
            continue
        if encoders_inside:
            part = state(module, f"text_encoders.{name}.transformer.")
            if name == "clip_l":  # SD3's files store no CLIP-L projection (it is an identity)
                del part["text_encoders.clip_l.transformer.text_projection.weight"]
            tensors.update(part)
        else:
            # Separate files as ComfyUI-style downloads store them: CLIP at the root,
            # T5 under "transformer." (the family finds the prefix).
            prefix = "transformer." if name == "t5xxl" else ""
            options[f"{name}_file"] = str(save(state(module, prefix), folder / f"{name}.safetensors"))
    save(tensors, folder / "sd3.safetensors")
    if with_tokenizers:
        pipe.tokenizer.save_pretrained(folder / "tokenizer")
        pipe.tokenizer_2.save_pretrained(folder / "tokenizer_2")
        if pipe.tokenizer_3 is not None:
            pipe.tokenizer_3.save_pretrained(folder / "tokenizer_3")
    return options


def sd3_shaped_pipeline(**kwargs: Any):
    """sd3_models' tiny pipeline with SD3's fixed choices, so that a single file's
    configs can be inferred from its shapes: every attention head 64 wide, the
    VAE's norms in 32 groups, CLIP-L's pooled vector unprojected (an identity
    text_projection, as SD3 single files are read); CLIP-L 64 wide, CLIP-G 128,
    T5 and the joint context 192. The MMDiT's weights are drawn at scale 0.1:
    at sd3_models' 0.15, 64-wide heads make attention so sharp that five guided
    steps amplify float32 rounding past 1e-3 (the diffusers folder of the same
    pipeline then differs from diffusers exactly as much as the single file)."""
    kwargs.setdefault("scale", 0.1)
    pipe = sd3_pipeline(
        clip_l=dict(hidden_size=64, num_attention_heads=1, projection_dim=64),
        clip_g=dict(hidden_size=128, num_attention_heads=2),
        t5_config=dict(d_model=192),
        mmdit=dict(attention_head_dim=64, num_attention_heads=2, joint_attention_dim=192, caption_projection_dim=128,
                   pooled_projection_dim=64 + 8),
        vae=dict(block_out_channels=[32, 32, 64], norm_num_groups=32),
        **kwargs,
    )
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(64))
    return pipe


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    return {
        "sd3": sd3_shaped_pipeline(),
        "sd35": sd3_shaped_pipeline(qk_norm=True, dual=True, layers=4, seed=1),
        "no_t5": sd3_shaped_pipeline(t5=False, seed=3),
    }


def latents(seed: int = 7) -> torch.Tensor:
    return torch.randn(1, 4, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(seed))


def reference(pipe, prompt: str, **kwargs: Any) -> np.ndarray:
    with torch.no_grad():
        return pipe(prompt, height=SIZE, width=SIZE, output_type="np", **kwargs).images[0]


def generate_both(pipe, path: Path, options: dict[str, Any], what: str) -> None:
    kw = dict(num_inference_steps=5, guidance_scale=4.5, negative_prompt="a blurry dog")
    ref = reference(pipe, "a photo of a cat", latents=latents(), **kw)
    with mpool.Pool(maintenance_interval=0.05, request_timeout=120.0) as pool:
        pool.register("m", mpool.NativeModel(str(path), options=options))
        got = pool.generate_image("m", "a photo of a cat", width=SIZE, height=SIZE, output_type="np", steps=5,
                                  guidance_scale=4.5, negative_prompt="a blurry dog",
                                  latents=latents().numpy()).result()
    assert_same(got, ref, what)


@pytest.mark.parametrize("key", ["sd3", "sd35"])
def test_single_file_with_text_encoders_inside_matches_diffusers(pipes, tmp_path, key) -> None:
    options = write_single_file(pipes[key], tmp_path, encoders_inside=True)
    assert options == {}
    generate_both(pipes[key], tmp_path / "sd3.safetensors", {}, f"{key} single file, encoders inside")


def test_single_file_with_text_encoders_from_option_files_matches_diffusers(pipes, tmp_path) -> None:
    options = write_single_file(pipes["sd3"], tmp_path, encoders_inside=False)
    assert set(options) == {"clip_l_file", "clip_g_file", "t5xxl_file"}
    generate_both(pipes["sd3"], tmp_path / "sd3.safetensors", options, "sd3 single file, encoders by option")


def test_single_file_tokenizers_from_the_tokenizers_option_folder_match_diffusers(pipes, tmp_path) -> None:
    write_single_file(pipes["sd3"], tmp_path / "model", encoders_inside=True, with_tokenizers=False)
    pipe = pipes["sd3"]
    for name, tok in {"tokenizer": pipe.tokenizer, "tokenizer_2": pipe.tokenizer_2,
                      "tokenizer_3": pipe.tokenizer_3}.items():
        tok.save_pretrained(tmp_path / "toks" / name)
    generate_both(pipe, tmp_path / "model" / "sd3.safetensors", {"tokenizers": str(tmp_path / "toks")},
                  "sd3 single file, tokenizers by option")


def test_single_file_without_t5_runs_with_a_zero_t5_context_as_diffusers(pipes, tmp_path) -> None:
    write_single_file(pipes["no_t5"], tmp_path, encoders_inside=True)
    assert not (tmp_path / "tokenizer_3").exists()
    generate_both(pipes["no_t5"], tmp_path / "sd3.safetensors", {}, "no-T5 single file")


def test_single_file_with_a_contradicting_shape_is_refused_naming_the_tensor(pipes, tmp_path) -> None:
    write_single_file(pipes["sd3"], tmp_path / "good", encoders_inside=True)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "good" / "sd3.safetensors"))
    name = "model.diffusion_model.joint_blocks.1.context_block.attn.qkv.weight"
    tensors[name] = tensors[name][:-3]
    write_single_file(pipes["sd3"], tmp_path / "bad", encoders_inside=True)
    save(tensors, tmp_path / "bad" / "sd3.safetensors")
    with pytest.raises(mpool.InvalidInput, match=re.escape(f"'{name}'")):
        with mpool.Pool() as pool:
            pool.register("m", mpool.NativeModel(str(tmp_path / "bad" / "sd3.safetensors")))


def test_single_file_without_tokenizers_is_refused_saying_which_option_gives_them(pipes, tmp_path) -> None:
    write_single_file(pipes["sd3"], tmp_path, encoders_inside=True, with_tokenizers=False)
    with pytest.raises(mpool.InvalidInput, match=r"holds no tokenizers; give option tokenizers"):
        with mpool.Pool() as pool:
            pool.register("m", mpool.NativeModel(str(tmp_path / "sd3.safetensors")))


def test_single_file_without_clip_g_is_refused_naming_the_option_that_gives_it(pipes, tmp_path) -> None:
    options = write_single_file(pipes["sd3"], tmp_path, encoders_inside=False)
    del options["clip_g_file"]
    with pytest.raises(mpool.InvalidInput, match=r"text_encoders\.clip_g\.transformer\.\* tensors; give them with "
                                                 r"option clip_g_file"):
        with mpool.Pool() as pool:
            pool.register("m", mpool.NativeModel(str(tmp_path / "sd3.safetensors"), options=options))


def test_single_file_options_on_a_diffusers_folder_are_refused(pipes, tmp_path) -> None:
    pipes["no_t5"].save_pretrained(tmp_path)
    with pytest.raises(mpool.InvalidInput, match=r"option tokenizers is for single-file checkpoints"):
        with mpool.Pool() as pool:
            pool.register("m", mpool.NativeModel(str(tmp_path), options={"tokenizers": str(tmp_path)}))
