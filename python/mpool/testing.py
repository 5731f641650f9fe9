"""Small native models for tests and benchmarks, like ``torch.testing``."""

from __future__ import annotations

from . import _core
from .models import Model


def noop_model(dimension: int = 4, *, memory_mb: float = 1.0, max_replicas: int = 4) -> Model:
    """A native model that embeds instantly (zeros) and streams counting tokens."""
    return Model(_core.native_test_model_spec(dimension, 0.0, memory_mb, max_replicas))


def sleep_model(
    seconds: float, dimension: int = 4, *, memory_mb: float = 1.0, max_replicas: int = 4
) -> Model:
    """A native model whose every step blocks in C++ for ``seconds`` (cancellable)."""
    return Model(_core.native_test_model_spec(dimension, float(seconds), memory_mb, max_replicas))
