"""The Pool: register models, then embed, generate, describe and draw with them.

The Pool owns the native pool and the models' registrations. What a request's
arguments may be is in ``_params``, the asyncio bridge in ``_async`` and the
stream objects in ``_streams``; none of those depend on the Pool.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _core
from . import _params as req
from . import _validate as v
from ._async import await_native, submit_off_loop
from ._images import image_input
from ._signature import checked_calls
from ._progress import await_with_bar, new_progress, result_with_bar
from ._params import MAX_IMAGE_SIDE, MAX_IMAGE_STEPS
from ._streams import ImageStream, TextStream
from .chat import ChatTemplate, split_images
from .errors import InvalidInput, ModelNotFound, NotCopyable, ShuttingDown
from .models import MAX_INTRA_OP_THREADS, MAX_REPLICAS, Model, NativeModel, keep_alive_seconds

# TextStream, ImageStream and the image limits now live in _streams and _params;
# they stay importable from here, where they always were.
__all__ = ["MAX_IMAGE_SIDE", "MAX_IMAGE_STEPS", "ImageStream", "Pool", "TextStream"]

_LIVE_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    # Before the interpreter finalizes, so replica threads can still take the GIL:
    # the live pools, then those whose last reference dropped on their own thread
    # (a fresh native thread is shutting them down).
    for pool in list(_LIVE_POOLS):
        pool.close(timeout=1.0)
    _core._wait_for_closing_pools(60.0)


# --- fork() ---------------------------------------------------------------------
#
# A forked child has only the thread that called fork(): the replica and maintenance
# threads of every pool exist in the parent alone, and any mutex one of them held at
# that moment stays locked in the child forever. So a pool inherited through fork()
# must never touch its native side in the child: not for requests, not to shut
# down, and not to be destroyed (its destructor joins those threads and would hang
# the child at exit). The hook below swaps each live pool's native object for a
# stand-in that raises ShuttingDown, and deliberately leaks the native object: its
# reference count is raised once and never lowered, so its destructor never runs,
# not even at interpreter exit. The memory is the child's copy of the parent's and
# goes away with the child.

_FORKED_MESSAGE = (
    "this mpool.Pool was created in the parent process before fork() and cannot be used in the "
    "child (its native threads exist only in the parent); create a new Pool in the child"
)


class _ForkedNative:
    """Stands in for the native pool of a Pool inherited through fork(): every use raises."""

    def __getattr__(self, name: str) -> Any:
        raise ShuttingDown(_FORKED_MESSAGE)


def _after_fork_in_child() -> None:
    for pool in list(_LIVE_POOLS):
        pool._abandon_after_fork()
    _LIVE_POOLS.clear()  # so the atexit hook leaves them alone too


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@checked_calls
class Pool:
    """Many models in one process, each served by native replica threads.

    >>> with mpool.Pool() as pool:
    ...     pool.register("emb", mpool.PyModel("text_embedding", loader, memory_mb=300))
    ...     vectors = pool.embed("emb", ["hello"])

    A Pool cannot be copied or pickled (``NotCopyable``), and one inherited through
    ``fork()`` is unusable in the child (``ShuttingDown``).

    Image URLs: ``fetch_timeout`` bounds each fetch, ``max_image_bytes`` each body
    (and each image file), and with ``allow_private_urls=False`` (the default) no
    connection is made to a loopback, private, link-local, unique-local or
    unspecified address, checked on the address connected to for the first
    request and every redirect (docs/images.md).

    Threads: each replica runs its torch ops on ``intra_op_threads`` threads of
    its own (set on the replica's thread only; the process default and the
    caller's threads are untouched). A model's ``register(intra_op_threads=...)``
    (or ``NativeModel``'s) wins, then this pool's; else each job gets the core
    share ``max(1, CPUs // replicas of the pool in a job as it starts)`` (CPUs:
    the process's affinity mask): replicas busy together split the cores, and one
    busy alone uses them all. ``stats()`` shows each model's fixed count (None:
    the share) and each replica's last count.
    """

    _forked = False

    def __init__(
        self,
        memory_fraction: float = 0.8,
        request_timeout: float = 30.0,
        keep_alive: float = 300.0,
        *,
        reserve_mb: float = 512.0,
        memory_budget_mb: Mapping[str, float] | None = None,
        max_queue: int = 1024,
        cold_start_replicas: int = 2,
        scale_up_queue_depth: float = 2.0,
        scale_up_after: float = 0.05,
        scale_down_after: float = 60.0,
        maintenance_interval: float = 0.25,
        fetch_timeout: float = 10.0,
        allow_private_urls: bool = False,
        max_image_bytes: int = 64 << 20,
        intra_op_threads: int | None = None,
    ) -> None:
        self._request_timeout = v.duration("request_timeout", request_timeout)
        self._fetch_timeout = v.duration("fetch_timeout", fetch_timeout)
        # How image requests fetch: passed to the native image methods with each call.
        self._fetch = (
            self._fetch_timeout,
            v.flag("allow_private_urls", allow_private_urls),
            v.int_in("max_image_bytes", max_image_bytes, 1, v.INT32_MAX),  # decoding takes at most 2 GiB
        )
        native = _core.Pool(
            memory_fraction=v.finite("memory_fraction", memory_fraction, lo=0, hi=1, lo_open=True),
            reserve_mb=v.finite("reserve_mb", reserve_mb, lo=0),
            budget_mb=v.budgets("memory_budget_mb", memory_budget_mb),
            request_timeout=self._request_timeout,
            keep_alive=v.duration("keep_alive", keep_alive, allow_zero=True, allow_negative=True),
            max_queue=v.int_in("max_queue", max_queue, 1, v.INT32_MAX),  # size_t in C++
            cold_start_replicas=v.int_in("cold_start_replicas", cold_start_replicas, 1, MAX_REPLICAS),  # int
            # inf: never grow; queued jobs per replica is no duration, but the same rules hold.
            scale_up_queue_depth=v.duration("scale_up_queue_depth", scale_up_queue_depth, allow_zero=True),
            scale_up_after=v.duration("scale_up_after", scale_up_after, allow_zero=True),
            scale_down_after=v.duration("scale_down_after", scale_down_after, allow_zero=True),
            # A tick, not a limit: inf would silently turn keep-alive, scale-down and eviction off.
            maintenance_interval=v.duration("maintenance_interval", maintenance_interval),
            # None: the core share, decided per job (0 natively).
            intra_op_threads=v.optional_int_in("intra_op_threads", intra_op_threads, 1, MAX_INTRA_OP_THREADS) or 0,
        )
        self._lock = threading.Lock()
        self._native: Any = native  # Any: a _ForkedNative in a fork()ed child
        # Chat templates by key: the model directory until first use, then the template.
        self._chat_sources: dict[str, str | ChatTemplate | None] = {}
        self._defaults: dict[str, dict[str, float]] = {}  # each model's own request defaults
        self._capabilities: dict[str, list[str]] = {}  # checked before a chat template renders images
        _LIVE_POOLS.add(self)

    def _abandon_after_fork(self) -> None:
        """In a fork()ed child: make this pool unusable without touching its native side."""
        native, self._native = self._native, _ForkedNative()
        self._forked = True
        self._lock = threading.Lock()  # a parent thread may have held the old one at fork time
        native._abandon_after_fork()  # never destroyed in the child: see the comment above _ForkedNative

    # --- copying --------------------------------------------------------------

    def __copy__(self) -> Pool:
        raise NotCopyable(_NOT_COPYABLE)

    def __deepcopy__(self, memo: dict[int, Any]) -> Pool:
        raise NotCopyable(_NOT_COPYABLE)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise NotCopyable(_NOT_COPYABLE)

    # --- registry -------------------------------------------------------------

    def register(
        self,
        key: str,
        model: Model | str | os.PathLike[str],
        *,
        keep_alive: float | None = None,
        pinned: bool | None = None,
        max_replicas: int | None = None,
        intra_op_threads: int | None = None,
        devices: Sequence[str] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        context_length: int | None = None,
        options: Mapping[str, bool | int | float | str] | None = None,
        tokenizer_pattern: str | None = None,
    ) -> dict[str, Any]:
        """Registers ``model`` under ``key``. Nothing loads until its first request.

        ``model`` is a Python-defined model (``mpool.PyModel``), or a path / cached repo
        id of a native model, whose family and capability are detected from its files
        (``dtype``, ``device`` and, for decoders, ``context_length`` apply to those;
        ``dtype`` is "float32" (the CPU's default), "bfloat16" (CUDA's), "float16",
        or, on the CPU for the text families (BERT, JinaBERT, jina-embeddings-v3, ModernBERT,
        NV-Embed, the decoders, LLaVA), "int8": int8 linear
        weights with float32 activations; ``context_length`` is
        the longest prompt plus output, which sizes each replica's KV cache (a
        family that generates no text refuses it);
        ``options`` are the family's own settings, see ``mpool.NativeModel``;
        ``tokenizer_pattern``: the split regex of a tiktoken rank file whose
        tokenizer_config.json names none, the option of that name). Returns
        what the pool knows of it. The overrides apply to this registration only:
        the model object keeps its own settings; ``intra_op_threads`` is each
        replica's torch thread count, see the class docstring.
        """
        key = v.key(key)
        if not key:
            raise InvalidInput("key must be a non-empty str")
        keep_alive = keep_alive_seconds("keep_alive", keep_alive)
        pinned = None if pinned is None else v.flag("pinned", pinned)
        max_replicas = v.optional_int_in("max_replicas", max_replicas, 1, MAX_REPLICAS)
        intra_op_threads = v.optional_int_in("intra_op_threads", intra_op_threads, 1, MAX_INTRA_OP_THREADS)
        if device is not None:
            if devices is not None:
                raise InvalidInput("pass device or devices, not both")
            devices = [device]
        device_list = None if devices is None else v.devices(devices, "device" if device is not None else "devices")
        if tokenizer_pattern is not None:
            if options is not None and "tokenizer_pattern" in options:
                raise InvalidInput("pass tokenizer_pattern or options['tokenizer_pattern'], not both")
            options = {**(options or {}), "tokenizer_pattern": v.text("tokenizer_pattern", tokenizer_pattern)}
        if isinstance(model, (str, os.PathLike)):
            model = NativeModel(
                model, dtype=dtype, devices=device_list or ["cpu"], context_length=context_length, options=options
            )
        elif dtype is not None or context_length is not None or options is not None:
            raise InvalidInput(
                "dtype, context_length and options apply to native models (a path or repo id), "
                "not to Python-defined ones"
            )
        if not isinstance(model, Model):
            raise InvalidInput(f"model must be an mpool model (e.g. mpool.PyModel), got {type(model).__name__}")
        spec = model._spec.copy()  # the overrides below must not leak into the model object
        if keep_alive is not None:
            spec.keep_alive = keep_alive
        if pinned is not None:
            spec.pinned = pinned
        if max_replicas is not None:
            spec.max_replicas = max_replicas
        if intra_op_threads is not None:
            spec.intra_op_threads = intra_op_threads
        if device_list is not None:
            spec.devices = device_list
        self._native.register(key, spec)
        info: dict[str, Any] = {"key": key, "capabilities": list(spec.capabilities), "memory_mb": spec.memory_mb}
        info.update(getattr(model, "info", {}))
        with self._lock:
            self._chat_sources[key] = info.get("path")
            self._defaults[key] = dict(spec.defaults)
            self._capabilities[key] = list(spec.capabilities)
        return info

    def unregister(self, key: str, timeout: float = 30.0) -> None:
        """Unloads ``key`` (after its queued work) and forgets it."""
        key = v.key(key)
        self._native.unregister(key, v.duration("timeout", timeout, allow_zero=True))
        with self._lock:
            self._chat_sources.pop(key, None)
            self._defaults.pop(key, None)
            self._capabilities.pop(key, None)

    def load(self, key: str, timeout: float | None = None) -> None:
        """Loads ``key`` now and returns once a replica serves it (a cold start's
        replicas, as a first request would start them); a no-op wait when it is loaded.

        What would fail a first request fails this call: ``SpawnFailed`` (the
        loader's error), ``MemoryExhausted``, ``Timeout`` (``timeout``: the pool's
        request timeout by default). It counts as one request in ``stats()``.
        Ctrl-C cancels the request; replicas it already started finish loading.
        """
        self._native.load(v.key(key), req.timeout(timeout))

    async def aload(self, key: str, timeout: float | None = None) -> None:
        """``load`` without blocking the event loop or holding a thread. Cancelling it
        cancels the load request; replicas it already started finish loading."""
        await await_native(self._native.load_async(v.key(key), req.timeout(timeout)))

    def unload(self, key: str, timeout: float = 30.0) -> bool:
        """Unloads every replica of ``key`` once its queued work is done (0: do not wait for it)."""
        return bool(self._native.unload(v.key(key), v.duration("timeout", timeout, allow_zero=True)))

    async def aunload(self, key: str, timeout: float = 30.0) -> bool:
        """``unload`` without blocking the event loop."""
        key, timeout = v.key(key), v.duration("timeout", timeout, allow_zero=True)
        return await asyncio.get_running_loop().run_in_executor(None, self.unload, key, timeout)

    def pin(self, key: str) -> None:
        """Never evict ``key`` automatically (keep-alive and memory pressure skip it)."""
        self._native.set_pinned(v.key(key), True)

    def unpin(self, key: str) -> None:
        """Makes ``key`` evictable again."""
        self._native.set_pinned(v.key(key), False)

    def set_keep_alive(self, key: str, seconds: float) -> None:
        """Idle time before ``key`` unloads: 0 = right after the last request, < 0 or inf = never."""
        self._native.set_keep_alive(
            v.key(key), v.duration("seconds", seconds, allow_zero=True, allow_negative=True)
        )

    def set_memory_budget(self, device: str, mb: float | None) -> None:
        """Sets ``device``'s memory budget in MB (``None``: back to ``memory_fraction`` of its total).

        Lowering it below what loaded models hold makes the device's pressure critical:
        maintenance evicts idle, unpinned replicas (one per tick, each on a fresh
        reading), and new loads evict, wait or raise MemoryExhausted. Busy and pinned
        models are never evicted for it. ``device`` must be present on this host
        (``stats()["devices"]``); another is an InvalidInput.
        """
        device = v.text("device", device, allow_empty=False)
        budget = None if mb is None else v.finite("mb", mb, lo=0)
        self._native.set_memory_budget(device, budget)

    def models(self) -> list[dict[str, Any]]:
        """One dict per registered model: state, replicas, memory, settings."""
        stats = self._native.stats()["models"]
        keep = ("key", "capabilities", "state", "replicas", "pinned", "memory_mb", "keep_alive", "devices", "max_replicas")
        return [{k: m[k] for k in keep} for m in stats.values()]

    def stats(self) -> dict[str, Any]:
        """Per-model counters and latencies, and per-device memory.

        Per model: ``counts`` (requests and their outcomes, where each
        sub-batch of a split bulk call counts as one request; ``inputs``: texts,
        images or pairs embedded or scored), ``throughput`` over the last minute
        (``inputs_per_s``, and ``tokens_per_s`` in batch-cost units: about one
        token per 4 bytes of text plus special tokens, 256 per image, as the
        batch budget counts them -- an estimate, not the tokenizer's count),
        ``queue_time``, ``compute_time``, ``time_to_first_chunk``, replicas and
        memory; ``running`` (requests on busy replicas, each sequence of a
        continuous batch) and ``usage`` (gauges the loaded replicas report,
        summed). A generating decoder's usage: blocks of its paged KV cache
        ``kv_cache_blocks_in_use`` (held by sequences), ``_reserved`` (promised
        to their later positions), ``_cached`` (prefix blocks no sequence holds,
        kept until needed) and ``_free`` (what admission may still give, cached
        included); ``batch_sequences``; and its prefix cache's
        ``prefix_cache_prompt_tokens`` (admitted), ``prefix_cache_hit_tokens``
        (of them read from shared blocks, not computed) and
        ``prefix_cache_hit_rate`` (their ratio; 0 before any prompt).

        Process-wide: ``float32_gemm``, the library running float32 GEMMs on
        the CPU (``"aten"`` or ``"onednn"``, see :mod:`mpool.cpu`).
        """
        stats = self._native.stats()
        stats["float32_gemm"] = _core.float32_gemm()
        for model in stats["models"].values():
            usage = model.get("usage")
            if usage and "prefix_cache_prompt_tokens" in usage:
                prompts = usage["prefix_cache_prompt_tokens"]
                usage["prefix_cache_hit_rate"] = usage["prefix_cache_hit_tokens"] / prompts if prompts else 0.0
        return stats

    # --- text embedding -------------------------------------------------------

    def embed(
        self,
        key: str,
        texts: str | Sequence[str],
        task: str | None = None,
        *,
        truncate: bool = True,
        normalize: bool | None = None,
        dimensions: int | None = None,
        timeout: float | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Embeds texts: float32 array (n, d).

        ``task`` picks the model's prompt (e.g. "query") and, where the model has a
        LoRA adapter of that name stored beside it (jina-embeddings-v3's task
        adapters), runs with that adapter. Texts longer than the model's
        limit are truncated, or raise InvalidInput with ``truncate=False``.
        ``normalize``: True gives unit-length rows, False the model's raw output (a
        CLIP or SigLIP projection), None the model's default (CLIP and SigLIP
        normalize; a sentence-transformers model as its Normalize module says).
        ``dimensions`` keeps the first ``dimensions`` of each row (Matryoshka
        truncation) and then scales the rows back to unit length when they are
        normalized (asked for, or the model's default) -- unlike
        sentence-transformers' ``truncate_dim``, which leaves them shorter than 1.
        A model whose config.json lists ``matryoshka_dimensions`` takes only those;
        a width above the model's is InvalidInput.

        Bulk calls: texts that cost more than one forward pass of the model
        (its batch budget) are split into sub-batches that any replica may take,
        at most one per replica at a time, so other callers of the model are
        served between them; rows come back in input order. A failing text fails
        the call, naming its index (``texts[1234]: ...``). ``timeout``, when
        given, bounds the whole call; by default the pool's ``request_timeout``
        bounds each sub-batch (its queue wait and compute), so a large call with
        defaults completes. ``progress=True`` shows a ``tqdm.auto`` bar over the
        texts done (a widget in a notebook); nothing is printed otherwise.
        """
        args = (
            v.key(key), req.texts(texts), req.task(task), req.timeout(timeout), v.flag("truncate", truncate),
            _normalize(normalize), _dimensions(dimensions),
        )
        if not v.flag("progress", progress):
            return self._native.embed(*args)
        counter = new_progress(len(args[1]))
        return result_with_bar(self._native.embed_async(*args, counter), counter, "text")

    async def aembed(
        self,
        key: str,
        texts: str | Sequence[str],
        task: str | None = None,
        *,
        truncate: bool = True,
        normalize: bool | None = None,
        dimensions: int | None = None,
        timeout: float | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """``embed`` for asyncio: does not block the event loop."""
        args = (
            v.key(key), req.texts(texts), req.task(task), req.timeout(timeout), v.flag("truncate", truncate),
            _normalize(normalize), _dimensions(dimensions),
        )
        if not v.flag("progress", progress):
            return await await_native(self._native.embed_async(*args))
        counter = new_progress(len(args[1]))
        return await await_with_bar(self._native.embed_async(*args, counter), counter, "text")

    # --- reranking ------------------------------------------------------------

    def score(
        self, key: str, pairs: Sequence[tuple[str, str]], *, truncate: bool = True, raw: bool = False,
        timeout: float | None = None, progress: bool = False,
    ) -> np.ndarray:
        """Scores (query, document) pairs with a cross-encoder: float32 array (n,)
        for a one-label model (a reranker), (n, labels) otherwise, in input order.

        Scores pass through the model's activation as sentence-transformers'
        ``CrossEncoder.predict`` does (sigmoid for one label unless the model names
        another); ``raw=True`` gives the classifier's logits. A pair longer than the
        model's limit is cut longest-first, or raises InvalidInput with
        ``truncate=False``. Many pairs are split into sub-batches as ``embed``
        splits texts, under the same timeout rule; ``progress=True`` shows a
        ``tqdm.auto`` bar over the pairs done.
        """
        out = self._scores(key, pairs, truncate, raw, timeout, progress)
        return out[:, 0] if out.shape[1] == 1 else out

    async def ascore(
        self, key: str, pairs: Sequence[tuple[str, str]], *, truncate: bool = True, raw: bool = False,
        timeout: float | None = None, progress: bool = False,
    ) -> np.ndarray:
        """``score`` for asyncio: does not block the event loop."""
        out = await self._ascores(key, pairs, truncate, raw, timeout, progress)
        return out[:, 0] if out.shape[1] == 1 else out

    def rerank(
        self, key: str, query: str, documents: Sequence[str], top_n: int | None = None, return_documents: bool = False,
        *, truncate: bool = True, raw: bool = False, timeout: float | None = None, progress: bool = False,
    ) -> list[Ranked] | list[RankedDocument]:
        """Ranks ``documents`` by relevance to ``query`` with a cross-encoder.

        Returns ``Ranked(index, score)`` tuples, best first (ties keep input order),
        the ``top_n`` best when given; with ``return_documents=True``,
        ``RankedDocument(index, score, document)`` tuples. Scores are ``score``'s; the model must have one label.
        ``progress=True`` shows a bar over the documents scored.
        """
        q, docs, n = _rerank_args(query, documents, top_n, return_documents)
        scores = self._scores(key, [(q, d) for d in docs], truncate, raw, timeout, progress)
        return _ranked(scores, docs, n, bool(return_documents))

    async def arerank(
        self, key: str, query: str, documents: Sequence[str], top_n: int | None = None, return_documents: bool = False,
        *, truncate: bool = True, raw: bool = False, timeout: float | None = None, progress: bool = False,
    ) -> list[Ranked] | list[RankedDocument]:
        """``rerank`` for asyncio: does not block the event loop."""
        q, docs, n = _rerank_args(query, documents, top_n, return_documents)
        scores = await self._ascores(key, [(q, d) for d in docs], truncate, raw, timeout, progress)
        return _ranked(scores, docs, n, bool(return_documents))

    @staticmethod
    def _score_args(
        key: str, pairs: Sequence[tuple[str, str]], truncate: bool, raw: bool, timeout: float | None, progress: bool
    ) -> tuple[tuple[Any, ...], Any]:
        """The native scoring call's arguments, and a progress counter when ``progress``."""
        args = (v.key(key), req.pairs(pairs), req.timeout(timeout), v.flag("truncate", truncate), v.flag("raw", raw))
        return args, new_progress(len(args[1])) if v.flag("progress", progress) else None

    def _scores(
        self, key: str, pairs: Sequence[tuple[str, str]], truncate: bool, raw: bool, timeout: float | None,
        progress: bool,
    ) -> np.ndarray:
        """The (n, labels) scores, blocking with the GIL released."""
        args, counter = self._score_args(key, pairs, truncate, raw, timeout, progress)
        if counter is None:
            return self._native.score(*args)
        return result_with_bar(self._native.score_async(*args, counter), counter, "pair")

    async def _ascores(
        self, key: str, pairs: Sequence[tuple[str, str]], truncate: bool, raw: bool, timeout: float | None,
        progress: bool,
    ) -> np.ndarray:
        args, counter = self._score_args(key, pairs, truncate, raw, timeout, progress)
        future = self._native.score_async(*args, counter)
        return await (await_native(future) if counter is None else await_with_bar(future, counter, "pair"))

    # --- image embedding ------------------------------------------------------

    def _image_timeout(self, timeout: float | None) -> float:
        # Image requests pass their effective timeout: fetching and decoding count against it.
        checked = req.timeout(timeout)
        return self._request_timeout if checked is None else checked

    def embed_images(
        self, key: str, images: Any, *, normalize: bool | None = None, timeout: float | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Embeds images (paths, URLs, base64, bytes, PIL, HWC uint8 arrays): float32 (n, d).

        ``normalize`` as for ``embed``. Fetching and decoding count against
        ``timeout``: a URL slower than what is left of it raises ``Timeout``.
        Many images are split into sub-batches as ``embed`` splits texts, under
        the same timeout rule (a given ``timeout`` bounds the whole call, fetching
        included; the default bounds each sub-batch). ``progress=True`` shows a
        ``tqdm.auto`` bar over the images done.
        """
        items, show = req.images(images), v.flag("progress", progress)
        counter = new_progress(len(items)) if show else None
        future = self._native.embed_images_async(
            v.key(key), items, self._image_timeout(timeout), *self._fetch, _normalize(normalize),
            timeout is not None, counter,
        )
        return future.result() if counter is None else result_with_bar(future, counter, "image")

    async def aembed_images(
        self, key: str, images: Any, *, normalize: bool | None = None, timeout: float | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """``embed_images`` for asyncio (decoding and fetching run off the loop too)."""
        key, items, effective = v.key(key), req.images(images), self._image_timeout(timeout)
        counter = new_progress(len(items)) if v.flag("progress", progress) else None
        # Decoding and fetching are bounded work (the fetch timeout): the default executor.
        future = await submit_off_loop(
            lambda cancelled: self._native.embed_images_async(
                key, items, effective, *self._fetch, _normalize(normalize), timeout is not None, counter, cancelled
            )
        )
        return await await_native(future) if counter is None else await await_with_bar(future, counter, "image")

    def zero_shot(
        self,
        key: str,
        images: Any,
        labels: Sequence[str],
        *,
        template: str = "a photo of a {}.",
        timeout: float | None = None,
    ) -> np.ndarray:
        """Zero-shot classification: float32 (images, labels) probabilities.

        Each label is put into ``template`` (its ``{}``), embedded with the model's
        text tower and scored against each image with the model's logit scale: a
        softmax over the labels for CLIP (rows sum to 1), an independent sigmoid per
        label with SigLIP's bias. The model must embed images and texts (CLIP, SigLIP).
        """
        future = self._native.zero_shot_async(
            v.key(key), req.images(images), req.labels(labels, template), self._image_timeout(timeout), *self._fetch
        )
        return future.result()

    async def azero_shot(
        self,
        key: str,
        images: Any,
        labels: Sequence[str],
        *,
        template: str = "a photo of a {}.",
        timeout: float | None = None,
    ) -> np.ndarray:
        """``zero_shot`` for asyncio."""
        key, items, texts = v.key(key), req.images(images), req.labels(labels, template)
        effective = self._image_timeout(timeout)
        future = await submit_off_loop(
            lambda cancelled: self._native.zero_shot_async(key, items, texts, effective, *self._fetch, cancelled)
        )
        return await await_native(future)

    # --- text generation ------------------------------------------------------

    def generate(
        self, key: str, prompt: str | Sequence[int], *, timeout: float | None = None, **params: Any
    ) -> TextStream:
        """Streams generated text: iterate the returned TextStream for TextChunks."""
        key = v.key(key)
        checked = req.prompt(prompt)
        return TextStream(self._native.generate(key, checked, req.generation(params), req.timeout(timeout)))

    def agenerate(
        self, key: str, prompt: str | Sequence[int], *, timeout: float | None = None, **params: Any
    ) -> AsyncIterator[Any]:
        """``generate`` for asyncio: ``async for chunk in pool.agenerate(...)``."""
        return self.generate(key, prompt, timeout=timeout, **params).__aiter__()

    def chat_template(self, key: str) -> ChatTemplate:
        """The chat template of ``key`` (from its ``tokenizer_config.json``); InvalidInput if it has none."""
        key = v.key(key)
        if self._forked:
            raise ShuttingDown(_FORKED_MESSAGE)
        with self._lock:
            if key not in self._chat_sources:
                known = ", ".join(sorted(self._chat_sources)) or "none"
                raise ModelNotFound(f"no model is registered under {key!r}; registered: {known}")
            source = self._chat_sources[key]
        if isinstance(source, ChatTemplate):
            return source
        template = ChatTemplate.from_model_dir(source) if source is not None else None
        if template is None:
            where = f"{source}" if source is not None else "a Python-defined model"
            raise InvalidInput(f"model {key!r} has no chat template ({where} defines no chat_template)")
        with self._lock:
            if key in self._chat_sources:
                self._chat_sources[key] = template
        return template

    def render_chat(
        self,
        key: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """The prompt ``chat`` sends: ``messages`` rendered by the model's chat template."""
        return self.chat_template(key).render(
            messages,
            add_generation_prompt=v.flag("add_generation_prompt", add_generation_prompt),
            tools=tools,
            **template_kwargs,
        )

    def chat(
        self,
        key: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        timeout: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> TextStream:
        """Streams the assistant's reply to ``messages`` (``[{"role": ..., "content": ...}]``).

        The model's ``chat_template`` renders them with jinja2 as transformers does,
        with ``add_generation_prompt`` on; the prompt is then tokenized without
        adding special tokens again (the template writes them). ``params`` are
        those of ``generate``.

        A message's content may be a list of parts: ``{"type": "text", "text": ...}``
        and ``{"type": "image", "image": <any image input>}`` (``"url"`` or ``"path"``
        work in place of ``"image"``), several images per conversation. With images,
        the model must serve ``vision``: the template writes an image placeholder
        per image part, and the prompt is tokenized as the model's processor
        tokenizes it (special tokens added unless the rendered prompt starts with
        the bos token).
        """
        if template_kwargs is not None and not isinstance(template_kwargs, Mapping):
            raise InvalidInput(f"template_kwargs must be a dict or None, got {type(template_kwargs).__name__}")
        for name in template_kwargs or {}:
            if not isinstance(name, str):
                raise InvalidInput(f"template_kwargs' keys must be str (template variable names), got {name!r}")
        # Checked before rendering, so a bad timeout or parameter fails the same way with any template.
        req.timeout(timeout)
        req.generation(params)
        messages, images = split_images(messages)
        if images:
            self._is_python_model(key)  # ModelNotFound first
            self._require_vision(key)
        prompt = self.render_chat(key, messages, tools=tools, **dict(template_kwargs or {}))
        if images:
            params.setdefault("add_special_tokens", self._adds_bos(key, prompt))
            return self._describe(key, images, prompt, timeout, params)
        # A text model's tokenizer.apply_chat_template adds no special tokens (the
        # template writes them); a vision model's processor tokenizes a text-only
        # chat as it does one with images.
        with self._lock:
            capabilities = self._capabilities.get(key) or []
        params.setdefault("add_special_tokens", "vision" in capabilities and self._adds_bos(key, prompt))
        return self.generate(key, prompt, timeout=timeout, **params)

    def achat(
        self,
        key: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        timeout: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> AsyncIterator[Any]:
        """``chat`` for asyncio: ``async for chunk in pool.achat(...)``."""
        return self.chat(key, messages, timeout=timeout, tools=tools, template_kwargs=template_kwargs, **params).__aiter__()

    # --- vision ---------------------------------------------------------------

    def describe(
        self,
        key: str,
        image: Any,
        query: str | None = None,
        *,
        prompt: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> TextStream:
        """Streams an answer to ``query`` about ``image`` (fetching it counts against ``timeout``).

        A native model renders the one-turn conversation ``[{"role": "user", "content":
        [{"type": "image"}, {"type": "text", "text": query}]}]`` with its chat template
        (as ``chat`` does); ``prompt=`` sends that text instead, as written (it must hold
        the model's image token once, e.g. ``"USER: <image>\nWhat is it? ASSISTANT:"``),
        tokenized with special tokens as the processor does. Pass ``query`` or
        ``prompt``, not both. A Python-defined model gets ``query`` as asked.
        """
        key = v.key(key)
        if (query is None) == (prompt is None):
            raise InvalidInput("describe() takes a query or an explicit prompt=, exactly one of them")
        req.timeout(timeout)
        req.generation(params)
        items = [image_input(image)]
        if prompt is not None:
            text = v.text("prompt", prompt, allow_empty=False)
            params.setdefault("add_special_tokens", True)
        else:
            query = v.text("query", query, allow_empty=False)
            if self._is_python_model(key):
                text = query
            else:
                self._require_vision(key)
                messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}]
                text = self.render_chat(key, messages)
                params.setdefault("add_special_tokens", self._adds_bos(key, text))
        return self._describe(key, items, text, timeout, params)

    def adescribe(
        self,
        key: str,
        image: Any,
        query: str | None = None,
        *,
        prompt: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> AsyncIterator[Any]:
        """``describe`` for asyncio."""
        return self.describe(key, image, query, prompt=prompt, timeout=timeout, **params).__aiter__()

    def _describe(
        self, key: str, items: list[tuple[str, Any]], prompt: str, timeout: float | None, params: dict[str, Any]
    ) -> TextStream:
        return TextStream(
            self._native.describe(
                key, items, prompt, req.generation(params), self._image_timeout(timeout), *self._fetch
            )
        )

    def _is_python_model(self, key: str) -> bool:
        """Whether ``key`` is a registered Python-defined model (it has no model directory)."""
        if self._forked:
            raise ShuttingDown(_FORKED_MESSAGE)
        with self._lock:
            if key not in self._chat_sources:
                known = ", ".join(sorted(self._chat_sources)) or "none"
                raise ModelNotFound(f"no model is registered under {key!r}; registered: {known}")
            return self._chat_sources[key] is None

    def _require_vision(self, key: str) -> None:
        """InvalidInput, as the pool words it, when ``key`` does not serve vision (before its template runs)."""
        with self._lock:
            capabilities = self._capabilities.get(key)
        if capabilities is not None and "vision" not in capabilities:
            raise InvalidInput(f"model '{key}' does not serve vision (it serves: {', '.join(capabilities)})")

    def _adds_bos(self, key: str, prompt: str) -> bool:
        """As transformers' processors: tokenizing adds special tokens unless the prompt starts with bos."""
        bos = self.chat_template(key).special_tokens.get("bos_token")
        return not (bos and prompt.startswith(bos))

    # --- text to image --------------------------------------------------------

    def generate_image(
        self,
        key: str,
        prompt: str,
        *,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        true_cfg_scale: float | None = None,
        init_image: Any = None,
        strength: float | None = None,
        latents: Any = None,
        skip_layer_guidance: bool | Sequence[int] | None = None,
        skip_layer_scale: float | None = None,
        skip_layer_start: float | None = None,
        skip_layer_stop: float | None = None,
        max_sequence_length: int | None = None,
        preview: bool = True,
        output_type: str = "pil",
        progress: bool = False,
        timeout: float | None = None,
    ) -> ImageStream:
        """Streams one ``ImageProgress`` per step; ``.result()`` returns the image.

        An empty ``prompt`` draws unconditionally, as diffusers does. A setting left None takes the model's own default (its ``defaults``), else
        512 x 512, 20 steps, guidance 7.0. img2img: ``init_image`` (any image
        source, resized to the requested size) and ``strength`` (default 0.8; 1.0
        starts from pure noise; a native model refuses 0, which runs no step, as
        diffusers does). ``latents``: the initial latents, as diffusers'
        argument of that name. ``skip_layer_guidance``: True for blocks 7, 8, 9, or
        the block indices, with its ``skip_layer_scale`` (2.8) applied between
        ``skip_layer_start`` (0.01) and ``skip_layer_stop`` (0.2) of the steps.
        ``true_cfg_scale``: for a guidance-distilled model (FLUX), two-pass
        classifier-free guidance with ``negative_prompt`` when above 1 (default
        1: off); ``guidance_scale`` is then FLUX.1-dev's embedded guidance.
        ``preview``: a small PIL preview with each step. ``output_type``: "pil" or
        "np" (float32 HWC in [0, 1], diffusers' ``output_type="np"``).
        ``progress``: a tqdm bar (and, in a notebook, the preview updating in place).
        """
        key = v.key(key)
        with self._lock:
            model_defaults = self._defaults.get(key)
        s = req.image_settings(
            prompt, width=width, height=height, steps=steps, guidance_scale=guidance_scale,
            negative_prompt=negative_prompt, seed=seed, strength=strength, init_image=init_image is not None,
            true_cfg_scale=true_cfg_scale,
            latents=latents, skip_layer_guidance=skip_layer_guidance, skip_layer_scale=skip_layer_scale,
            skip_layer_start=skip_layer_start, skip_layer_stop=skip_layer_stop,
            max_sequence_length=max_sequence_length, preview=preview, output_type=output_type,
            model_defaults=model_defaults,
        )
        show = v.flag("progress", progress)
        init = [] if init_image is None else [image_input(init_image)]
        return ImageStream(
            self._native.generate_image(key, *s, init, self._image_timeout(timeout), *self._fetch),
            progress=show,
        )

    def img2img(self, key: str, image: Any, prompt: str, *, strength: float = 0.8, **kwargs: Any) -> ImageStream:
        """``generate_image(key, prompt, init_image=image, strength=strength, **kwargs)``."""
        return self.generate_image(key, prompt, init_image=image, strength=strength, **kwargs)

    def agenerate_image(self, key: str, prompt: str, **kwargs: Any) -> ImageStream:
        """``generate_image`` for asyncio: ``async for p in stream`` and ``await stream.aresult()``."""
        return self.generate_image(key, prompt, **kwargs)

    # --- lifecycle ------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stops accepting, drains up to ``timeout`` s, cancels the rest, joins every thread.

        Returns only once the pool is shut down, also when another thread is closing
        it at the same time. A no-op in a fork()ed child (the pool belongs to the parent).
        """
        drain = v.duration("timeout", timeout, allow_zero=True)
        native = getattr(self, "_native", None)  # None: __init__ refused its arguments
        if native is None or self._forked:
            return
        native.shutdown(drain)  # idempotent; a concurrent call waits until the first one finished
        _LIVE_POOLS.discard(self)

    async def aclose(self, timeout: float = 5.0) -> None:
        """``close`` without blocking the event loop."""
        drain = v.duration("timeout", timeout, allow_zero=True)
        await asyncio.get_running_loop().run_in_executor(None, self.close, drain)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        try:
            self.close(timeout=1.0)
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


_NOT_COPYABLE = (
    "mpool.Pool cannot be copied or pickled: it owns native replica threads and loaded models. "
    "Share the Pool object itself (it is thread-safe), or create a new Pool in the other process"
)


class Ranked(NamedTuple):
    """One reranked document: its ``index`` in the input and its ``score``."""

    index: int  # type: ignore[assignment]  # the name rerank APIs use; shadows tuple.index
    score: float


class RankedDocument(NamedTuple):
    """One reranked document with ``return_documents=True``: also the ``document``."""

    index: int  # type: ignore[assignment]  # as Ranked.index
    score: float
    document: str


def _rerank_args(query: Any, documents: Any, top_n: Any, return_documents: Any) -> tuple[str, list[str], int | None]:
    q = v.text("query", query, allow_empty=False)
    docs = req.documents(documents)
    n = None if top_n is None else v.int_in("top_n", top_n, 1, v.INT32_MAX)
    v.flag("return_documents", return_documents)
    return q, docs, n


def _ranked(
    scores: np.ndarray, docs: list[str], top_n: int | None, with_documents: bool
) -> list[Ranked] | list[RankedDocument]:
    if scores.shape[1] != 1:
        raise InvalidInput(
            f"rerank needs a model with one score per pair; this one has {scores.shape[1]} labels (use score())"
        )
    column = scores[:, 0]
    order = np.argsort(-column, kind="stable")[: top_n if top_n is not None else len(docs)]
    if with_documents:
        return [RankedDocument(int(i), float(column[i]), docs[i]) for i in order]
    return [Ranked(int(i), float(column[i])) for i in order]


def _dimensions(dimensions: Any) -> int | None:
    return None if dimensions is None else v.int_in("dimensions", dimensions, 1, v.INT32_MAX)


def _normalize(normalize: Any) -> bool | None:
    return None if normalize is None else v.flag("normalize", normalize)
