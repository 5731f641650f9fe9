"""Tiny random CLIP and SigLIP models written to disk with transformers, with a
CLIP-style BPE tokenizer.json and an image processor: what the native two-tower
families load, and the oracles they are compared with. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WORDS = ["a", "photo", "of", "the", "cat", "dog", "car", "tree", "red", "blue", "house", "on", "in", "big"]


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map, which ByteLevel uses.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer(eos_last: bool = True):
    """A CLIPTokenizer over every byte plus a few word merges. With ``eos_last`` the
    end-of-text token has the largest id (as in OpenAI's vocabulary)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        # Merge each word left to right into one token ending in </w>.
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if (parts[0], parts[1]) not in merges:
                merges.append((parts[0], parts[1]))
            if merged not in vocab:
                vocab[merged] = len(vocab)
            parts = [merged] + parts[2:]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    for s in specials if eos_last else specials[::-1]:
        vocab[s] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def save_clip(
    path: Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 30,
    patch_size: int = 6,
    act: str = "quick_gelu",
    projection_dim: int = 16,
    legacy_eos: bool = False,
    processor: dict[str, Any] | None = None,
    seed: int = 0,
):
    """A random CLIPModel with its tokenizer and image processor at ``path``; returns
    (model, tokenizer, image processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = clip_tokenizer()
    eos = 2 if legacy_eos else tok.convert_tokens_to_ids("<|endoftext|>")
    text = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2 + 5, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=24, hidden_act=act,
        bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos, pad_token_id=eos,
    )
    vision = dict(
        hidden_size=hidden + 2 * heads, intermediate_size=hidden * 3, num_hidden_layers=layers + 1, num_attention_heads=heads,
        image_size=image_size, patch_size=patch_size, hidden_act=act,
    )
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3 + seed * 0.1)
    model.save_pretrained(path)
    tok.model_max_length = 24
    tok.save_pretrained(path)
    settings = dict(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    settings.update(processor or {})
    proc = CLIPImageProcessor(**settings)
    proc.save_pretrained(path)
    return model, tok, proc


def save_siglip(
    path: Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    act: str = "gelu_pytorch_tanh",
    max_positions: int = 16,
    seed: int = 0,
):
    """A random SiglipModel with a tokenizer.json (the CLIP-style BPE, padded with
    its end-of-text token) and SiglipImageProcessor settings; returns (model,
    tokenizer, image processor)."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tok = clip_tokenizer()
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    text = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2 + 5, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=max_positions, hidden_act=act, pad_token_id=pad,
        bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=pad,
    )
    vision = dict(
        hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers + 1, num_attention_heads=heads,
        image_size=image_size, patch_size=patch_size, hidden_act=act,
    )
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-3.0)
    model.save_pretrained(path)
    tok.model_max_length = max_positions
    tok.save_pretrained(path)
    proc = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    proc.save_pretrained(path)
    return model, tok, proc
