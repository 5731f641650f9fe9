"""A diffusers state dict written back in a model's original (pre-diffusers)
names, for the single-file tests: the inverse of diffusers' converters, built
one move at a time."""

from __future__ import annotations

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
