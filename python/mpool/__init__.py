"""mpool: many ML models in one process, served by native replica threads.

>>> import mpool
>>> with mpool.Pool() as pool:
...     pool.register("emb", mpool.PyModel("text_embedding", loader, memory_mb=300))
...     vectors = pool.embed("emb", ["hello", "world"])
"""

from __future__ import annotations

from . import _core
from .errors import (
    ALL_ERRORS,
    Cancelled,
    InternalError,
    InvalidArguments,
    InvalidInput,
    MemoryExhausted,
    ModelError,
    ModelNotFound,
    NotCopyable,
    Overloaded,
    PoolError,
    ShuttingDown,
    SpawnFailed,
    Timeout,
)
from .models import CAPABILITIES, Model, NativeModel, PyModel, default_embedding_model_path
from ._streams import ImageProgress
from .pool import ImageStream, Pool, Ranked, RankedDocument, TextStream
from .cpu import cpu_attention, float32_gemm, float32_gemm_auto, set_cpu_attention, set_float32_gemm
from .loading import inspect, safetensors_load
from .similarity import TopK, similarity
from .tokenizer import Tokenizer

__version__ = "0.1.0"

_core._set_error_classes({cls.code: cls for cls in ALL_ERRORS})
_core.float32_gemm()  # a bad MPOOL_FLOAT32_GEMM fails here, as InvalidInput naming it
_core.cpu_attention()  # and a bad MPOOL_CPU_ATTENTION

TextChunk = _core.TextChunk
GenerationStats = _core.GenerationStats

__all__ = [
    "cpu_attention",
    "set_cpu_attention",
    "float32_gemm",
    "float32_gemm_auto",
    "set_float32_gemm",
    "inspect",
    "safetensors_load",
    "similarity",
    "TopK",
    "CAPABILITIES",
    "Cancelled",
    "GenerationStats",
    "ImageProgress",
    "ImageStream",
    "InternalError",
    "InvalidArguments",
    "InvalidInput",
    "MemoryExhausted",
    "Model",
    "ModelError",
    "ModelNotFound",
    "NativeModel",
    "NotCopyable",
    "Overloaded",
    "Pool",
    "PoolError",
    "PyModel",
    "Ranked",
    "RankedDocument",
    "ShuttingDown",
    "SpawnFailed",
    "TextChunk",
    "TextStream",
    "Tokenizer",
    "default_embedding_model_path",
    "Timeout",
]
