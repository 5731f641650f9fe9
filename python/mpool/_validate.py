"""Argument checks shared by the whole Python API.

Every check raises ``InvalidInput`` (a ``ValueError``) naming the parameter and
showing the value, so no bad argument reaches the extension, where it would
surface as a pybind11 ``TypeError`` or be silently converted. Each returns the
value as the plain Python type the extension takes (``int``, ``float``, ``str``).

Integers are checked against the C++ type they become and a sane upper limit;
durations accept ``inf`` ("no limit"), never NaN or a bool.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InvalidInput

INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


def _show(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_bool(x: Any) -> bool:
    return isinstance(x, (bool, np.bool_))


def _number(name: str, x: Any, what: str) -> float:
    if _is_bool(x) or not isinstance(x, numbers.Real):
        raise InvalidInput(f"{name} must be {what}, got {_show(x)} ({type(x).__name__})")
    number: Any = x  # numbers.Real declares no comparison with int
    try:
        value = float(number)
    except OverflowError:  # an int or Fraction beyond float's range: as large as inf
        value = -math.inf if number < 0 else math.inf
    if math.isnan(value):
        raise InvalidInput(f"{name} must be {what}, got NaN")
    return value


def key(x: Any, name: str = "key") -> str:
    """A model key: a str (bytes and everything else are refused)."""
    if not isinstance(x, str):
        raise InvalidInput(f"{name} must be a str, got {_show(x)} ({type(x).__name__})")
    return text(name, x)


def text(name: str, x: Any, *, allow_empty: bool = True) -> str:
    """A str that is valid Unicode (lone surrogates cannot become UTF-8)."""
    if not isinstance(x, str):
        raise InvalidInput(f"{name} must be a str, got {_show(x)} ({type(x).__name__})")
    if not x and not allow_empty:
        raise InvalidInput(f"{name} must be a non-empty str")
    if not x.isascii():
        try:
            x.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidInput(f"{name} is not valid Unicode ({e.reason} at index {e.start})") from None
    return str(x)


def path(name: str, x: Any) -> str:
    """A filesystem path or repo id: a str or an os.PathLike of a str (not bytes)."""
    if not isinstance(x, (str, os.PathLike)):
        raise InvalidInput(f"{name} must be a str or os.PathLike, got {_show(x)} ({type(x).__name__})")
    p = os.fspath(x)
    if not isinstance(p, str):  # a bytes path
        raise InvalidInput(f"{name} must be a str path, got {_show(p)}")
    return p


def optional_text(name: str, x: Any) -> str | None:
    return None if x is None else text(name, x)


def flag(name: str, x: Any) -> bool:
    """A bool (truthy strings or numbers are refused: ``truncate="no"`` is a mistake)."""
    if not _is_bool(x):
        raise InvalidInput(f"{name} must be True or False, got {_show(x)} ({type(x).__name__})")
    return bool(x)


def int_in(name: str, x: Any, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (bools, floats and strings are refused; numpy ints are fine)."""
    if _is_bool(x) or isinstance(x, (float, str, bytes)):
        raise InvalidInput(f"{name} must be an int in [{lo}, {hi}], got {_show(x)} ({type(x).__name__})")
    try:
        value = operator.index(x)
    except TypeError:
        raise InvalidInput(f"{name} must be an int in [{lo}, {hi}], got {_show(x)} ({type(x).__name__})") from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be an int in [{lo}, {hi}], got {value}")
    return int(value)


def optional_int_in(name: str, x: Any, lo: int, hi: int) -> int | None:
    return None if x is None else int_in(name, x, lo, hi)


def finite(
    name: str,
    x: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number, optionally within bounds (open or closed at each end)."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    if lo is not None and hi is not None:
        what = f"a finite number in {left}{lo:g}, {hi:g}{right}"
    elif lo is not None:
        what = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        what = f"a finite number {'<' if hi_open else '<='} {hi:g}"
    else:
        what = "a finite number"
    value = _number(name, x, what)
    if (
        not math.isfinite(value)
        or (lo is not None and (value <= lo if lo_open else value < lo))
        or (hi is not None and (value >= hi if hi_open else value > hi))
    ):
        raise InvalidInput(f"{name} must be {what}, got {_show(x)}")
    return value


def duration(
    name: str,
    x: Any,
    *,
    allow_zero: bool = False,
    allow_negative: bool = False,
    allow_inf: bool = True,
) -> float:
    """Seconds: a real number, NaN and bools refused; ``inf`` means no limit (where allowed).

    Zero is refused unless ``allow_zero`` (a zero request timeout could never be met),
    negative values unless ``allow_negative`` (keep-alive: negative means never).
    """
    if allow_negative:
        what = "a number of seconds (negative: never)"
    elif allow_zero:
        what = "a number of seconds >= 0"
    else:
        what = "a number of seconds > 0"
    if allow_inf:
        what += ", or inf for no limit"
    value = _number(name, x, what)
    if (
        (math.isinf(value) and not allow_inf)
        or (value < 0 and not allow_negative)
        or (value == 0 and not allow_zero)
    ):
        raise InvalidInput(f"{name} must be {what}, got {_show(x)}")
    return value


def optional_duration(name: str, x: Any, **kw: Any) -> float | None:
    return None if x is None else duration(name, x, **kw)


def devices(x: Any, name: str = "devices") -> list[str]:
    """A device name ("cpu", "cuda:0", ...) or a non-empty sequence of them."""
    if isinstance(x, str):
        x = [x]
    if not isinstance(x, Sequence) or isinstance(x, (bytes, bytearray)):
        raise InvalidInput(f"{name} must be a device name or a list of them, got {_show(x)} ({type(x).__name__})")
    out = [text(f"{name}[{i}]", d, allow_empty=False) for i, d in enumerate(x)]
    if not out:
        raise InvalidInput(f"{name} is empty; name at least one device (e.g. 'cpu')")
    return out


def token_ids(name: str, x: Any, lo: int = INT64_MIN, hi: int = INT64_MAX) -> list[int]:
    """A sequence of token ids, each in [lo, hi] (int64 by default; the model checks its vocabulary).

    Bytes, floats and bools are refused: ``bytes`` and ``bytearray`` are sequences
    of ints, but never token ids.
    """
    if isinstance(x, (str, bytes, bytearray, memoryview)) or not isinstance(x, (Sequence, np.ndarray)):
        raise InvalidInput(f"{name} must be a list of int token ids, got {_show(x)} ({type(x).__name__})")
    return [int_in(f"{name}[{i}]", t, lo, hi) for i, t in enumerate(x)]


def budgets(name: str, x: Any) -> dict[str, float]:
    """{device: MB}: finite, >= 0."""
    if x is None:
        return {}
    if not isinstance(x, Mapping):
        raise InvalidInput(f"{name} must be a dict of device name to MB, got {_show(x)} ({type(x).__name__})")
    return {
        text(f"{name} key", device, allow_empty=False): finite(f"{name}[{device!r}]", mb, lo=0)
        for device, mb in x.items()
    }


def iterable(name: str, x: Any, what: str) -> Iterable[Any]:
    try:
        iter(x)
    except TypeError:
        raise InvalidInput(f"{name} must be {what}, got {_show(x)} ({type(x).__name__})") from None
    return x
