"""Stream wrappers: what ``generate``, ``describe`` and ``generate_image`` return.

Each wraps a native stream (``mpool._core.TextStream`` / ``ImageStream``):
iterating waits natively with the GIL released, ``async for`` waits on the
event loop (``_async.wait_chunks``), and closing cancels the request. Nothing
here knows the Pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._async import wait_chunks
from ._signature import checked_calls
from .errors import PoolError

__all__ = ["ImageProgress", "ImageStream", "TextStream"]


@checked_calls
class TextStream:
    """Chunks of generated text. Iterating waits natively with the GIL released.

    Closing it (``close()``, ``with``, or dropping it) cancels the generation and
    frees its replica. After the end, ``finish_reason`` and ``stats`` hold the final
    chunk's values; ``text()`` collects what is left into one string.
    """

    def __init__(self, native: Any) -> None:
        self._native = native
        self.finish_reason: str | None = None
        self.stats: Any = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._native)
        except StopIteration:
            raise
        except PoolError:
            if self.finish_reason is None:
                self.finish_reason = "error"
            raise
        return self._seen(chunk)

    def _seen(self, chunk: Any) -> Any:
        if chunk is not None and chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
            self.stats = chunk.stats
        return chunk

    def _poll(self) -> tuple[bool, Any]:
        try:
            got, chunk = self._native.poll()
        except PoolError:
            if self.finish_reason is None:
                self.finish_reason = "error"
            raise
        return got, self._seen(chunk)

    def text(self) -> str:
        """Reads the stream to its end and returns the text."""
        return "".join(chunk.text for chunk in self)

    def close(self) -> None:
        """Cancels the generation (if still running) and frees its replica."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        self._native.cancel()

    cancel = close

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Any]:
        chunks = wait_chunks(self._poll, self._native)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # now, on this loop: never left to the garbage collector
            if self.finish_reason is None:
                self.close()


@dataclass(frozen=True)
class ImageProgress:
    """One step of an image generation."""

    step: int
    """Steps done so far (1 after the first)."""
    total: int
    """Steps this generation runs."""
    elapsed: float
    """Seconds since the generation started on its replica."""
    preview: Any = None
    """A small ``PIL.Image`` of the current estimate, or None."""


def _pil(pixels: Any) -> Any:
    from PIL import Image

    array = np.ascontiguousarray(pixels)
    return Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[attr-defined]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


class _ProgressDisplay:
    """A tqdm bar (tqdm.auto: a widget in notebooks) and, in a notebook, the
    latest preview shown in place."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bar: Any = None
        self._handle: Any = None
        self._notebook = _in_notebook()

    def update(self, p: ImageProgress) -> None:
        if self._bar is None:
            self._bar = self._tqdm(total=p.total, unit="step")
        self._bar.update(p.step - self._bar.n)
        if p.preview is not None and self._notebook:
            from IPython.display import display

            if self._handle is None:
                self._handle = display(p.preview, display_id=True)
            else:
                self._handle.update(p.preview)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@checked_calls
class ImageStream:
    """Progress of an image generation, one ``ImageProgress`` per step;
    ``result()`` gives the image (a PIL image, or a float32 array with
    ``output_type="np"``). Closing it cancels the generation and frees its replica."""

    def __init__(self, native: Any, progress: bool = False) -> None:
        self._native = native
        self._image: Any = None
        self._display = _ProgressDisplay() if progress else None

    def _wrap(self, p: Any) -> ImageProgress:
        preview = p.preview
        chunk = ImageProgress(p.step, p.total, p.elapsed, None if preview is None else _pil(preview))
        if self._display is not None:
            self._display.update(chunk)
        return chunk

    def __iter__(self) -> ImageStream:
        return self

    def __next__(self) -> ImageProgress:
        try:
            return self._wrap(next(self._native))
        except StopIteration:
            if self._display is not None:
                self._display.close()
            raise
        except BaseException:
            if self._display is not None:
                self._display.close()
            raise

    def result(self) -> Any:
        """Waits for the end (GIL released) and returns the image: a PIL.Image, or
        with ``output_type="np"`` a float32 (height, width, channels) array in [0, 1]."""
        if self._image is None:
            for _ in self:
                pass
            pixels = self._native.final_image()
            if pixels is None:
                raise PoolError("the image stream ended without an image")
            self._image = np.ascontiguousarray(pixels) if pixels.dtype == np.float32 else _pil(pixels)
        return self._image

    def close(self) -> None:
        """Cancels the generation and frees its replica."""
        if self._display is not None:
            self._display.close()
        self._native.cancel()

    def __enter__(self) -> ImageStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _chunks(self) -> AsyncIterator[ImageProgress]:
        try:
            async for p in wait_chunks(self._native.poll, self._native):
                yield self._wrap(p)
        except asyncio.CancelledError:
            # The task waiting on it (aresult(), async for) was cancelled, as
            # asyncio.wait_for's timeout does: so is the generation.
            self._native.cancel()
            raise
        finally:
            if self._display is not None:
                self._display.close()

    def __aiter__(self) -> AsyncIterator[ImageProgress]:
        return self._chunks()

    async def aresult(self) -> Any:
        """``result()`` without blocking the event loop or holding a thread while it
        waits. Cancelling the task that awaits it cancels the generation."""
        if self._image is None:
            async for _ in self:
                pass
        return self.result()
