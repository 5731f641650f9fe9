"""Tiny random Stable Diffusion 3 components written to disk with diffusers and
transformers: what the native sd3 family loads, and the oracles it is compared
with. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter random (norm weights around 1), so that no term can hide
    (diffusers initialises some adaLN projections to zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(scale * noise)
    return module.eval()


def mmdit_config(**overrides: Any) -> dict[str, Any]:
    config = dict(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=24, caption_projection_dim=32, pooled_projection_dim=20,
        pos_embed_max_size=12,
    )
    config.update(overrides)
    return config


def save_mmdit(path: Path, seed: int = 0, **overrides: Any):
    """A random SD3Transformer2DModel saved at ``path``; returns it."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = randomize(SD3Transformer2DModel(**mmdit_config(**overrides)), seed, scale=0.15)
    model.save_pretrained(path)
    return model


def save_clip_text(path: Path, *, hidden: int, layers: int = 2, heads: int = 2, projection: int = 16,
                   act: str = "quick_gelu", seed: int = 0, positions: int = 77):
    """A random CLIPTextModelWithProjection (SD3's text_encoder / text_encoder_2)
    and the CLIP tokenizer at ``path``; returns (model, tokenizer)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from two_tower_models import clip_tokenizer

    tok = clip_tokenizer()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2 + 4, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=positions, hidden_act=act, projection_dim=projection,
        bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos, pad_token_id=eos,
    )
    torch.manual_seed(seed)
    model = randomize(CLIPTextModelWithProjection(config), seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok
