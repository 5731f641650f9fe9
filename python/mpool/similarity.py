"""Cosine similarity between embeddings, and the top-k matches of each query."""

from __future__ import annotations

from typing import Any, NamedTuple, overload

import numpy as np

from . import _validate as v
from ._signature import checked_call
from .errors import InvalidInput

__all__ = ["TopK", "similarity"]


class TopK(NamedTuple):
    """The best matches of each query: ``indices`` and ``scores``, both (n, k), best first."""

    indices: np.ndarray
    scores: np.ndarray


def _matrix(name: str, x: Any) -> np.ndarray:
    try:
        m = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)  # a torch tensor, even one that needs grad
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise InvalidInput(f"{name} must be an array of embeddings: {e}") from None
    if m.dtype == object or not (np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)):
        raise InvalidInput(f"{name} must be a numeric array of embeddings, got dtype {m.dtype}")
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise InvalidInput(f"{name} must be (d,) or a non-empty (n, d) array, got shape {tuple(m.shape)}")
    m = m.astype(np.float32)
    if not np.isfinite(m).all():
        bad = int(np.argwhere(~np.isfinite(m))[0][0])
        raise InvalidInput(f"{name}[{bad}] has a non-finite value")
    return m


@overload
def similarity(a: Any, b: Any = None, *, top_k: None = None) -> np.ndarray: ...
@overload
def similarity(a: Any, b: Any = None, *, top_k: int) -> TopK: ...
@checked_call
def similarity(a: Any, b: Any = None, *, top_k: int | None = None) -> np.ndarray | TopK:
    """Cosine similarity of each row of ``a`` (queries) with each row of ``b`` (``a`` itself by default).

    ``a`` and ``b`` are (n, d) and (m, d) arrays, or single (d,) vectors, such as
    ``pool.embed`` returns. Without ``top_k``: the (n, m) float32 scores. With it:
    a ``TopK`` of the ``min(top_k, m)`` best rows of ``b`` per query, highest
    score first, ties to the lower index. A zero vector scores 0 against
    everything, as sentence-transformers' ``cos_sim`` does.
    """
    qa = _matrix("a", a)
    qb = qa if b is None else _matrix("b", b)
    if qa.shape[1] != qb.shape[1]:
        raise InvalidInput(f"a has {qa.shape[1]}-d embeddings but b has {qb.shape[1]}-d ones")

    def unit(m: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(m.astype(np.float64), axis=1, keepdims=True)
        return (m / np.maximum(norms, 1e-12)).astype(np.float32)

    scores = unit(qa) @ unit(qb).T
    if top_k is None:
        return scores
    k = min(v.int_in("top_k", top_k, 1, v.INT32_MAX), scores.shape[1])
    # A stable sort of the negated scores: best first, ties keep the lower index.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return TopK(order, np.take_along_axis(scores, order, axis=1))
