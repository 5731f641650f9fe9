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
    # A transformers model whose embeddings are tied (T5's shared and
    # encoder.embed_tokens) must stay tied, or what it saves is not what it runs.
    tie = getattr(module, "tie_weights", None)
    if callable(tie):
        tie()
    return module.eval()
