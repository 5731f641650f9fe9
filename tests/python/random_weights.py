"""Random weights for the oracle models the parity tests build: every parameter
drawn from a seeded generator (norm weights around 1), so that no term of a
block can hide behind an initialisation of zeros or ones."""

from __future__ import annotations

import torch


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """``module`` with every parameter random, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(scale * noise)
    tie_t5_embeddings(module)
    return module.eval()


def tie_t5_embeddings(module: torch.nn.Module) -> torch.nn.Module:
    """A T5 encoder's lookup table made its shared one, by hand. transformers ties
    them only when the config's tie_word_embeddings reads true, which a long test
    process has been seen not to do; untied, randomizing makes two different
    tables and what the model saves is not what it runs."""
    shared, encoder = getattr(module, "shared", None), getattr(module, "encoder", None)
    if isinstance(shared, torch.nn.Embedding) and isinstance(getattr(encoder, "embed_tokens", None), torch.nn.Embedding):
        encoder.embed_tokens.weight = shared.weight
    return module
