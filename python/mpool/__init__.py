"""mpool: many ML models in one process, served by native replicas."""

from __future__ import annotations

from . import _core
from .errors import *  # noqa: F403
from .errors import ALL_ERRORS, PoolError

__version__ = "0.1.0"

_core._set_error_classes({cls.code: cls for cls in ALL_ERRORS})
from .loading import inspect, safetensors_load
