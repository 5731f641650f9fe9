"""OpenAI-compatible routes (as the official ``openai`` client sends and reads them),
plus ``/v1/rerank`` in the shapes infinity (Cohere) and TEI use."""

from __future__ import annotations

import asyncio
import base64
import codecs
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import _validate as v
from ..errors import InvalidInput, PoolError
from .http import (
    EventStream,
    Fields,
    body,
    cancel_on_disconnect,
    handles,
    http_image,
    json_response,
    openai_error,
    openai_error_body,
    primed,
    sse,
    text_inputs,
)
from .state import (
    ROUTED_MODEL,
    Generation,
    ServerState,
    cap_max_tokens,
    choices,
    finite_embeddings,
    merged,
    open_streams,
    run_to_end,
    stop_list,
)

__all__ = ["routes"]

_FINISH = {"stop": "stop", "length": "length"}


def _state(request: Request) -> ServerState:
    return request.app.state.mpool  # type: ignore[no-any-return]


# --- embeddings ---------------------------------------------------------------------


@handles(openai_error)
async def embeddings(request: Request) -> Response:
    state = _state(request)
    f = Fields(await body(request))
    info = state.model(f.data.get("model"), "text_embedding")
    texts = text_inputs(f, "input", state.cfg.limits.max_batch)
    encoding = f.text("encoding_format", default="float")
    if encoding not in ("float", "base64"):
        raise InvalidInput(f"encoding_format must be 'float' or 'base64', got {encoding!r}")
    dimensions = f.integer("dimensions", 1, v.INT32_MAX)
    task = f.text("task")  # an mpool extension: the model's prompt / adapter
    vectors = finite_embeddings(await cancel_on_disconnect(
        request, state.pool.aembed(info.key, texts, task=task, dimensions=dimensions)
    ), info.key)
    tokens = await state.acount_tokens(info, texts)
    data = []
    for i, row in enumerate(vectors):
        if encoding == "base64":
            value: Any = base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
        else:
            value = row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    answer = {"object": "list", "data": data, "model": info.key, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return await json_response(answer, heavy=encoding == "float" and vectors.size > 50_000)


# --- chat and completions -------------------------------------------------------------


def _sampling(state: ServerState, f: Fields, max_tokens: Any, max_name: str) -> dict[str, Any]:
    """The generation parameters both text routes take, in mpool's names."""
    f.refuse("best_of", "best_of is not supported; use n", (None, 1))
    f.refuse("logit_bias", "logit biases are not supported", (None, {}))
    f.refuse("audio", "audio output is not supported")
    if f.data.get("modalities") not in (None, ["text"]):
        raise InvalidInput(f"modalities={v._show(f.data['modalities'])} is not supported; only ['text']")
    params: dict[str, Any] = {"max_tokens": cap_max_tokens(state.cfg, max_name, max_tokens)}
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        if f.has(name):
            params[name] = f.data[name]
    for name in ("presence_penalty", "frequency_penalty"):  # OpenAI's range, narrower than the pool's
        if f.has(name):
            params[name] = v.finite(f.name(name), f.data[name], lo=-2.0, hi=2.0)
    if f.has("top_k"):
        params["top_k"] = f.data["top_k"]
    if f.has("seed"):
        params["seed"] = v.int_in(f.name("seed"), f.data["seed"], 0, v.UINT64_MAX)
    stop = stop_list(f.name("stop"), f.data.get("stop"))
    if stop:
        params["stop"] = stop
    if f.has("ignore_eos"):
        params["ignore_eos"] = f.data["ignore_eos"]
    return params


def _usage_in_stream(f: Fields, stream: bool) -> bool:
    """``stream_options.include_usage``; as OpenAI, ``stream_options`` needs ``stream``."""
    if not stream and f.data.get("stream_options") is not None:
        raise InvalidInput("stream_options is only allowed when stream is true")
    return stream and bool(Fields(f.mapping("stream_options"), "stream_options.").flag("include_usage"))


def _openai_content(i: int, content: Any, max_image: int) -> Any:
    """A message's content as mpool's chat takes it: text parts joined, image parts as images."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidInput(f"messages[{i}].content must be a string or a list of parts, got {v._show(content)}")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": v.text(f"{where}.text", part.get("text"))})
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            parts.append({"type": "image", "image": http_image(f"{where}.image_url.url", url, max_image)})
        else:
            raise InvalidInput(f"{where}.type must be 'text' or 'image_url', got {v._show(kind)}")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _messages(x: Any, max_image: int) -> list[dict[str, Any]]:
    if not isinstance(x, list) or not x:
        raise InvalidInput("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(x):
        if not isinstance(m, dict):
            raise InvalidInput(f"messages[{i}] must be an object with role and content, got {v._show(m)}")
        role = v.text(f"messages[{i}].role", m.get("role"), allow_empty=False)
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if m.get("tool_calls") or role == "tool":
            raise InvalidInput(f"messages[{i}]: tool calls are not supported by this server")
        out.append({"role": role, "content": _openai_content(i, m.get("content"), max_image)})
    return out


def _logprob_entry(state: ServerState, g: Generation, lp: Any) -> dict[str, Any]:
    def item(token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": state.token_text(g.info, token_id), "logprob": logprob,
                "bytes": list(state.token_bytes(g.info, token_id, skip_special=False))}

    entry = item(lp.token_id, lp.logprob)
    entry["top_logprobs"] = [item(t, p) for t, p in lp.top[: g.top_logprobs or 0]]
    return entry


def _n(state: ServerState, f: Fields) -> int:
    return f.integer("n", 1, state.cfg.limits.max_choices, default=1) or 1


def _chat_request(state: ServerState, f: Fields) -> tuple[list[Generation], bool, bool]:
    info = state.model(f.data.get("model"), "text_to_text")
    f.refuse("tools", "tool calls are not supported by this server", (None, []))
    f.refuse("tool_choice", "tool calls are not supported by this server", (None, "none"))
    f.refuse("functions", "function calls are not supported by this server", (None, []))  # tools' older form
    f.refuse("function_call", "function calls are not supported by this server", (None, "none"))
    fmt = f.mapping("response_format")
    if fmt and fmt.get("type") != "text":
        raise InvalidInput(f"response_format {fmt.get('type')!r} is not supported; only 'text'")
    max_name = "max_completion_tokens" if f.has("max_completion_tokens") else "max_tokens"
    params = _sampling(state, f, f.data.get(max_name), max_name)
    want = f.flag("logprobs")
    top = f.integer("top_logprobs", 0, 20)
    if top is not None and not want:
        raise InvalidInput("top_logprobs needs logprobs=true")
    messages = _messages(f.data.get("messages"), state.cfg.limits.max_image_bytes)
    state.takes_images(info, any(isinstance(m["content"], list) for m in messages))
    stream = f.flag("stream")
    usage_in_stream = _usage_in_stream(f, stream)
    one = Generation(info, params, messages=messages, top_logprobs=(top or 0) if want else None)
    return choices([one], _n(state, f)), stream, usage_in_stream


def _usage(gens: list[Generation], stats: list[Any]) -> dict[str, int]:
    """Each prompt's tokens once (its n choices share it), every choice's completion tokens."""
    prompt = sum(int(st.prompt_tokens) for g, st in zip(gens, stats) if st is not None and g.choice == 0)
    completion = sum(int(st.completion_tokens) for st in stats if st is not None)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _whole(request: Request, streams: list[Any]) -> list[tuple[str, list[Any], Any, str]]:
    async def all_of() -> list[tuple[str, list[Any], Any, str]]:
        try:
            return list(await asyncio.gather(*(run_to_end(s) for s in streams)))
        finally:
            for s in streams:
                if s.finish_reason is None:
                    s.close()

    return await cancel_on_disconnect(request, all_of())


@handles(openai_error)
async def chat_completions(request: Request) -> Response:
    state = _state(request)
    gens, stream, usage_in_stream = _chat_request(state, Fields(await body(request)))
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": gens[0].info.key}
    streams = open_streams(state, gens)

    def piece(i: int, chunk: Any) -> dict[str, Any]:
        lps = None
        if gens[i].top_logprobs is not None:
            lps = {"content": [_logprob_entry(state, gens[i], lp) for lp in chunk.logprobs]}
        return {"index": i, "delta": {"content": chunk.text}, "logprobs": lps, "finish_reason": None}

    def end(i: int, finish: str) -> dict[str, Any]:
        return {"index": i, "delta": {}, "logprobs": None, "finish_reason": _FINISH.get(finish, finish)}

    if stream:
        opening = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                   for i in range(len(gens))]
        source = await primed(request, merged(streams))  # a refused request is its own status, not a 200
        events = _events(gens, streams, head, opening, piece, end, usage_in_stream, source)
        return EventStream(events, "text/event-stream")
    out = []
    for i, (text, logprobs, _, finish) in enumerate(await _whole(request, streams)):
        g = gens[i]
        out.append({
            "index": i,
            "message": {"role": "assistant", "content": text},
            "logprobs": None if g.top_logprobs is None else {"content": [_logprob_entry(state, g, lp) for lp in logprobs]},
            "finish_reason": _FINISH.get(finish, finish),
        })
    return JSONResponse(
        {"id": ident, "object": "chat.completion", "created": created, "model": gens[0].info.key,
         "choices": out, "usage": _usage(gens, [s.stats for s in streams])}
    )


async def _events(
    gens: list[Generation],
    streams: list[Any],
    head: dict[str, Any],
    opening: list[dict[str, Any]],
    piece: Any,
    end: Any,
    usage_in_stream: bool,
    source: AsyncIterator[tuple[int, Any]],
) -> AsyncIterator[str]:
    """SSE events of several choices, each chunk as it comes (``source``: ``merged(streams)``,
    primed), then each choice's end."""
    for choice in opening:
        yield sse({**head, "choices": [choice]})
    try:
        async for i, chunk in source:
            if chunk is None:
                last: dict[str, Any] = {**head, "choices": [end(i, streams[i].finish_reason or "stop")]}
                if usage_in_stream:
                    last["usage"] = None
                yield sse(last)
            elif chunk.text or chunk.logprobs:
                yield sse({**head, "choices": [piece(i, chunk)]})
    except PoolError as e:
        yield sse(openai_error_body(e))
        return
    if usage_in_stream:
        yield sse({**head, "choices": [], "usage": _usage(gens, [s.stats for s in streams])})
    yield "data: [DONE]\n\n"


def _completion_prompts(x: Any, max_batch: int) -> list[str | list[int]]:
    """One prompt (a string or token ids) or a batch of them."""
    def one(name: str, p: Any) -> str | list[int]:
        if isinstance(p, str):
            if not p:
                raise InvalidInput(f"{name} is empty")
            return p
        if isinstance(p, list) and p and all(isinstance(i, int) and not isinstance(i, bool) for i in p):
            return v.token_ids(name, p, 0, v.INT32_MAX)
        raise InvalidInput(f"{name} must be a non-empty string or a non-empty list of token ids, got {v._show(p)}")

    if isinstance(x, list) and x and all(isinstance(p, (str, list)) for p in x):
        if len(x) > max_batch:
            raise InvalidInput(f"prompt holds {len(x)} prompts; this server takes at most {max_batch} per request")
        return [one(f"prompt[{i}]", p) for i, p in enumerate(x)]
    return [one("prompt", x)]


def _legacy_logprobs(state: ServerState, g: Generation, logprobs: list[Any], start: int) -> dict[str, Any]:
    """OpenAI's legacy logprobs; ``text_offset`` is where each token starts in the
    text from ``start`` on: a token inside a character starts at that character."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    so_far = b""
    for lp in logprobs:
        tokens.append(state.token_text(g.info, lp.token_id))
        token_logprobs.append(lp.logprob)
        tops.append({state.token_text(g.info, t): p for t, p in lp.top[: g.top_logprobs or 0]})
        # What the stream has written by then: invalid bytes as U+FFFD, a character
        # still unfinished not yet.
        offsets.append(start + len(codecs.getincrementaldecoder("utf-8")("replace").decode(so_far, final=False)))
        so_far += state.token_bytes(g.info, lp.token_id, skip_special=True)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


@handles(openai_error)
async def completions(request: Request) -> Response:
    state = _state(request)
    f = Fields(await body(request))
    info = state.model(f.data.get("model"), "text_to_text")
    f.refuse("suffix", "insertion is not supported")
    f.refuse("echo", "echoing the prompt is not supported", (None, False))
    params = _sampling(state, f, f.data.get("max_tokens"), "max_tokens")
    top = f.integer("logprobs", 0, 20)
    prompts = _completion_prompts(f.data.get("prompt"), state.cfg.limits.max_choices)
    n = _n(state, f)
    if len(prompts) * n > state.cfg.limits.max_choices:
        raise InvalidInput(
            f"{len(prompts)} prompts x n={n} is {len(prompts) * n} choices; this server makes at most "
            f"{state.cfg.limits.max_choices} per request"
        )
    gens = choices([Generation(info, params, prompt=p, top_logprobs=top) for p in prompts], n)
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": ident, "object": "text_completion", "created": created, "model": info.key}
    # Every field is read before a stream opens: a refused request starts no job.
    stream = f.flag("stream")
    usage_in_stream = _usage_in_stream(f, stream)
    streams = open_streams(state, gens)
    if stream:
        offsets = [0] * len(gens)

        def piece(i: int, chunk: Any) -> dict[str, Any]:
            lps = None if top is None else _legacy_logprobs(state, gens[i], chunk.logprobs, offsets[i])
            offsets[i] += len(chunk.text)
            return {"index": i, "text": chunk.text, "logprobs": lps, "finish_reason": None}

        def end(i: int, finish: str) -> dict[str, Any]:
            return {"index": i, "text": "", "logprobs": None, "finish_reason": _FINISH.get(finish, finish)}

        source = await primed(request, merged(streams))  # a refused request is its own status, not a 200
        return EventStream(_events(gens, streams, head, [], piece, end, usage_in_stream, source), "text/event-stream")
    out = []
    for i, (text, logprobs, _, finish) in enumerate(await _whole(request, streams)):
        out.append({
            "index": i,
            "text": text,
            "logprobs": None if top is None else _legacy_logprobs(state, gens[i], logprobs, 0),
            "finish_reason": _FINISH.get(finish, finish),
        })
    return JSONResponse(
        {"id": ident, "object": "text_completion", "created": created, "model": info.key,
         "choices": out, "usage": _usage(gens, [s.stats for s in streams])}
    )


# --- images ------------------------------------------------------------------------


def _size(state: ServerState, x: Any) -> tuple[int | None, int | None]:
    if x is None or x == "auto":
        return None, None
    if not isinstance(x, str) or x.count("x") != 1:
        raise InvalidInput(f"size must be 'WIDTHxHEIGHT' (e.g. '512x512') or 'auto', got {v._show(x)}")
    w, h = x.split("x")
    # ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and "٨".
    if not (w.isascii() and h.isascii() and w.isdigit() and h.isdigit()):
        raise InvalidInput(f"size must be 'WIDTHxHEIGHT' (e.g. '512x512') or 'auto', got {x!r}")
    cap = state.cfg.limits.max_image_side
    width, height = int(w), int(h)
    if not (1 <= width <= cap and 1 <= height <= cap):
        raise InvalidInput(f"size {x} is outside this server's limit of 1..{cap} pixels per side")
    return width, height


def _encode(image: Any, fmt: str) -> str:
    out = io.BytesIO()
    image.save(out, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])
    return base64.b64encode(out.getvalue()).decode("ascii")


async def _images(request: Request, state: ServerState, f: Fields, init: Any) -> Response:
    info = state.model(f.data.get("model"), "text_to_image")
    prompt = f.text("prompt", required=True)
    n = f.integer("n", 1, state.cfg.limits.max_images, default=1) or 1
    fmt = f.text("response_format", default="b64_json")
    if fmt != "b64_json":
        raise InvalidInput(f"response_format {fmt!r} is not supported; this server returns b64_json")
    out_fmt = f.text("output_format", default="png")
    if out_fmt not in ("png", "jpeg", "webp"):
        raise InvalidInput(f"output_format must be png, jpeg or webp, got {out_fmt!r}")
    width, height = _size(state, f.data.get("size"))
    seed = f.integer("seed", 0, v.UINT64_MAX)
    settings: dict[str, Any] = {
        "width": width,
        "height": height,
        "steps": f.integer("steps", 1, 10_000),
        "guidance_scale": f.number("guidance_scale", lo=0),
        "negative_prompt": f.text("negative_prompt"),
        "preview": False,
    }
    if init is not None:
        settings["init_image"] = init
        settings["strength"] = f.number("strength", lo=0, hi=1)
    streams = [
        state.pool.generate_image(info.key, prompt or "", seed=None if seed is None else seed + i, **settings)
        for i in range(n)
    ]

    async def run() -> list[Any]:
        try:
            return list(await asyncio.gather(*(s.aresult() for s in streams)))
        finally:
            for s in streams:
                s.close()

    images = await cancel_on_disconnect(request, run())
    data = [{"b64_json": _encode(img, out_fmt), "revised_prompt": None} for img in images]
    return JSONResponse({"created": int(time.time()), "data": data})


@handles(openai_error)
async def image_generations(request: Request) -> Response:
    state = _state(request)
    f = Fields(await body(request))
    return await _images(request, state, f, None)


@handles(openai_error)
async def image_edits(request: Request) -> Response:
    """img2img: multipart (as the openai client sends it) or JSON with the image as a URL / base64."""
    state = _state(request)
    max_image = state.cfg.limits.max_image_bytes
    init: str | bytes
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        data, init = await _read_form(request, max_image)
        f = Fields(data)
    else:
        f = Fields(await body(request))
        init = http_image("image", f.data.get("image"), max_image)
    f.refuse("mask", "inpainting masks are not supported")
    return await _images(request, state, f, init)


async def _read_form(request: Request, max_image: int) -> tuple[dict[str, Any], bytes]:
    """The fields and the one image file of a multipart edit request (its temporary files closed after)."""
    try:
        form = await request.form(max_files=4, max_fields=64, max_part_size=max(max_image, 1 << 20))
    except PoolError:
        raise
    except Exception as e:  # noqa: BLE001 - the multipart parser's errors are not typed
        raise InvalidInput(f"the multipart body cannot be read: {e}") from None
    try:
        data: dict[str, Any] = {}
        init: bytes | None = None
        for name, value in form.multi_items():
            if not isinstance(value, str):
                if name not in ("image", "image[]"):
                    raise InvalidInput(f"{name}: only the image may be a file (masks are not supported)")
                if init is not None:
                    raise InvalidInput("image: send one image")
                init = await value.read()
                if len(init) > max_image:
                    raise InvalidInput(f"image is larger than the server's max_image_mb ({max_image >> 20} MB)")
            else:
                data[name] = _form_value(name, value)
    finally:
        await form.close()
    if init is None:
        raise InvalidInput("image is required: the picture to edit")
    return data, init


_FORM_NUMBERS = {"n", "steps", "seed"}
_FORM_REALS = {"strength", "guidance_scale"}


def _form_value(name: str, value: str) -> Any:
    try:
        if name in _FORM_NUMBERS:
            return int(value)
        if name in _FORM_REALS:
            return float(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a number, got {value!r}") from None
    return value


# --- rerank and models ----------------------------------------------------------------


@handles(openai_error)
async def rerank(request: Request) -> Response:
    """infinity / Cohere shape with ``documents``; TEI's (a bare list) with ``texts``."""
    state = _state(request)
    f = Fields(await body(request))
    tei = "texts" in f.data and "documents" not in f.data
    key = f.data.get("model")
    if key is None and tei and ROUTED_MODEL.get() is None:
        key = state.default_reranker()
    info = state.model(key, "rerank")
    query = f.text("query", required=True) or ""
    docs_key = "texts" if tei else "documents"
    raw_docs = f.data.get(docs_key)
    if isinstance(raw_docs, list):
        raw_docs = [d.get("text") if isinstance(d, dict) else d for d in raw_docs]
    documents = text_inputs(Fields({docs_key: raw_docs}), docs_key, state.cfg.limits.max_batch)
    top_n = f.integer("top_n", 1, v.INT32_MAX)
    raw = f.flag("raw_scores")
    truncate = f.flag("truncate", default=True)
    ranked = await cancel_on_disconnect(
        request, state.pool.arerank(info.key, query, documents, top_n=top_n, raw=raw, truncate=truncate)
    )
    if tei:
        with_text = f.flag("return_text")
        return JSONResponse(
            [{"index": r.index, "score": r.score, **({"text": documents[r.index]} if with_text else {})} for r in ranked]
        )
    with_docs = f.flag("return_documents")
    results = [
        {"index": r.index, "relevance_score": r.score, **({"document": documents[r.index]} if with_docs else {})}
        for r in ranked
    ]
    tokens = await state.acount_tokens(info, [query] * len(documents) + documents)
    return JSONResponse(
        {"object": "rerank", "id": f"rerank-{uuid.uuid4().hex}", "model": info.key, "results": results,
         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )


def _model_entry(state: ServerState, key: str) -> dict[str, Any]:
    info = state.models[key]
    return {"id": key, "object": "model", "created": info.created, "owned_by": "mpool", "capabilities": info.capabilities}


@handles(openai_error)
async def list_models(request: Request) -> Response:
    state = _state(request)
    return JSONResponse({"object": "list", "data": [_model_entry(state, k) for k in state.models]})


@handles(openai_error)
async def get_model(request: Request) -> Response:
    state = _state(request)
    key = request.path_params["model"]
    state.model(key)
    return JSONResponse(_model_entry(state, key))


routes = [
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/images/generations", image_generations, methods=["POST"]),
    Route("/v1/images/edits", image_edits, methods=["POST"]),
    Route("/v1/rerank", rerank, methods=["POST"]),
    Route("/rerank", rerank, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
