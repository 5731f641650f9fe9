"""Normalizes the image inputs users pass into what the native decoder takes.

Paths, URLs, encoded bytes, base64 strings and data URIs are decoded (and
fetched) natively without the GIL: the bytes and strings are handed over as they
are, not copied. A writeable C-contiguous HWC uint8 numpy array with 3 channels
reaches the model without a copy; other arrays are converted to RGB natively
(one copy, without the GIL). PIL images are converted as the Hugging Face image
processors do it (``convert_to_rgb``: transparency composited over white). See
docs/images.md.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from ._validate import text
from .errors import InvalidInput

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def _pil_rgb(image: Any) -> np.ndarray:
    """A PIL image as RGB pixels, exactly as transformers' ``convert_to_rgb`` makes them."""
    from PIL import Image  # an object with .convert/.mode/.size came from Pillow

    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if image.mode == "RGB" and not has_alpha:
        return np.asarray(image)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def image_input(image: Any, index: int = 0) -> tuple[str, Any]:
    """One image as a ("path"|"url"|"bytes"|"base64"|"data_uri"|"array", payload) pair."""
    what = f"image #{index}"
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
        if isinstance(image, bytes):
            image = os.fsdecode(image)
    if isinstance(image, str):
        scheme = _SCHEME.match(image)
        if scheme:
            name = scheme.group(1).lower()
            if name in ("http", "https"):
                return ("url", text(what, image))
            raise InvalidInput(
                f"{what} ({image[:80]!r}): the URL scheme {name!r} is not supported; "
                "image URLs must be http:// or https:// (pass a local file as a path)"
            )
        if image[:5].lower() == "data:":
            return ("data_uri", image)
        if len(image) < 4096 and os.path.exists(image):  # longer is no path (PATH_MAX), skip the stat
            return ("path", image)
        return ("base64", image)
    if isinstance(image, bytes):
        return ("bytes", image)
    if isinstance(image, (bytearray, memoryview)):
        return ("bytes", bytes(image))
    if hasattr(image, "convert") and hasattr(image, "size") and hasattr(image, "mode"):  # PIL.Image
        if image.size[0] == 0 or image.size[1] == 0:
            raise InvalidInput(f"{what}: the image is empty (size {image.size})")
        try:
            return ("array", _pil_rgb(image))
        except (ValueError, OSError) as e:  # a mode Pillow cannot convert, a truncated lazy file
            raise InvalidInput(f"{what}: cannot make RGB pixels of this PIL image (mode {image.mode!r}): {e}") from e
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise InvalidInput(
                f"{what}: numpy images must be HWC uint8 with 1, 3 or 4 channels, "
                f"got shape {image.shape} dtype {image.dtype}"
            )
        if image.size == 0:
            raise InvalidInput(f"{what}: the image is empty (shape {image.shape})")
        return ("array", image)
    raise InvalidInput(
        f"{what}: unsupported type {type(image).__name__}; pass a path, URL, base64 string, "
        "data URI, bytes, PIL image or HWC uint8 numpy array"
    )
