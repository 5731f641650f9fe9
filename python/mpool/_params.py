"""Request parameters: each request's arguments, checked before anything is queued.

Every check raises ``InvalidInput`` naming the parameter (see ``_validate``, the
value-level helpers these build on) and returns what the extension takes. Nothing
here knows the Pool: any front end that turns requests into native calls (the
Pool, a server) checks its arguments with these.
"""

from __future__ import annotations

import os
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _core
from . import _validate as v
from ._images import image_input
from .errors import InternalError, InvalidInput

__all__ = [
    "IMAGE_DEFAULTS",
    "IMAGE_SHAPE_KEYS",
    "SKIP_LAYER_DEFAULTS",
    "MAX_IMAGE_SIDE",
    "MAX_IMAGE_STEPS",
    "ImageSettings",
    "generation",
    "generation_param",
    "image_defaults",
    "image_settings",
    "images",
    "labels",
    "prompt",
    "task",
    "texts",
    "timeout",
]

# Images larger than this per side are refused before any work (16384² RGB is 768 MB).
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_STEPS = 10_000


def _stop(name: str, value: Any) -> list[str]:
    stop = [value] if isinstance(value, str) else value
    if not isinstance(stop, (list, tuple)):
        raise InvalidInput(f"{name} must be a non-empty string or a list of them, got {value!r}")
    return [v.text(f"{name}[{i}]", s, allow_empty=False) for i, s in enumerate(stop)]


def _check_of(rule: Mapping[str, Any]) -> Callable[[str, Any], Any]:
    """The check of one entry of the extension's generation parameter table."""
    kind = rule["kind"]
    if kind == "integer":
        lo, hi = rule["min_int"], rule["max_int"]
        return lambda n, x: v.int_in(n, x, lo, hi)
    if kind == "real":
        bounds = {k: rule[k] for k in ("lo", "hi", "lo_open", "hi_open")}
        return lambda n, x: v.finite(n, x, **bounds)
    if kind == "flag":
        return v.flag
    if kind == "stop_strings":
        return _stop
    if kind == "token_ids":
        lo, hi = rule["min_int"], rule["max_int"]
        return lambda n, x: v.token_ids(n, x, lo, hi)
    raise InternalError(
        f"the extension's generation parameter {rule['name']!r} has a kind this package does not know: {kind!r}"
    )


# Each generation parameter's check, from the table the native models check requests with
# (capabilities/generation_params.h): one set of ranges for both sides.
_GENERATION_PARAMS: dict[str, Callable[[str, Any], Any]] = {
    rule["name"]: _check_of(rule) for rule in _core._generation_param_rules()
}


def generation(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The generation parameters of ``generate``/``chat``/``describe``; ``None`` values are dropped."""
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name not in _GENERATION_PARAMS:
            raise InvalidInput(
                f"unknown generation parameter {name!r}; known: {', '.join(sorted(_GENERATION_PARAMS))}"
            )
        if value is None:
            continue
        out[name] = _GENERATION_PARAMS[name](name, value)
    return out


def generation_param(name: str, value: Any, where: str | None = None) -> Any:
    """One generation parameter checked as ``generation`` checks it; errors name ``where``
    (the name a front end's request used for it), else ``name``."""
    return _GENERATION_PARAMS[name](where or name, value)


def task(x: str | None) -> str | None:
    """An embedding request's task (selects the model's prompt), or None."""
    return v.optional_text("task", x)


def timeout(x: float | None) -> float | None:
    """A request's timeout: None (the pool's), seconds > 0, or inf (no limit)."""
    return v.optional_duration("timeout", x)


def texts(x: str | Sequence[str]) -> list[str]:
    """The texts of an embedding request: one str or a non-empty sequence of them."""
    if isinstance(x, str):
        x = [x]
    if not isinstance(x, Sequence) or isinstance(x, (bytes, bytearray)):
        raise InvalidInput(f"texts must be a str or a sequence of str, got {type(x).__name__}")
    items = list(x)
    if not items:
        raise InvalidInput("texts is empty; pass at least one text")
    return [v.text(f"texts[{i}]", t) for i, t in enumerate(items)]


def pairs(x: Any) -> list[tuple[str, str]]:
    """The pairs of a scoring request: a non-empty sequence of (str, str)."""
    if isinstance(x, (str, bytes, bytearray)) or not isinstance(x, Sequence):
        raise InvalidInput(f"pairs must be a sequence of (query, document) pairs, got {type(x).__name__}")
    items = list(x)
    if not items:
        raise InvalidInput("pairs is empty; pass at least one (query, document) pair")
    out = []
    for i, p in enumerate(items):
        if isinstance(p, (str, bytes, bytearray)) or not isinstance(p, Sequence) or len(p) != 2:
            raise InvalidInput(f"pairs[{i}] must be a (query, document) pair of two str, got {v._show(p)}")
        out.append((v.text(f"pairs[{i}][0]", p[0], allow_empty=False), v.text(f"pairs[{i}][1]", p[1], allow_empty=False)))
    return out


def documents(x: Any) -> list[str]:
    """The documents of a rerank request: a non-empty sequence of non-empty str."""
    if isinstance(x, (str, bytes, bytearray)) or not isinstance(x, Sequence):
        raise InvalidInput(f"documents must be a sequence of str, got {type(x).__name__}")
    items = list(x)
    if not items:
        raise InvalidInput("documents is empty; pass at least one document")
    return [v.text(f"documents[{i}]", d, allow_empty=False) for i, d in enumerate(items)]


def labels(x: Sequence[str], template: str) -> list[str]:
    """Zero-shot labels put into ``template`` (which must hold one ``{}``): the texts to embed."""
    if not isinstance(template, str):
        raise InvalidInput(f"template must be a str with one {{}} for the label, got {type(template).__name__}")
    v.text("template", template)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise InvalidInput(f"template {template!r} is not a valid format string ({e})") from None
    if fields != [""]:
        raise InvalidInput(
            f"template must hold exactly one empty {{}} where the label goes, got {template!r}"
        )
    try:  # its format spec and conversion must take a str ("{:d}" cannot, "{:{}}" wants a second value)
        template.format("label")
    except (ValueError, IndexError, KeyError) as e:
        raise InvalidInput(f"template {template!r} cannot format a str label ({e})") from None
    if isinstance(x, str) or not isinstance(x, Sequence):
        raise InvalidInput(f"labels must be a sequence of str, got {type(x).__name__}")
    items = list(x)
    if not items:
        raise InvalidInput("labels is empty; pass at least one label")
    return [template.format(v.text(f"labels[{i}]", label, allow_empty=False)) for i, label in enumerate(items)]


def images(x: Any) -> list[tuple[str, Any]]:
    """The images of an image request: one image or a non-empty list of them, as the extension's inputs."""
    if isinstance(x, (str, bytes, bytearray, memoryview, np.ndarray, os.PathLike)) or hasattr(x, "convert"):
        x = [x]
    elif x is None or isinstance(x, Mapping):
        raise InvalidInput(f"images must be an image or a list of images, got {type(x).__name__}")
    items = list(v.iterable("images", x, "an image or a list of images"))
    if not items:
        raise InvalidInput("images is empty; pass at least one image")
    return [image_input(img, i) for i, img in enumerate(items)]


def prompt(x: str | Sequence[int]) -> str | list[int]:
    """A generation prompt: a non-empty str, or a non-empty sequence of token ids."""
    if isinstance(x, str):
        if not x:
            raise InvalidInput("prompt is empty")
        return v.text("prompt", x)
    if isinstance(x, (Sequence, np.ndarray)) and not isinstance(x, (bytes, bytearray, memoryview)):
        ids = v.token_ids("prompt", x)
        if not ids:
            raise InvalidInput("prompt must be a non-empty str or a non-empty list of token ids, got []")
        return ids
    raise InvalidInput(
        "prompt must be a non-empty str or a non-empty list of token ids, "
        f"got {type(x).__name__}"
        + (" (bytes are not token ids: decode them to a str)" if isinstance(x, (bytes, bytearray)) else "")
    )


class ImageSettings(NamedTuple):
    """A text-to-image request's checked settings, in the extension's argument order."""

    prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    true_cfg_scale: float
    negative_prompt: str | None
    seed: int | None
    strength: float
    latents: np.ndarray | None
    skip_layers: list[int]
    skip_layer_scale: float
    skip_layer_start: float
    skip_layer_stop: float
    max_sequence_length: int | None
    previews: bool
    float_output: bool


IMAGE_DEFAULTS: dict[str, float] = {"width": 512, "height": 512, "steps": 20, "guidance_scale": 7.0, "strength": 0.8}
"""What ``generate_image`` uses for a setting that neither the request nor the model sets."""

IMAGE_SHAPE_KEYS = ("size_multiple", "latent_channels", "latent_scale", "latent_packing")
"""What a model may also say in its defaults about the images it makes: width and
height must be multiples of ``size_multiple``; its latents have ``latent_channels``
channels at 1/``latent_scale`` of the image's size; ``latent_packing`` p: its
pipeline packs p x p latents into one token (FLUX), so latents may also come
packed, (1, tokens, channels * p * p), as diffusers' FLUX pipelines take them."""

SKIP_LAYER_DEFAULTS = (7, 8, 9)
"""The blocks skip-layer guidance leaves out when asked with ``True`` (diffusers' defaults for SD3.5)."""


def image_defaults(defaults: Any) -> dict[str, float]:
    """A text_to_image model's own defaults (``PyModel(defaults=...)``), checked like the request settings."""
    if defaults is None:
        return {}
    if not isinstance(defaults, Mapping):
        raise InvalidInput(f"defaults must be a mapping of setting to number, got {type(defaults).__name__}")
    known = (*IMAGE_DEFAULTS, *IMAGE_SHAPE_KEYS)
    unknown = sorted(str(k) for k in defaults if k not in known)
    if unknown:
        raise InvalidInput(f"defaults has unknown settings {unknown}; known: {', '.join(known)}")
    def shape_check(key: str) -> Callable[[Any], Any]:
        return lambda x: v.int_in(f"defaults[{key!r}]", x, 1, 1024)

    checks: dict[str, Callable[[Any], Any]] = {
        "width": lambda x: v.int_in("defaults['width']", x, 1, MAX_IMAGE_SIDE),
        "height": lambda x: v.int_in("defaults['height']", x, 1, MAX_IMAGE_SIDE),
        "steps": lambda x: v.int_in("defaults['steps']", x, 1, MAX_IMAGE_STEPS),
        "guidance_scale": lambda x: v.finite("defaults['guidance_scale']", x, lo=0),
        "strength": lambda x: v.finite("defaults['strength']", x, lo=0, hi=1),
        **{k: shape_check(k) for k in IMAGE_SHAPE_KEYS},
    }
    return {k: float(checks[k](x)) for k, x in defaults.items()}


def _skip_layers(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (bool, np.bool_)):  # numpy.bool_ too, as every other flag
        return list(SKIP_LAYER_DEFAULTS) if value else []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise InvalidInput(
            f"skip_layer_guidance must be True, False or a non-empty list of block indices, got {value!r}"
        )
    return [v.int_in(f"skip_layer_guidance[{i}]", x, 0, 4096) for i, x in enumerate(value)]


def _latents(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidInput(f"latents must be a numeric array, got {type(value).__name__}: {e}") from None
    if array.ndim not in (3, 4) or array.shape[0] != 1:
        raise InvalidInput(f"latents must be one latent of shape (1, channels, height, width), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InvalidInput("latents must be finite (found NaN or infinity)")
    return np.ascontiguousarray(array)


def image_settings(
    prompt: Any,
    *,
    width: Any,
    height: Any,
    steps: Any,
    guidance_scale: Any,
    negative_prompt: Any,
    seed: Any,
    true_cfg_scale: Any = None,
    strength: Any,
    init_image: bool = False,
    latents: Any = None,
    skip_layer_guidance: Any = None,
    skip_layer_scale: Any = None,
    skip_layer_start: Any = None,
    skip_layer_stop: Any = None,
    max_sequence_length: Any = None,
    preview: Any = True,
    output_type: Any = "pil",
    model_defaults: Mapping[str, float] | None = None,
) -> ImageSettings:
    """The settings of ``generate_image``; a setting left None takes ``model_defaults``, then IMAGE_DEFAULTS."""
    chosen = {**IMAGE_DEFAULTS, **(model_defaults or {})}
    if strength is not None and not init_image:
        raise InvalidInput("strength applies to img2img: give init_image too")

    def pick(name: str, value: Any) -> Any:
        if value is not None:
            return value
        x = chosen[name]
        return int(x) if name in ("width", "height", "steps") else x

    width, height, steps = pick("width", width), pick("height", height), pick("steps", steps)
    guidance_scale, strength = pick("guidance_scale", guidance_scale), pick("strength", strength)
    width = v.int_in("width", width, 1, MAX_IMAGE_SIDE)
    height = v.int_in("height", height, 1, MAX_IMAGE_SIDE)
    multiple = int(chosen.get("size_multiple", 1))
    for name, side in (("width", width), ("height", height)):
        if side % multiple:
            raise InvalidInput(f"{name} must be a multiple of {multiple} for this model, got {side}")
    guidance_scale = v.finite("guidance_scale", guidance_scale, lo=0)
    array = _latents(latents)
    if array is not None and "latent_channels" in chosen:
        scale = int(chosen.get("latent_scale", 1))
        channels, rows, cols = int(chosen["latent_channels"]), height // scale, width // scale
        expected = (1, channels, rows, cols)
        p = int(chosen.get("latent_packing", 1))
        packed = (1, (rows // p) * (cols // p), channels * p * p)
        if p > 1 and array.shape == packed:
            # diffusers' _pack_latents undone: (1, r, c, channels, p, p) -> (1, channels, rows, cols)
            array = np.ascontiguousarray(
                array.reshape(1, rows // p, cols // p, channels, p, p).transpose(0, 3, 1, 4, 2, 5).reshape(expected)
            )
        if array.shape != expected:
            also = f" or {packed} packed" if p > 1 else ""
            raise InvalidInput(
                f"latents must have shape {expected}{also} for a {width}x{height} image, got {array.shape}"
            )
    skip_layers = _skip_layers(skip_layer_guidance)
    if skip_layers and guidance_scale <= 1:
        raise InvalidInput("skip_layer_guidance works inside classifier-free guidance: it needs guidance_scale > 1")
    start = v.finite("skip_layer_start", 0.01 if skip_layer_start is None else skip_layer_start, lo=0, hi=1)
    stop = v.finite("skip_layer_stop", 0.2 if skip_layer_stop is None else skip_layer_stop, lo=0, hi=1)
    if start > stop:
        raise InvalidInput(f"skip_layer_start ({start}) must not exceed skip_layer_stop ({stop})")
    if output_type not in ("pil", "np"):
        raise InvalidInput(f"output_type must be 'pil' or 'np', got {output_type!r}")
    return ImageSettings(
        prompt=v.text("prompt", prompt, allow_empty=True),  # "" is unconditional, as in diffusers
        width=width,
        height=height,
        steps=v.int_in("steps", steps, 1, MAX_IMAGE_STEPS),
        guidance_scale=guidance_scale,
        true_cfg_scale=v.finite("true_cfg_scale", 1.0 if true_cfg_scale is None else true_cfg_scale, lo=0),
        negative_prompt=v.optional_text("negative_prompt", negative_prompt),
        seed=v.optional_int_in("seed", seed, 0, v.UINT64_MAX),
        strength=v.finite("strength", strength, lo=0, hi=1),
        latents=array,
        skip_layers=skip_layers,
        skip_layer_scale=v.finite("skip_layer_scale", 2.8 if skip_layer_scale is None else skip_layer_scale, lo=0),
        skip_layer_start=start,
        skip_layer_stop=stop,
        max_sequence_length=v.optional_int_in("max_sequence_length", max_sequence_length, 1, 512),
        previews=v.flag("preview", preview),
        float_output=output_type == "np",
    )
