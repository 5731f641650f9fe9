"""A call that does not fit a public function's parameters (an unknown keyword,
a missing or an extra argument) raises InvalidArguments, an InvalidInput that
names the function and its parameters, instead of Python's bare TypeError.

The check costs nothing on a good call: the parameters are bound against the
signature only after the call has raised a TypeError, and a TypeError raised
from inside a call whose arguments fit goes on as it was.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import InvalidArguments

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


def _check_binding(signature: inspect.Signature, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        shown = [p for p in signature.parameters if p != "self"]
        raise InvalidArguments(f"{name}() {e}; its parameters: {', '.join(shown) or 'none'}") from None


def checked_call(fn: F) -> F:
    """``fn`` with argument-binding errors raised as InvalidArguments."""
    signature = inspect.signature(fn)
    name = fn.__qualname__
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def checked_async(*args: Any, **kwargs: Any) -> Any:
            try:
                coroutine = fn(*args, **kwargs)
            except TypeError:
                _check_binding(signature, name, args, kwargs)
                raise
            return await coroutine

        return checked_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TypeError:
            _check_binding(signature, name, args, kwargs)
            raise

    return checked  # type: ignore[return-value]


def checked_calls(cls: C) -> C:
    """Every public method of ``cls`` (and ``__init__``) as ``checked_call``."""
    for attr_name, attr in list(vars(cls).items()):
        if attr_name.startswith("_") and attr_name != "__init__":
            continue
        if isinstance(attr, staticmethod):
            setattr(cls, attr_name, staticmethod(checked_call(attr.__func__)))
        elif isinstance(attr, classmethod):
            setattr(cls, attr_name, classmethod(checked_call(attr.__func__)))
        elif inspect.isfunction(attr):
            setattr(cls, attr_name, checked_call(attr))
    return cls
