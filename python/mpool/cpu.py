"""The CPU's compute choices, made once for the whole process.

Which library runs float32 GEMMs (the matrix products of every float32 model on
the CPU, past the decode kernel's few rows):

- ``"aten"``: torch's own path, its BLAS (MKL in the PyPI torch);
- ``"onednn"``: the oneDNN library inside torch, with the layer's activation
  (gelu, gelu_tanh, relu, silu) and residual sum fused into the product.

MKL picks its code by CPU vendor: on an AMD CPU with AVX-512 it runs its AVX2
code, while oneDNN generates AVX-512 code for the CPU it finds. So the default,
``"auto"``, is oneDNN on a non-Intel CPU with AVX-512 and ATen elsewhere. The
environment variable ``MPOOL_FLOAT32_GEMM`` (``auto``, ``aten``, ``onednn``)
sets the choice at start-up; :func:`set_float32_gemm` changes it later. Both
compute in IEEE float32: results agree to float32 rounding, not to the bit.

Who runs attention over many query rows (encoders, prompt prefill, vision and
diffusion transformers) in float32 on the CPU:

- ``"mpool"`` (the default): mpool's kernel, at the CPU's vector width
  (AVX-512 or AVX2, found at run time), skipping padded keys;
- ``"aten"``: torch's ``scaled_dot_product_attention``.

The environment variable ``MPOOL_CPU_ATTENTION`` sets it at start-up;
:func:`set_cpu_attention` changes it later. Both compute in float32 with an
exact softmax and agree to float32 rounding. Decode steps (one query row) run
mpool's decode kernel either way.
"""

from __future__ import annotations

from . import _core
from .errors import InvalidInput

__all__ = ["cpu_attention", "float32_gemm", "float32_gemm_auto", "set_cpu_attention", "set_float32_gemm"]

_BACKENDS = ("auto", "aten", "onednn")
_ATTENTION = ("mpool", "aten")


def float32_gemm() -> str:
    """The library that runs float32 GEMMs on the CPU now: ``"aten"`` or ``"onednn"``."""
    return str(_core.float32_gemm())


def float32_gemm_auto() -> tuple[str, str]:
    """What ``"auto"`` picks on this machine, and why (a sentence)."""
    backend, reason = _core.float32_gemm_auto()
    return str(backend), str(reason)


def set_float32_gemm(backend: str) -> None:
    """Sets the float32 GEMM library for every model of the process, from the
    next product on: ``"auto"``, ``"aten"`` or ``"onednn"``.

    Raises :class:`InvalidInput` for another value, or for ``"onednn"`` where
    this torch was built without oneDNN.
    """
    if not isinstance(backend, str) or backend not in _BACKENDS:
        raise InvalidInput(f"set_float32_gemm: backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
    _core.set_float32_gemm(backend)


def cpu_attention() -> str:
    """Who runs attention on the CPU now: ``"mpool"`` or ``"aten"``."""
    return str(_core.cpu_attention())


def set_cpu_attention(backend: str) -> None:
    """Sets who runs attention on the CPU for every model of the process, from
    the next forward on: ``"mpool"`` or ``"aten"``.

    Raises :class:`InvalidInput` for another value.
    """
    if not isinstance(backend, str) or backend not in _ATTENTION:
        raise InvalidInput(f"set_cpu_attention: backend must be one of {', '.join(_ATTENTION)}, got {backend!r}")
    _core.set_cpu_attention(backend)
