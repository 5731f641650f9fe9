"""Stream wrappers: what ``generate``, ``describe`` and ``generate_image`` return.

Each wraps a native stream (``mpool._core.TextStream`` / ``ImageStream``):
iterating waits natively with the GIL released, ``async for`` waits on the
event loop (``_async.wait_chunks``), and closing cancels the request. Nothing
here knows the Pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from ._async import wait_chunks
from .errors import PoolError

__all__ = ["ImageStream", "TextStream"]


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


class ImageStream:
    """Progress chunks of an image generation; ``result()`` gives the image."""

    def __init__(self, native: Any) -> None:
        self._native = native
        self._image: Any = None

    def __iter__(self) -> ImageStream:
        return self

    def __next__(self) -> Any:
        return next(self._native)

    def result(self) -> Any:
        """Waits for the end (GIL released) and returns the image as a PIL.Image."""
        if self._image is None:
            for _ in self._native:
                pass
            pixels = self._native.final_image()
            if pixels is None:
                raise PoolError("the image stream ended without an image")
            from PIL import Image

            self._image = Image.fromarray(np.ascontiguousarray(pixels))
        return self._image

    def close(self) -> None:
        """Cancels the generation and frees its replica."""
        self._native.cancel()

    def __enter__(self) -> ImageStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Any]:
        return wait_chunks(self._native.poll, self._native)

    async def aresult(self) -> Any:
        """``result()`` without blocking the event loop or holding a thread while it waits."""
        if self._image is None:
            async for _ in self:
                pass
        return self.result()
