"""The server's state: the pool, what each registered model is, and generation
helpers shared by the OpenAI and Ollama routes (parameters, token strings, usage)."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _validate as v
from ..errors import InvalidInput, ModelError, ModelNotFound, PoolError
from ..models import Model
from ..pool import Pool
from .config import ModelEntry, ServerConfig

__all__ = ["ROUTED_MODEL", "Generation", "ModelInfo", "ServerState", "register_models"]

# The model a request was routed for outside its body (Ray Serve's multiplexed model
# id): set by the front end for the request's task; the body's "model" must agree.
ROUTED_MODEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("mpool_routed_model", default=None)


@dataclass
class ModelInfo:
    """What the server knows of a registered model."""

    key: str
    capabilities: list[str]
    path: str | None = None
    family: str | None = None
    dtype: str | None = None
    preload: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    tokenizer: Any = None  # mpool.tokenizer.Tokenizer, loaded on first use; False: none
    load_error: str | None = None
    keep_alive: float = 300.0  # as registered: what an Ollama request without keep_alive restores


def _python_model(entry: ModelEntry) -> Model:
    module_name, _, attr = (entry.python or "").partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise InvalidInput(f"models.{entry.key}.python = {entry.python!r}: cannot import it ({e})") from None
    model = factory()
    if not isinstance(model, Model):
        raise InvalidInput(
            f"models.{entry.key}.python = {entry.python!r} returned {type(model).__name__}, not an mpool model"
        )
    return model


def register_models(pool: Pool, cfg: ServerConfig) -> dict[str, ModelInfo]:
    """Registers the config's models in ``pool``; returns what the server keeps of each."""
    out: dict[str, ModelInfo] = {}
    for entry in cfg.models:
        keep_alive = entry.keep_alive
        if keep_alive is None and entry.preload:
            keep_alive = -1.0  # a preloaded model stays resident: /ready reports it so
        kwargs: dict[str, Any] = {
            "keep_alive": keep_alive,
            "pinned": entry.pinned,
            "max_replicas": entry.max_replicas,
        }
        if entry.device is not None:
            kwargs["device"] = entry.device
        if entry.devices is not None:
            kwargs["devices"] = entry.devices
        if entry.python is not None:
            model: Any = _python_model(entry)
        else:
            model = entry.path
            kwargs.update(dtype=entry.dtype, context_length=entry.context_length, options=entry.options)
        info = pool.register(entry.key, model, **kwargs)
        registered = {m["key"]: m for m in pool.models()}[entry.key]
        out[entry.key] = ModelInfo(
            keep_alive=registered["keep_alive"],
            key=entry.key,
            capabilities=list(info["capabilities"]),
            path=info.get("path"),
            family=info.get("family"),
            dtype=info.get("dtype"),
            preload=entry.preload,
        )
    return out


class ServerState:
    """The pool and the registry the routes read (one per app)."""

    def __init__(self, pool: Pool, cfg: ServerConfig, models: Mapping[str, ModelInfo]) -> None:
        self.pool = pool
        self.cfg = cfg
        self.models = dict(models)
        self.started = time.time()
        self.preloading = True
        self._lock = threading.Lock()

    def model(self, key: Any, capability: str | None = None, field_name: str = "model") -> ModelInfo:
        """The registered model ``key`` (ModelNotFound, as the pool words it), serving ``capability``."""
        routed = ROUTED_MODEL.get()
        if routed is not None:
            if key is None or key == "":
                key = routed
            elif key != routed:
                raise InvalidInput(
                    f"{field_name} {key!r} differs from the model id the request was routed for ({routed!r}); "
                    "send one of them, or the same"
                )
        if key is not None and not isinstance(key, str):
            raise InvalidInput(f"{field_name} must be a string, the key of a served model, got {v._show(key)}")
        if not key:
            raise InvalidInput(f"{field_name} is required: the key of a served model (GET /v1/models lists them)")
        info = self.models.get(key)
        if info is None and key.endswith(":latest"):  # Ollama's clients name the default tag
            info = self.models.get(key[: -len(":latest")])
        if info is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"no model is served as {key!r}; served: {known}")
        if capability is not None and capability not in info.capabilities:
            raise InvalidInput(
                f"model {key!r} does not serve {capability} (it serves: {', '.join(info.capabilities)})"
            )
        return info

    def takes_images(self, info: ModelInfo, has_images: bool) -> None:
        """InvalidInput when a request sends images to a model that does not serve vision."""
        if has_images and "vision" not in info.capabilities:
            raise InvalidInput(f"model {info.key!r} does not take images (it serves: {', '.join(info.capabilities)})")

    def default_reranker(self) -> str:
        """The one rerank model, for TEI-shaped requests, which name none."""
        keys = [k for k, i in self.models.items() if "rerank" in i.capabilities]
        if len(keys) != 1:
            served = ", ".join(keys) or "none"
            raise InvalidInput(f"model is required: this server serves several rerank models or none ({served})")
        return keys[0]

    def tokenizer(self, info: ModelInfo) -> Any:
        """The model's tokenizer for token strings and counts, or None (a Python-defined model)."""
        with self._lock:
            if info.tokenizer is None:
                info.tokenizer = False
                if info.path is not None:
                    from ..tokenizer import Tokenizer

                    tok: Any
                    try:
                        tok = Tokenizer.from_pretrained(info.path)
                    except PoolError:
                        tok = False
                    else:
                        tok.no_padding()  # usage counts real tokens, not a padded length
                    info.tokenizer = tok
            return info.tokenizer or None

    def count_tokens(self, info: ModelInfo, texts: list[str]) -> int:
        """Tokens of ``texts`` as the model's tokenizer splits them (special tokens included, cut
        where its tokenizer.json truncates, no padding); 0 without a tokenizer."""
        tok = self.tokenizer(info)
        if tok is None:
            return 0
        return sum(len(e.ids) for e in tok.encode_batch(texts))

    async def acount_tokens(self, info: ModelInfo, texts: list[str]) -> int:
        """``count_tokens`` off the event loop when there is much to tokenize."""
        if sum(len(t) for t in texts) < 4096:
            return self.count_tokens(info, texts)
        return await asyncio.get_running_loop().run_in_executor(None, self.count_tokens, info, texts)

    def token_bytes(self, info: ModelInfo, token_id: int, skip_special: bool) -> bytes:
        """What the token decodes to alone, before invalid UTF-8 is replaced: a
        byte-level token that holds part of a character gives that part. A special
        token gives its name, or nothing with ``skip_special`` (what it adds to the
        completion's text, which leaves special tokens out)."""
        tok = self.tokenizer(info)
        if tok is None:
            return str(token_id).encode()
        return bytes(tok.decode_bytes([token_id], skip_special_tokens=skip_special))

    def token_text(self, info: ModelInfo, token_id: int) -> str:
        """The token as OpenAI writes it: its text (a special token's name too), or
        ``bytes:\\xe2\\x80`` for part of a character."""
        raw = self.token_bytes(info, token_id, skip_special=False)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    async def preload(self) -> None:
        """Loads the preloaded models one after another; /ready turns true after."""
        try:
            for info in self.models.values():
                if not info.preload:
                    continue
                try:
                    await self.pool.aload(info.key, timeout=self.cfg.load_timeout)
                except PoolError as e:
                    info.load_error = f"{type(e).__name__}: {e}"
                    continue
                # Its tokenizer too (usage counts, token strings), off the event loop.
                await asyncio.get_running_loop().run_in_executor(None, self.tokenizer, info)
        finally:
            self.preloading = False

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        states = {m["key"]: m["state"] for m in self.pool.models()}
        preloaded = {k: i for k, i in self.models.items() if i.preload}
        detail = {
            k: ({"state": states.get(k, "unregistered")} | ({"error": i.load_error} if i.load_error else {}))
            for k, i in preloaded.items()
        }
        ready = not self.preloading and all(states.get(k) == "ready" for k in preloaded)
        return ready, detail


# --- generation ---------------------------------------------------------------------


@dataclass
class Generation:
    """One generation request, whatever API shape it came in: what to run and how."""

    info: ModelInfo
    params: dict[str, Any]
    messages: list[dict[str, Any]] | None = None  # chat
    prompt: str | list[int] | None = None  # completion
    top_logprobs: int | None = None  # None: no logprobs asked
    choice: int = 0  # which of its prompt's n choices (0 counts the prompt's tokens in usage)


def choices(prompts: list[Generation], n: int) -> list[Generation]:
    """``n`` choices of each prompt, in OpenAI's order (prompt by prompt). With a
    ``seed``, choice j samples with seed + j, so the choices differ and each one
    is reproducible."""
    out = []
    for g in prompts:
        for j in range(n):
            params = dict(g.params)
            if j and "seed" in params:
                params["seed"] = (params["seed"] + j) % (1 << 64)
            out.append(Generation(g.info, params, g.messages, g.prompt, g.top_logprobs, j))
    return out


def finite_embeddings(vectors: np.ndarray, key: str) -> np.ndarray:
    """Embeddings a JSON body can carry: a NaN or inf from the model is the model's
    error (500, named), not a body the encoder cannot write."""
    bad = ~np.isfinite(vectors)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ModelError(f"model {key!r} returned a non-finite value (NaN or inf) in embedding {row}")
    return vectors


def cap_max_tokens(cfg: ServerConfig, name: str, x: Any) -> int:
    """A request's max_tokens: at most the server's cap, the cap when absent."""
    cap = cfg.limits.max_tokens
    if x is None:
        return cap
    n = v.int_in(name, x, 1, v.INT32_MAX)
    if n > cap:
        raise InvalidInput(f"{name}={n} is above this server's limit of {cap} tokens per generation")
    return n


def stop_list(name: str, x: Any) -> list[str] | None:
    if x is None:
        return None
    if isinstance(x, str):
        x = [x]
    if not isinstance(x, list):
        raise InvalidInput(f"{name} must be a string or a list of strings, got {v._show(x)}")
    if len(x) > 16:
        raise InvalidInput(f"{name} may hold at most 16 strings, got {len(x)}")
    return [v.text(f"{name}[{i}]", s, allow_empty=False) for i, s in enumerate(x)] or None


def open_stream(state: ServerState, g: Generation) -> Any:
    """The pool stream of ``g`` (chat or completion); nothing has run yet when it raises."""
    params = dict(g.params)
    if g.top_logprobs is not None:
        params["logprobs"] = g.top_logprobs
    if g.messages is not None:
        return state.pool.chat(g.info.key, g.messages, **params)
    assert g.prompt is not None
    return state.pool.generate(g.info.key, g.prompt, **params)


def open_streams(state: ServerState, gens: list[Generation]) -> list[Any]:
    """One pool stream per choice; if one cannot open, those already open are cancelled."""
    streams: list[Any] = []
    try:
        for g in gens:
            streams.append(open_stream(state, g))
    except BaseException:
        for s in streams:
            s.close()
        raise
    return streams


async def merged(streams: list[Any]) -> AsyncIterator[tuple[int, Any]]:
    """``(i, chunk)`` from several streams as each arrives, and ``(i, None)`` when stream i
    ends. A stream's error ends them all (the rest are cancelled); so does closing this."""
    if len(streams) == 1:
        async for chunk in chunks(streams[0]):
            yield 0, chunk
        yield 0, None
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: Any) -> None:
        try:
            async for chunk in chunks(stream):
                await queue.put((i, chunk, None))
            await queue.put((i, None, None))
        except PoolError as e:
            await queue.put((i, None, e))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, chunk, error = await queue.get()
            if error is not None:
                raise error
            if chunk is None:
                left -= 1
            yield i, chunk
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            if s.finish_reason is None:
                s.close()


async def chunks(stream: Any) -> AsyncIterator[Any]:
    """The stream's chunks on the event loop; closing the iterator cancels the generation."""
    it = stream.__aiter__()
    try:
        async for chunk in it:
            yield chunk
    finally:
        await it.aclose()
        if stream.finish_reason is None:
            stream.close()


async def run_to_end(stream: Any) -> tuple[str, list[Any], Any, str]:
    """Text, per-token logprobs, stats and finish reason of a whole generation."""
    parts: list[str] = []
    logprobs: list[Any] = []
    try:
        async for chunk in chunks(stream):
            parts.append(chunk.text)
            logprobs.extend(chunk.logprobs)
    except asyncio.CancelledError:
        stream.close()
        raise
    return "".join(parts), logprobs, stream.stats, stream.finish_reason or "stop"
