"""Small native models for tests and benchmarks, like ``torch.testing``."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from . import _core
from . import _validate as v
from .errors import InvalidInput
from .models import MAX_REPLICAS, Model

FAULTS: tuple[str, ...] = tuple(_core.fault_names())
"""The failure points compiled into the library (see :func:`inject`)."""


def inject(fault: str, count: int = 1, *, key: str | None = None, seconds: float = 0.0) -> None:
    """Arms a failure point to fire ``count`` times (only for model ``key``, if given).

    ``loader_throws``, ``forward_throws``, ``out_of_memory`` (torch's OutOfMemoryError
    inside a request), ``replica_dies`` (the replica thread stops mid-job),
    ``thread_create_fails``, ``slow_load`` (by ``seconds``), ``consumer_stalls`` (a
    stream's consumer sleeps ``seconds`` before reading on), ``clock_jump`` (the
    pool clock moves ``seconds`` forward, at once) and ``cancel_at_layer`` (a native
    forward pass cancels its request at a layer boundary). Off by default; a disarmed point
    costs one atomic load. Faults are process-wide: clear them with :func:`clear_faults`.
    """
    if fault not in FAULTS:
        raise InvalidInput(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 2**31 - 1:
        raise InvalidInput(f"count must be an int in [1, 2**31 - 1], got {count!r}")
    if key is not None and not isinstance(key, str):
        raise InvalidInput(f"key must be a str or None, got {type(key).__name__}")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput(f"seconds must be a finite number >= 0, got {seconds!r}")
    _core.inject_fault(fault, count, key or "", float(seconds))


def clear_faults() -> None:
    """Disarms every failure point."""
    _core.clear_faults()


def faults_fired(fault: str) -> int:
    """How many times ``fault`` has fired in this process."""
    if fault not in FAULTS:
        raise InvalidInput(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    return int(_core.faults_fired(fault))


def layer_boundaries() -> int:
    """How many layer boundaries requests' forward passes reached in this process:
    each is where a pass stops once its request is cancelled or past its deadline."""
    return int(_core.layer_boundaries())


@contextlib.contextmanager
def fault(name: str, count: int = 1, *, key: str | None = None, seconds: float = 0.0) -> Iterator[None]:
    """``with mpool.testing.fault("forward_throws", key="emb"):`` arms, then clears every fault."""
    inject(name, count, key=key, seconds=seconds)
    try:
        yield
    finally:
        clear_faults()


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


def probe_names() -> list[str]:
    """The registered probes: ``nn.*`` for the shared blocks, ``<family>.*`` for models."""
    return list(_core._probe_names())


def probe(name: str, tensors: Mapping[str, Any] | None = None, /, **options: Any) -> dict[str, np.ndarray]:
    """Runs one native block or model on given inputs, for parity tests.

    ``tensors`` maps input names to arrays (integer arrays become int64, others
    float32); ``options`` are JSON values (numbers, strings, lists, a ``path`` or
    ``checkpoint``, a ``config`` dict). Returns the probe's named outputs. See
    :func:`probe_names` for what exists; an unknown name or a missing or mistyped
    argument raises ``InvalidInput``.
    """
    if not isinstance(name, str):
        raise InvalidInput(f"name must be a str, got {type(name).__name__}")
    if tensors is not None and not isinstance(tensors, Mapping):
        raise InvalidInput(f"tensors must be a mapping of name to array, got {type(tensors).__name__}")
    arrays = {} if tensors is None else dict(tensors)
    for key, value in arrays.items():
        if not isinstance(key, str):
            raise InvalidInput(f"tensor names must be str, got {type(key).__name__}")
        array = np.asarray(value)
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise InvalidInput(f"tensor {key!r} must be a numeric array, got dtype {array.dtype}")
        arrays[key] = array
    try:
        text = json.dumps(options, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"probe options must be JSON values: {e}") from None
    return dict(_core._probe(name, text, arrays))
