"""Ollama-compatible routes: ``/api/chat``, ``/api/generate``, ``/api/embed`` (and the
older ``/api/embeddings``), ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/version``.

Streams are NDJSON, one object per line, ``"done": true`` on the last. A request's
``keep_alive`` ("5m", seconds, -1 for never, 0 to unload right after) becomes the
model's keep-alive in the pool, as Ollama applies it to the model it names; a
request without one restores the model's registered keep-alive. A
chat or generate request without messages or prompt loads the model, or with
``keep_alive: 0`` unloads it (Ollama's idiom).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import _params as P
from .. import _validate as v
from ..errors import InvalidInput, PoolError
from .config import parse_duration
from .http import (
    EventStream, Fields, body, cancel_on_disconnect, error_message, handles, http_image, json_response, ndjson, ollama_error,
    primed, text_inputs,
)
from .state import (
    Generation,
    ModelInfo,
    ServerState,
    cap_max_tokens,
    chunks,
    finite_embeddings,
    open_stream,
    run_to_end,
    stop_list,
)

__all__ = ["routes"]

VERSION = "0.12.0"  # the Ollama API version these routes follow, for clients that check it

# Options that tune Ollama's own runtime (context size, threads, GPU layers): the
# pool decides those, so they are accepted and have no effect.
_RUNTIME_OPTIONS = {
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "numa", "use_mmap", "use_mlock",
    "low_vram", "vocab_only", "f16_kv", "num_keep", "repeat_last_n",
}
# Sampling options with Ollama's neutral value: any other value is refused.
_NEUTRAL = {"mirostat": 0, "tfs_z": 1.0, "typical_p": 1.0, "penalize_newline": None}
_SAMPLING = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "seed": "seed",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


def _state(request: Request) -> ServerState:
    return request.app.state.mpool  # type: ignore[no-any-return]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _timestamp(seconds: float) -> str:
    """An RFC 3339 UTC time, clamped to the last one datetime can write (year 9999)."""
    try:
        when = datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        when = datetime.max.replace(tzinfo=timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _options(state: ServerState, f: Fields) -> dict[str, Any]:
    options = f.mapping("options")
    params: dict[str, Any] = {}
    for name, value in options.items():
        where = f"options.{name}"
        if name in _RUNTIME_OPTIONS:
            continue
        if name in _NEUTRAL:
            if value not in (_NEUTRAL[name], None, 0 if name == "mirostat" else _NEUTRAL[name]):
                raise InvalidInput(f"{where}={value!r} is not supported by this server")
            continue
        if name == "num_predict":
            n = v.int_in(where, value, -2, v.INT32_MAX)
            params["max_tokens"] = cap_max_tokens(state.cfg, where, None if n < 0 else n)
        elif name == "stop":
            stop = stop_list(where, value)
            if stop:
                params["stop"] = stop
        elif name in _SAMPLING:
            # Checked here, naming the option: a refused request must not reach the
            # keep-alive or the load below it.
            if value is not None:
                params[_SAMPLING[name]] = P.generation_param(_SAMPLING[name], value, where)
        else:
            known = sorted({"num_predict", "stop", *_SAMPLING, *_RUNTIME_OPTIONS, *_NEUTRAL})
            raise InvalidInput(f"{where}: unknown option; known: {', '.join(known)}")
    params.setdefault("max_tokens", state.cfg.limits.max_tokens)
    return params


def _keep_alive(info: ModelInfo, f: Fields) -> float:
    """As Ollama: each request sets the model's keep-alive, to its own value or, without
    one, back to the model's registered keep-alive. Read first, set (``_set_keep_alive``)
    only once the whole request is valid: a refused request changes nothing."""
    x = f.data.get("keep_alive")
    return info.keep_alive if x is None else parse_duration("keep_alive", x)


def _set_keep_alive(state: ServerState, info: ModelInfo, seconds: float) -> None:
    state.pool.set_keep_alive(info.key, seconds)


async def _load(state: ServerState, info: ModelInfo) -> float:
    """Loads the model if it has no replica; the seconds it took (Ollama's load_duration)."""
    if any(m["key"] == info.key and m["state"] == "ready" for m in state.pool.models()):
        return 0.0
    start = time.perf_counter()
    await state.pool.aload(info.key)
    return time.perf_counter() - start


def _images(where: str, x: Any, max_bytes: int) -> list[bytes | str]:
    if x is None:
        return []
    if not isinstance(x, list):
        raise InvalidInput(f"{where} must be a list of base64 images, got {v._show(x)}")
    return [http_image(f"{where}[{i}]", img, max_bytes) for i, img in enumerate(x)]


def _message(i: int, m: Any, max_bytes: int) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise InvalidInput(f"messages[{i}] must be an object with role and content, got {v._show(m)}")
    role = v.text(f"messages[{i}].role", m.get("role"), allow_empty=False)
    content = v.text(f"messages[{i}].content", m.get("content") or "")
    if m.get("tool_calls") or role == "tool":
        raise InvalidInput(f"messages[{i}]: tool calls are not supported by this server")
    images = _images(f"messages[{i}].images", m.get("images"), max_bytes)
    if not images:
        return {"role": role, "content": content}
    parts: list[dict[str, Any]] = [{"type": "image", "image": img} for img in images]
    parts.append({"type": "text", "text": content})
    return {"role": role, "content": parts}


def _final(info: ModelInfo, start: float, load_s: float, stats: Any, finish: str) -> dict[str, Any]:
    prompt = int(stats.prompt_tokens) if stats is not None else 0
    completion = int(stats.completion_tokens) if stats is not None else 0
    ttft = float(stats.time_to_first_token) if stats is not None else 0.0
    rate = float(stats.tokens_per_second) if stats is not None else 0.0
    return {
        "done": True,
        "done_reason": finish,
        "total_duration": _ns(time.perf_counter() - start),
        "load_duration": _ns(load_s),
        "prompt_eval_count": prompt,
        "prompt_eval_duration": _ns(ttft),
        "eval_count": completion,
        "eval_duration": _ns(completion / rate) if rate > 0 else 0,
    }


async def _lines(
    g: Generation, pool_stream: Any, source: AsyncIterator[Any], start: float, load_s: float, piece: Any
) -> AsyncIterator[str]:
    """NDJSON lines of ``pool_stream``'s chunks (``source``: ``chunks(pool_stream)``, primed)."""
    head = {"model": g.info.key}
    try:
        async for chunk in source:
            if chunk.text:
                yield ndjson({**head, "created_at": _now(), **piece(chunk.text), "done": False})
    except PoolError as e:
        yield ndjson({"error": error_message(e)})
        return
    finish = pool_stream.finish_reason or "stop"
    yield ndjson({**head, "created_at": _now(), **piece(""), **_final(g.info, start, load_s, pool_stream.stats, finish)})


async def _load_or_unload(state: ServerState, info: ModelInfo, keep_alive: float, piece: dict[str, Any]) -> Response:
    _set_keep_alive(state, info, keep_alive)
    if keep_alive == 0:
        await state.pool.aunload(info.key)
        reason = "unload"
    else:
        await _load(state, info)
        reason = "load"
    return JSONResponse({"model": info.key, "created_at": _now(), **piece, "done": True, "done_reason": reason})


async def _generate(
    request: Request, state: ServerState, f: Fields, g: Generation, piece: Any, start: float, keep_alive: float
) -> Response:
    stream = f.flag("stream", default=True)  # the last field read: nothing starts for a refused request
    _set_keep_alive(state, g.info, keep_alive)
    load_s = await cancel_on_disconnect(request, _load(state, g.info))
    pool_stream = open_stream(state, g)
    if stream:
        source = await primed(request, chunks(pool_stream))  # a refused request is its own status, not a 200
        return EventStream(_lines(g, pool_stream, source, start, load_s, piece), "application/x-ndjson")
    text, _, stats, finish = await cancel_on_disconnect(request, run_to_end(pool_stream))
    return JSONResponse(
        {"model": g.info.key, "created_at": _now(), **piece(text), **_final(g.info, start, load_s, stats, finish)}
    )


def _refuse_common(f: Fields) -> None:
    fmt = f.data.get("format")
    if fmt not in (None, ""):
        raise InvalidInput("format (structured output) is not supported by this server")
    f.refuse("tools", "tool calls are not supported by this server", (None, []))
    f.refuse("think", "thinking mode is not supported by this server", (None, False))


async def _text_request(request: Request) -> tuple[float, ServerState, Fields, ModelInfo, float]:
    """What chat and generate start with: the clock, the body, the model, its keep-alive."""
    start = time.perf_counter()
    state = _state(request)
    f = Fields(await body(request))
    info = state.model(f.data.get("model"), "text_to_text")
    _refuse_common(f)
    return start, state, f, info, _keep_alive(info, f)


@handles(ollama_error)
async def chat(request: Request) -> Response:
    start, state, f, info, keep_alive = await _text_request(request)
    raw_messages = f.data.get("messages")
    if not raw_messages:
        return await _load_or_unload(state, info, keep_alive, {"message": {"role": "assistant", "content": ""}})
    if not isinstance(raw_messages, list):
        raise InvalidInput("messages must be a list of {role, content} objects")
    max_bytes = state.cfg.limits.max_image_bytes
    messages = [_message(i, m, max_bytes) for i, m in enumerate(raw_messages)]
    state.takes_images(info, any(isinstance(m["content"], list) for m in messages))
    g = Generation(info, _options(state, f), messages=messages)
    return await _generate(
        request, state, f, g, lambda text: {"message": {"role": "assistant", "content": text}}, start, keep_alive
    )


@handles(ollama_error)
async def generate(request: Request) -> Response:
    start, state, f, info, keep_alive = await _text_request(request)
    f.refuse("suffix", "insertion is not supported", (None, ""))
    f.refuse("template", "per-request templates are not supported; the model's chat template is used", (None, ""))
    f.refuse("context", "the deprecated context is not supported; use /api/chat", (None, []))
    prompt = f.text("prompt", default="") or ""
    images = _images("images", f.data.get("images"), state.cfg.limits.max_image_bytes)
    if not prompt and not images:
        return await _load_or_unload(state, info, keep_alive, {"response": ""})
    params = _options(state, f)
    system = f.text("system")
    raw = f.flag("raw")
    state.takes_images(info, bool(images))
    if raw:
        if images or system:
            raise InvalidInput("raw prompts take no images and no system prompt")
        g = Generation(info, params, prompt=prompt)
    else:
        content: Any = prompt
        if images:
            content = [*({"type": "image", "image": img} for img in images), {"type": "text", "text": prompt}]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        if images or _has_template(state, info):
            g = Generation(info, params, messages=messages)
        elif system:
            raise InvalidInput(f"model {info.key!r} has no chat template to place a system prompt in; use raw=true")
        else:
            g = Generation(info, params, prompt=prompt)
    return await _generate(request, state, f, g, lambda text: {"response": text}, start, keep_alive)


def _has_template(state: ServerState, info: ModelInfo) -> bool:
    try:
        state.pool.chat_template(info.key)
    except InvalidInput:
        return False
    return True


@handles(ollama_error)
async def embed(request: Request) -> Response:
    start = time.perf_counter()
    state = _state(request)
    f = Fields(await body(request))
    info = state.model(f.data.get("model"), "text_embedding")
    keep_alive = _keep_alive(info, f)
    texts = text_inputs(f, "input", state.cfg.limits.max_batch)
    truncate = f.flag("truncate", default=True)
    dimensions = f.integer("dimensions", 1, v.INT32_MAX)
    _set_keep_alive(state, info, keep_alive)
    load_s = await cancel_on_disconnect(request, _load(state, info))
    vectors = finite_embeddings(await cancel_on_disconnect(
        request, state.pool.aembed(info.key, texts, truncate=truncate, dimensions=dimensions)
    ), info.key)
    count = await state.acount_tokens(info, texts)
    return await json_response({
        "model": info.key,
        "embeddings": vectors.tolist(),
        "total_duration": _ns(time.perf_counter() - start),
        "load_duration": _ns(load_s),
        "prompt_eval_count": count,
    }, heavy=vectors.size > 50_000)


@handles(ollama_error)
async def embeddings(request: Request) -> Response:
    """The older single-prompt route: ``{"model", "prompt"}`` -> ``{"embedding"}``."""
    state = _state(request)
    f = Fields(await body(request))
    info = state.model(f.data.get("model"), "text_embedding")
    keep_alive = _keep_alive(info, f)
    prompt = f.text("prompt", required=True) or ""
    _set_keep_alive(state, info, keep_alive)
    vectors = finite_embeddings(await cancel_on_disconnect(request, state.pool.aembed(info.key, [prompt])), info.key)
    return JSONResponse({"embedding": vectors[0].tolist()})


def _details(info: ModelInfo) -> dict[str, Any]:
    return {
        "format": "safetensors" if info.path else "python",
        "family": info.family or "",
        "families": [info.family] if info.family else [],
        "parameter_size": "",
        "quantization_level": (info.dtype or "").upper(),
    }


def _digest(info: ModelInfo) -> str:
    """An identifier of the registration (key and path), not a hash of the weights."""
    return hashlib.sha256(f"{info.key}\0{info.path or ''}".encode()).hexdigest()


@handles(ollama_error)
async def tags(request: Request) -> Response:
    state = _state(request)
    stats = {m["key"]: m for m in state.pool.models()}
    out = []
    for key, info in state.models.items():
        out.append({
            "name": key,
            "model": key,
            "modified_at": datetime.fromtimestamp(info.created, timezone.utc).isoformat().replace("+00:00", "Z"),
            "size": int(stats.get(key, {}).get("memory_mb", 0) * (1 << 20)),
            "digest": _digest(info),
            "details": _details(info),
            "capabilities": info.capabilities,
        })
    return JSONResponse({"models": out})


@handles(ollama_error)
async def ps(request: Request) -> Response:
    """Models with at least one replica, their memory and when keep-alive would unload them."""
    state = _state(request)
    out = []
    for m in state.pool.stats()["models"].values():
        info = state.models.get(m["key"])
        if info is None or m["replicas"] == 0:
            continue
        reserved = m["reserved_mb"]
        keep = m["keep_alive"]
        idle = m["idle_s"]
        never = m["pinned"] or keep < 0 or keep == float("inf")
        expires = "0001-01-01T00:00:00Z" if never else _timestamp(time.time() + max(keep - idle, 0.0))
        out.append({
            "name": m["key"],
            "model": m["key"],
            "size": int(sum(reserved.values()) * (1 << 20)),
            "size_vram": int(sum(mb for d, mb in reserved.items() if d != "cpu") * (1 << 20)),
            "digest": _digest(info),
            "details": _details(info),
            "expires_at": expires,
            "replicas": m["replicas"],
        })
    return JSONResponse({"models": out})


_OLLAMA_CAPABILITIES = {"text_to_text": "completion", "text_embedding": "embedding", "vision": "vision"}


@handles(ollama_error)
async def show(request: Request) -> Response:
    """What Ollama clients ask before they use a model: its details and capabilities."""
    state = _state(request)
    f = Fields(await body(request))
    info = state.model(f.data.get("model") or f.data.get("name"))
    template = ""
    if "text_to_text" in info.capabilities:
        try:
            templates = state.pool.chat_template(info.key).templates
            template = templates.get("default") or next(iter(templates.values()))
        except InvalidInput:
            template = ""
    return JSONResponse({
        "modelfile": "",
        "parameters": "",
        "template": template,
        "details": _details(info),
        "model_info": {"general.architecture": info.family or "", "mpool.path": info.path or ""},
        "capabilities": [_OLLAMA_CAPABILITIES[c] for c in info.capabilities if c in _OLLAMA_CAPABILITIES],
        "modified_at": datetime.fromtimestamp(info.created, timezone.utc).isoformat().replace("+00:00", "Z"),
    })


async def version(request: Request) -> Response:
    return JSONResponse({"version": VERSION})


routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/version", version, methods=["GET"]),
]
