"""Normalizes the image inputs users pass into what the native decoder takes.

Paths, URLs and encoded bytes are decoded (and fetched) natively without the GIL;
base64 strings and data URIs are unwrapped here (a C-speed transport decode), PIL
images and numpy arrays are handed over as pixels.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

import numpy as np

from ._validate import text
from .errors import InvalidInput


def _from_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"{what}: not valid base64 ({e})") from None


def _not_empty(pixels: np.ndarray, what: str) -> np.ndarray:
    if pixels.size == 0:
        raise InvalidInput(f"{what}: the image is empty (shape {pixels.shape})")
    return pixels


def image_input(image: Any, index: int = 0) -> tuple[str, Any]:
    """One image as a ("path"|"url"|"bytes"|"array", payload) pair."""
    what = f"image #{index}"
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if image.startswith(("http://", "https://")):
            return ("url", text(what, image))
        if image.startswith("data:"):
            header, _, data = image.partition(",")
            if ";base64" not in header:
                raise InvalidInput(f"{what}: only base64 data URIs are supported")
            return ("bytes", _from_base64(data, what))
        if os.path.exists(image):
            return ("path", image)
        try:
            return ("bytes", base64.b64decode(image, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidInput(
                f"{what}: {image[:80]!r} is not an existing file, an http(s) URL, a data URI or base64"
            ) from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(image))
    if hasattr(image, "convert") and hasattr(image, "size") and hasattr(image, "mode"):  # PIL.Image
        return ("array", _not_empty(np.asarray(image.convert("RGB")), what))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise InvalidInput(
                f"{what}: numpy images must be HWC uint8 with 1, 3 or 4 channels, "
                f"got shape {image.shape} dtype {image.dtype}"
            )
        return ("array", _not_empty(np.ascontiguousarray(image), what))
    raise InvalidInput(
        f"{what}: unsupported type {type(image).__name__}; pass a path, URL, base64 string, "
        "data URI, bytes, PIL image or HWC uint8 numpy array"
    )
