"""Model inspection and the safetensors reader (the native loading layer).

Nothing here contacts a model hub: models are local directories or snapshots that
are already in the Hugging Face cache.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable

from . import _core
from . import _validate as v
from ._signature import checked_call

__all__ = ["LoadedWeights", "inspect", "safetensors_load"]

_log = logging.getLogger("mpool.loading")


class LoadedWeights(dict):
    """Tensor name -> numpy array, plus what the load noticed.

    ``zero_copy`` names the arrays that view the memory-mapped file instead of a
    copy (they keep the mapping alive; writing to one copies only the touched
    page, never the file). ``warnings`` lists unexpected extra tensors and shard
    index inconsistencies; they are also logged on the ``mpool.loading`` logger.
    """

    zero_copy: frozenset[str]
    warnings: list[str]


@checked_call
def safetensors_load(
    path_or_dir: str | os.PathLike[str],
    dtype: str | None = None,
    *,
    expected: Iterable[str] | None = None,
) -> LoadedWeights:
    """Load a ``.safetensors`` file, a ``model.safetensors.index.json`` or a model directory.

    ``dtype`` ("float32", "float16", "bfloat16", "float64") converts the floating-point
    tensors on load; integer and bool tensors keep their dtype. numpy has no bfloat16
    (nor float8), so such tensors are returned as float32, which represents each of
    their values exactly: ``dtype="bfloat16"`` rounds to bfloat16 and then widens.
    With ``expected``, exactly those tensors are loaded: a missing one raises
    InvalidInput naming it, and extra stored tensors become warnings.
    Malformed files and other formats (pickle, GGUF) raise InvalidInput.
    """
    names = None
    if expected is not None:
        names = [v.text(f"expected[{i}]", x) for i, x in enumerate(v.iterable("expected", expected, "tensor names"))]
    loaded = _core._safetensors_load(v.path("path_or_dir", path_or_dir), v.optional_text("dtype", dtype), names)
    out = LoadedWeights(loaded.arrays())
    out.zero_copy = frozenset(loaded.zero_copy)
    out.warnings = list(loaded.warnings)
    for message in out.warnings:
        _log.warning("%s", message)
    return out


@checked_call
def inspect(path_or_repo_id: str | os.PathLike[str]) -> dict[str, Any]:
    """Report what a model directory (or a repo id in the local Hugging Face cache) holds.

    The dict names the resolved path, model_type and architectures, the weight and
    tokenizer files, the sentence-transformers modules (pooling, normalize, prompts,
    max_seq_length) and, for each registered model family, whether it supports the
    model or why not (``support`` sums this up in one sentence).

    ``components`` lists every part of the directory: the model and the configs
    nested in its config.json (``text_config``, ``vision_config``), each folder of a
    diffusers pipeline (``pipeline`` holds its model_index.json), every tokenizer,
    the image processor, and the prefixes a lone ``.safetensors`` file groups its
    tensors under. Each has ``name``, ``kind``, ``class``, ``folder``, a ``config``
    summary, ``weights`` (tensor count, parameters, bytes, dtypes, per-prefix
    counts), ``tokenizer_files`` and ``error``.

    ``details`` is what the first family that serves the model states about it
    (also per family under ``families``): for a mixture-of-experts decoder,
    ``parameters`` (every stored one, all experts resident),
    ``active_parameters_per_token`` (each MoE layer's experts counted as top-k of
    their number), ``experts`` and ``experts_per_token``; empty otherwise.
    """
    _core.register_builtin_families()  # the native families answer too
    return json.loads(_core._inspect_json(v.path("path_or_repo_id", path_or_repo_id)))

