"""Small native models for tests and benchmarks, like ``torch.testing``."""

from __future__ import annotations

from . import _core
from . import _validate as v
from .models import MAX_REPLICAS, Model


def noop_model(dimension: int = 4, *, memory_mb: float = 1.0, max_replicas: int = 4) -> Model:
    """A native model that embeds instantly (zeros) and streams counting tokens."""
    return sleep_model(0.0, dimension, memory_mb=memory_mb, max_replicas=max_replicas)


def sleep_model(
    seconds: float, dimension: int = 4, *, memory_mb: float = 1.0, max_replicas: int = 4
) -> Model:
    """A native model whose every step blocks in C++ for ``seconds`` (cancellable)."""
    return Model(
        _core.native_test_model_spec(
            v.int_in("dimension", dimension, 1, 1 << 20),
            v.finite("seconds", seconds, lo=0),
            v.finite("memory_mb", memory_mb, lo=0),
            v.int_in("max_replicas", max_replicas, 1, MAX_REPLICAS),
        )
    )
