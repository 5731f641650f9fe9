"""The mpool error hierarchy. Every failure the pool reports is a PoolError."""

from __future__ import annotations


class PoolError(Exception):
    """Base class of every error mpool raises."""

    code = "internal"


class ModelNotFound(PoolError, KeyError):
    """No model is registered under the requested key."""

    code = "model_not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelError(PoolError):
    """The model raised while serving the request; the message is the model's."""

    code = "model_error"


class Timeout(PoolError, TimeoutError):
    """The request did not finish (queue + compute) within its timeout."""

    code = "timeout"


class ShuttingDown(PoolError):
    """The pool is closing and accepts no new requests."""

    code = "shutting_down"


class MemoryExhausted(PoolError, MemoryError):
    """Not enough memory for a replica, even after evicting idle models."""

    code = "memory_exhausted"


class SpawnFailed(PoolError):
    """The model's loader failed; the message carries the loader's error."""

    code = "spawn_failed"


class Overloaded(PoolError):
    """The model's queue is full; retry later."""

    code = "overloaded"


class Cancelled(PoolError):
    """The request was cancelled before it finished."""

    code = "cancelled"


class InvalidInput(PoolError, ValueError):
    """The arguments are invalid; raised before anything is queued."""

    code = "invalid_input"


class InvalidArguments(InvalidInput, TypeError):
    """A call's arguments do not fit the function's parameters: an unknown keyword,
    a missing argument, one too many.

    An ``InvalidInput``, and a ``TypeError`` too, which is what Python raises for
    such a call.
    """


class NotCopyable(PoolError, TypeError):
    """A Pool cannot be copied or pickled: it owns native threads and loaded models.

    A ``TypeError`` too, which is what ``copy`` and ``pickle`` callers expect of an
    object that refuses them.
    """

    code = "invalid_input"


class InternalError(PoolError):
    """A bug in mpool itself."""

    code = "internal"


ALL_ERRORS = (
    ModelNotFound,
    ModelError,
    Timeout,
    ShuttingDown,
    MemoryExhausted,
    SpawnFailed,
    Overloaded,
    Cancelled,
    InvalidInput,
    InternalError,
)

# NotCopyable is raised by Python alone: it has no native error code of its own.
__all__ = ["PoolError", "NotCopyable", "InvalidArguments", *[c.__name__ for c in ALL_ERRORS]]
