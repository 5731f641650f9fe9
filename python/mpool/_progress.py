"""Progress bars over bulk calls: ``embed(..., progress=True)`` and
``embed_images(..., progress=True)``.

A ``tqdm.auto`` bar over the inputs done (a widget in a notebook, a text bar in
a terminal), as sentence-transformers' ``show_progress_bar`` shows. The call's
native ``Progress`` counts the inputs of each sub-batch as it succeeds; the bar
is drawn on the caller's thread (or its event loop), never on a replica thread.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _core
from ._async import await_native

__all__ = ["await_with_bar", "new_progress", "result_with_bar"]

# The longest the caller waits without looking at the clock (Ctrl-C, the deadline).
_POLL_S = 0.5


def new_progress(total: int) -> Any:
    """A native progress counter for a call over ``total`` inputs."""
    return _core.Progress(total)


class _Bar:
    def __init__(self, total: int, unit: str) -> None:
        from tqdm.auto import tqdm

        # With no stderr (pythonw, a service, `2>&-`) there is nowhere to draw: no bar.
        self._bar = tqdm(total=total, unit=unit, **({"disable": True} if sys.stderr is None else {}))
        self._seen = 0

    def show(self, done: int) -> None:
        if done > self._seen:
            self._bar.update(done - self._seen)
            self._seen = done

    def close(self) -> None:
        self._bar.close()


def result_with_bar(future: Any, progress: Any, unit: str) -> np.ndarray:
    """Waits for ``future`` (GIL released) while a bar follows ``progress``; returns its result."""
    bar = _Bar(progress.total, unit)
    try:
        seen = 0
        while not future.done():
            left = future.remaining()
            if left <= 0:
                break  # result() settles it as Timeout
            seen = progress.wait(seen, min(left, _POLL_S))
            bar.show(seen)
        out = future.result()
        bar.show(progress.done)
        return out
    except BaseException:
        future.cancel()  # Ctrl-C (or any error) ends the call and its sub-batches; a no-op once settled
        raise
    finally:
        bar.close()


async def await_with_bar(future: Any, progress: Any, unit: str) -> np.ndarray:
    """``await_native`` with a bar that follows ``progress`` (read on the loop, no thread held)."""
    bar = _Bar(progress.total, unit)
    try:
        # A cancelled task cancels the call in await_native.
        out = await await_native(future, on_tick=lambda: bar.show(progress.done), tick_s=_POLL_S)
        bar.show(progress.done)
        return out
    finally:
        bar.close()
