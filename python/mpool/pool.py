"""The Pool: register models, then embed, generate, describe and draw with them."""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import _core
from ._images import image_input
from .chat import ChatTemplate
from .errors import InvalidInput, ModelNotFound, PoolError
from .models import Model, NativeModel

_GENERATION_PARAMS: dict[str, type | tuple[type, ...]] = {
    "max_tokens": int,
    "temperature": (int, float),
    "top_k": int,
    "top_p": (int, float),
    "min_p": (int, float),
    "repetition_penalty": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "seed": int,
    "stop": (str, list, tuple),
    "stop_token_ids": (list, tuple),
    "ignore_eos": bool,
    "logprobs": int,
    "add_special_tokens": bool,
}

_LIVE_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    # Before the interpreter finalizes, so replica threads can still take the GIL.
    for pool in list(_LIVE_POOLS):
        pool.close(timeout=1.0)


def _params(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name not in _GENERATION_PARAMS:
            raise InvalidInput(
                f"unknown generation parameter {name!r}; known: {', '.join(sorted(_GENERATION_PARAMS))}"
            )
        if value is None:
            continue
        if isinstance(value, bool) and _GENERATION_PARAMS[name] is not bool:
            raise InvalidInput(f"{name} must be a number, got {value!r}")
        if not isinstance(value, _GENERATION_PARAMS[name]):
            raise InvalidInput(f"{name} has the wrong type: {type(value).__name__}")
        out[name] = value
    if "max_tokens" in out and out["max_tokens"] <= 0:
        raise InvalidInput(f"max_tokens must be > 0, got {out['max_tokens']}")
    if "temperature" in out and out["temperature"] < 0:
        raise InvalidInput(f"temperature must be >= 0, got {out['temperature']}")
    if "top_p" in out and not 0 < out["top_p"] <= 1:
        raise InvalidInput(f"top_p must be in (0, 1], got {out['top_p']}")
    if "min_p" in out and not 0 <= out["min_p"] <= 1:
        raise InvalidInput(f"min_p must be in [0, 1], got {out['min_p']}")
    if "logprobs" in out and not 0 <= out["logprobs"] <= 20:
        raise InvalidInput(f"logprobs must be in [0, 20], got {out['logprobs']}")
    if "repetition_penalty" in out and out["repetition_penalty"] <= 0:
        raise InvalidInput(f"repetition_penalty must be > 0, got {out['repetition_penalty']}")
    if "top_k" in out and out["top_k"] < 0:
        raise InvalidInput(f"top_k must be >= 0, got {out['top_k']}")
    if "stop" in out:
        stop = [out["stop"]] if isinstance(out["stop"], str) else list(out["stop"])
        if not all(isinstance(s, str) and s for s in stop):
            raise InvalidInput("stop must be a non-empty string or a list of them")
        out["stop"] = stop
    if "stop_token_ids" in out:
        out["stop_token_ids"] = [int(i) for i in out["stop_token_ids"]]
    return out


def _task(task: str | None) -> str | None:
    if task is not None and not isinstance(task, str):
        raise InvalidInput(f"task must be a str or None, got {type(task).__name__}")
    return task


def _timeout(timeout: float | None) -> float | None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise InvalidInput(f"timeout must be a number of seconds > 0, got {timeout!r}")
    return None if timeout is None else float(timeout)


def _wake(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> Callable[[], None]:
    """A callback for a native thread that completes ``waiter`` on ``loop``."""

    def settle() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def ready() -> None:  # on the producing native thread, with the GIL
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    return ready


async def _wait_chunks(poll: Callable[[], tuple[bool, Any]], native: Any) -> AsyncIterator[Any]:
    """Yields a stream's items without holding any thread while it waits.

    ``poll()`` takes what is there; when nothing is, the native stream calls back
    (``on_ready``) as soon as a chunk or the end arrives. Past the deadline,
    ``poll()`` settles the stream as Timeout.
    """
    loop = asyncio.get_running_loop()
    while True:
        got, item = poll()
        if got:
            if item is None:
                return
            yield item
            continue
        waiter: asyncio.Future[None] = loop.create_future()
        native.on_ready(_wake(loop, waiter))
        try:
            await asyncio.wait_for(waiter, timeout=max(native.remaining(), 0.0) + 0.05)
        except asyncio.TimeoutError:
            pass  # past the deadline: the next poll() raises Timeout


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
        try:
            async for chunk in _wait_chunks(self._poll, self._native):
                yield chunk
        finally:
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
        return _wait_chunks(self._native.poll, self._native)

    async def aresult(self) -> Any:
        """``result()`` without blocking the event loop or holding a thread while it waits."""
        if self._image is None:
            async for _ in self:
                pass
        return self.result()


async def _await_native(future: Any) -> np.ndarray:
    """Awaits a native future: completion arrives by callback, never by a blocked thread."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def on_done() -> None:  # on the replica thread, with the GIL
        loop.call_soon_threadsafe(settle)

    future.add_done_callback(on_done)
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout=max(future.remaining(), 0.0) + 0.05)
    except asyncio.TimeoutError:
        pass  # past the deadline: result() below settles it as Timeout
    except asyncio.CancelledError:
        future.cancel()
        raise
    return future.result()


class Pool:
    """Many models in one process, each served by native replica threads.

    >>> with mpool.Pool() as pool:
    ...     pool.register("emb", mpool.PyModel("text_embedding", loader, memory_mb=300))
    ...     vectors = pool.embed("emb", ["hello"])
    """

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
    ) -> None:
        if not isinstance(memory_fraction, (int, float)) or not 0 < memory_fraction <= 1:
            raise InvalidInput(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
        _timeout(request_timeout)
        if not isinstance(max_queue, int) or max_queue < 1:
            raise InvalidInput(f"max_queue must be an int >= 1, got {max_queue!r}")
        self._fetch_timeout = float(fetch_timeout)
        self._native = _core.Pool(
            memory_fraction=float(memory_fraction),
            reserve_mb=float(reserve_mb),
            budget_mb={str(k): float(v) for k, v in (memory_budget_mb or {}).items()},
            request_timeout=float(request_timeout),
            keep_alive=float(keep_alive),
            max_queue=max_queue,
            cold_start_replicas=int(cold_start_replicas),
            scale_up_queue_depth=float(scale_up_queue_depth),
            scale_up_after=float(scale_up_after),
            scale_down_after=float(scale_down_after),
            maintenance_interval=float(maintenance_interval),
        )
        self._closed = False
        self._lock = threading.Lock()
        # Chat templates by key: the model directory until first use, then the template.
        self._chat_sources: dict[str, str | ChatTemplate | None] = {}
        _LIVE_POOLS.add(self)

    # --- registry -------------------------------------------------------------

    def register(
        self,
        key: str,
        model: Model | str | os.PathLike[str],
        *,
        keep_alive: float | None = None,
        pinned: bool | None = None,
        max_replicas: int | None = None,
        devices: Sequence[str] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        context_length: int | None = None,
    ) -> dict[str, Any]:
        """Registers ``model`` under ``key``. Nothing loads until its first request.

        ``model`` is a Python-defined model (``mpool.PyModel``), or a path / cached repo
        id of a native model, whose family and capability are detected from its files
        (``dtype``, ``device`` and, for decoders, ``context_length`` apply to those:
        the longest prompt plus output, which sizes each replica's KV cache). Returns
        what the pool knows of it.
        """
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"key must be a non-empty str, got {key!r}")
        if device is not None:
            devices = [device]
        if isinstance(model, (str, os.PathLike)):
            model = NativeModel(model, dtype=dtype, devices=devices or ("cpu",), context_length=context_length)
        elif dtype is not None or context_length is not None:
            raise InvalidInput(
                "dtype and context_length apply to native models (a path or repo id), not to Python-defined ones"
            )
        if not isinstance(model, Model):
            raise InvalidInput(f"model must be an mpool model (e.g. mpool.PyModel), got {type(model).__name__}")
        spec = model._spec
        if keep_alive is not None:
            spec.keep_alive = float(keep_alive)
        if pinned is not None:
            spec.pinned = bool(pinned)
        if max_replicas is not None:
            if not isinstance(max_replicas, int) or max_replicas < 1:
                raise InvalidInput(f"max_replicas must be an int >= 1, got {max_replicas!r}")
            spec.max_replicas = max_replicas
        if devices is not None:
            spec.devices = [devices] if isinstance(devices, str) else list(devices)
        self._native.register(key, spec)
        info: dict[str, Any] = {"key": key, "capabilities": list(spec.capabilities), "memory_mb": spec.memory_mb}
        info.update(getattr(model, "info", {}))
        with self._lock:
            self._chat_sources[key] = info.get("path")
        return info

    def unregister(self, key: str, timeout: float = 30.0) -> None:
        """Unloads ``key`` (after its queued work) and forgets it."""
        self._native.unregister(key, float(timeout))
        with self._lock:
            self._chat_sources.pop(key, None)

    def unload(self, key: str, timeout: float = 30.0) -> bool:
        """Unloads every replica of ``key`` once its queued work is done."""
        return self._native.unload(key, float(timeout))

    async def aunload(self, key: str, timeout: float = 30.0) -> bool:
        """``unload`` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.unload, key, timeout)

    def pin(self, key: str) -> None:
        """Never evict ``key`` automatically (keep-alive and memory pressure skip it)."""
        self._native.set_pinned(key, True)

    def unpin(self, key: str) -> None:
        """Makes ``key`` evictable again."""
        self._native.set_pinned(key, False)

    def set_keep_alive(self, key: str, seconds: float) -> None:
        """Idle time before ``key`` unloads: 0 = right after the last request, < 0 = never."""
        self._native.set_keep_alive(key, float(seconds))

    def models(self) -> list[dict[str, Any]]:
        """One dict per registered model: state, replicas, memory, settings."""
        stats = self._native.stats()["models"]
        keep = ("key", "capabilities", "state", "replicas", "pinned", "memory_mb", "keep_alive", "devices", "max_replicas")
        return [{k: m[k] for k in keep} for m in stats.values()]

    def stats(self) -> dict[str, Any]:
        """Per-model counters and latencies, and per-device memory."""
        return self._native.stats()

    # --- text embedding -------------------------------------------------------

    @staticmethod
    def _texts(texts: str | Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or isinstance(texts, (bytes, bytearray)):
            raise InvalidInput(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
        texts = list(texts)
        if not texts:
            raise InvalidInput("texts is empty; pass at least one text")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidInput(f"texts[{i}] must be a str, got {type(t).__name__}")
        return texts

    def embed(
        self,
        key: str,
        texts: str | Sequence[str],
        task: str | None = None,
        *,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Embeds texts: float32 array (n, d).

        ``task`` picks the model's prompt (e.g. "query"). Texts longer than the model's
        limit are truncated, or raise InvalidInput with ``truncate=False``.
        """
        return self._native.embed(key, self._texts(texts), _task(task), _timeout(timeout), bool(truncate))

    async def aembed(
        self,
        key: str,
        texts: str | Sequence[str],
        task: str | None = None,
        *,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> np.ndarray:
        """``embed`` for asyncio: does not block the event loop."""
        future = self._native.embed_async(key, self._texts(texts), _task(task), _timeout(timeout), bool(truncate))
        return await _await_native(future)

    # --- image embedding ------------------------------------------------------

    @staticmethod
    def _images(images: Any) -> list[tuple[str, Any]]:
        if isinstance(images, (str, bytes, bytearray, np.ndarray)) or hasattr(images, "convert"):
            images = [images]
        images = list(images)
        if not images:
            raise InvalidInput("images is empty; pass at least one image")
        return [image_input(img, i) for i, img in enumerate(images)]

    def embed_images(self, key: str, images: Any, *, timeout: float | None = None) -> np.ndarray:
        """Embeds images (paths, URLs, base64, bytes, PIL, HWC uint8 arrays): float32 (n, d)."""
        future = self._native.embed_images_async(key, self._images(images), _timeout(timeout), self._fetch_timeout)
        return future.result()

    async def aembed_images(self, key: str, images: Any, *, timeout: float | None = None) -> np.ndarray:
        """``embed_images`` for asyncio (decoding and fetching run off the loop too)."""
        items = self._images(images)
        loop = asyncio.get_running_loop()
        # Decoding and fetching are bounded work (the fetch timeout): the default executor.
        future = await loop.run_in_executor(
            None, self._native.embed_images_async, key, items, _timeout(timeout), self._fetch_timeout
        )
        return await _await_native(future)

    # --- text generation ------------------------------------------------------

    def generate(
        self, key: str, prompt: str | Sequence[int], *, timeout: float | None = None, **params: Any
    ) -> TextStream:
        """Streams generated text: iterate the returned TextStream for TextChunks."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidInput("prompt is empty")
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(i, int) for i in prompt):
            prompt = [int(i) for i in prompt]
        else:
            raise InvalidInput("prompt must be a non-empty str or a non-empty list of token ids")
        return TextStream(self._native.generate(key, prompt, _params(params), _timeout(timeout)))

    def agenerate(
        self, key: str, prompt: str | Sequence[int], *, timeout: float | None = None, **params: Any
    ) -> AsyncIterator[Any]:
        """``generate`` for asyncio: ``async for chunk in pool.agenerate(...)``."""
        return self.generate(key, prompt, timeout=timeout, **params).__aiter__()

    def chat_template(self, key: str) -> ChatTemplate:
        """The chat template of ``key`` (from its ``tokenizer_config.json``); InvalidInput if it has none."""
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
            messages, add_generation_prompt=add_generation_prompt, tools=tools, **template_kwargs
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
        """
        prompt = self.render_chat(key, messages, tools=tools, **dict(template_kwargs or {}))
        params.setdefault("add_special_tokens", False)
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
        self, key: str, image: Any, query: str, *, timeout: float | None = None, **params: Any
    ) -> TextStream:
        """Streams an answer to ``query`` about ``image``."""
        if not isinstance(query, str) or not query:
            raise InvalidInput("query must be a non-empty str")
        item = [image_input(image)]
        return TextStream(
            self._native.describe(key, item, query, _params(params), _timeout(timeout), self._fetch_timeout)
        )

    def adescribe(self, key: str, image: Any, query: str, *, timeout: float | None = None, **params: Any) -> AsyncIterator[Any]:
        """``describe`` for asyncio."""
        return self.describe(key, image, query, timeout=timeout, **params).__aiter__()

    # --- text to image --------------------------------------------------------

    def generate_image(
        self,
        key: str,
        prompt: str,
        *,
        width: int = 512,
        height: int = 512,
        steps: int = 20,
        guidance_scale: float = 7.0,
        negative_prompt: str | None = None,
        seed: int | None = None,
        init_image: Any = None,
        strength: float = 0.8,
        timeout: float | None = None,
    ) -> ImageStream:
        """Streams progress chunks; ``.result()`` returns the PIL image. img2img with ``init_image``."""
        if not isinstance(prompt, str) or not prompt:
            raise InvalidInput("prompt must be a non-empty str")
        for name, value in (("width", width), ("height", height), ("steps", steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidInput(f"{name} must be an int > 0, got {value!r}")
        if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise InvalidInput(f"strength must be in [0, 1], got {strength!r}")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise InvalidInput(f"guidance_scale must be >= 0, got {guidance_scale!r}")
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise InvalidInput(f"seed must be an int >= 0, got {seed!r}")
        init = [] if init_image is None else [image_input(init_image)]
        return ImageStream(
            self._native.generate_image(
                key, prompt, width, height, steps, float(guidance_scale), negative_prompt, seed, init,
                float(strength), _timeout(timeout), self._fetch_timeout,
            )
        )

    def agenerate_image(self, key: str, prompt: str, **kwargs: Any) -> ImageStream:
        """``generate_image`` for asyncio: ``async for p in stream`` and ``await stream.aresult()``."""
        return self.generate_image(key, prompt, **kwargs)

    # --- lifecycle ------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stops accepting, drains up to ``timeout`` s, cancels the rest, joins every thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._native.shutdown(float(timeout))
        _LIVE_POOLS.discard(self)

    async def aclose(self, timeout: float = 5.0) -> None:
        """``close`` without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close, timeout)

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
