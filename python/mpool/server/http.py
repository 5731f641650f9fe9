"""What every route shares: error statuses, request bodies, image inputs sent over
HTTP, cancellation when the client goes away, and streamed responses.

Nothing here knows a model: the routes call the public ``mpool.Pool`` API.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from functools import partial
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .. import _validate as v
from ..errors import (
    Cancelled,
    InternalError,
    InvalidInput,
    MemoryExhausted,
    ModelError,
    ModelNotFound,
    NotCopyable,
    Overloaded,
    PoolError,
    ShuttingDown,
    SpawnFailed,
    Timeout,
)

__all__ = [
    "BodyTooLarge",
    "Unauthorized",
    "EventStream",
    "body",
    "error_status",
    "http_image",
    "openai_error",
    "text_inputs",
    "until_disconnected",
    "cancel_on_disconnect",
]

T = TypeVar("T")


class BodyTooLarge(InvalidInput):
    """The request body exceeds the server's ``max_body_mb``: HTTP 413."""

    code = "request_too_large"


class Unauthorized(InvalidInput):
    """No or a wrong API key: HTTP 401."""

    code = "invalid_api_key"


class RouteNotFound(InvalidInput):
    """No such route: HTTP 404."""

    code = "unknown_route"


class MethodNotAllowed(InvalidInput):
    """A route that exists, asked with a method it does not serve: HTTP 405 (with ``Allow``)."""

    code = "method_not_allowed"


# Pool errors by HTTP status, most specific class first.
_STATUS: tuple[tuple[type[PoolError], int], ...] = (
    (BodyTooLarge, 413),
    (Unauthorized, 401),
    (RouteNotFound, 404),
    (MethodNotAllowed, 405),
    (NotCopyable, 400),
    (InvalidInput, 400),
    (ModelNotFound, 404),
    (Overloaded, 429),
    (MemoryExhausted, 503),
    (ShuttingDown, 503),
    (Cancelled, 503),  # only the server cancels what a connected client still waits for: at shutdown
    (Timeout, 504),
    (ModelError, 500),
    (SpawnFailed, 500),
    (InternalError, 500),
)

_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}

RETRY_AFTER_S = 1


def error_status(e: PoolError) -> int:
    """The HTTP status of a pool error (docs/serving.md has the table)."""
    for cls, status in _STATUS:
        if isinstance(e, cls):
            return status
    return 500


def error_headers(status: int) -> dict[str, str]:
    if status == 429:
        return {"Retry-After": str(RETRY_AFTER_S)}
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    return {}


def error_message(e: BaseException) -> str:
    """``str(e)`` as UTF-8 can carry it: a lone surrogate the message quotes from the
    request (a JSON ``"\\ud800"``) is written as its escape, not a failed response."""
    return str(e).encode("utf-8", "backslashreplace").decode("utf-8")


def openai_error_body(e: PoolError, param: str | None = None) -> dict[str, Any]:
    status = error_status(e)
    return {
        "error": {"message": error_message(e), "type": _TYPE.get(status, "server_error"), "param": param, "code": e.code}
    }


async def json_response(data: Any, heavy: bool = False) -> Response:
    """A JSON response; a ``heavy`` one (thousands of numbers) is encoded on a worker
    thread, so the event loop keeps serving other requests and streams meanwhile."""
    if not heavy:
        return JSONResponse(data)
    encode = partial(json.dumps, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    text = await asyncio.get_running_loop().run_in_executor(None, encode, data)
    return Response(text.encode("utf-8"), media_type="application/json")


def openai_error(e: PoolError) -> JSONResponse:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    status = error_status(e)
    return JSONResponse(openai_error_body(e), status_code=status, headers=error_headers(status))


def ollama_error(e: PoolError) -> JSONResponse:
    """Ollama's error shape: ``{"error": "message"}``."""
    status = error_status(e)
    return JSONResponse({"error": error_message(e)}, status_code=status, headers=error_headers(status))


async def body(request: Request) -> dict[str, Any]:
    """The request's JSON object; InvalidInput when it is not one."""
    raw = await request.body()
    if not raw:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidInput("the request body nests arrays or objects too deeply to parse") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


class Fields:
    """Typed access to a JSON object's fields; every error names the field."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        x = self.data.get(key)
        if x is None:
            if required:
                raise InvalidInput(f"{self.name(key)} is required")
            return default
        return v.text(self.name(key), x)

    def flag(self, key: str, default: bool = False) -> bool:
        x = self.data.get(key)
        return default if x is None else v.flag(self.name(key), x)

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int | None:
        x = self.data.get(key)
        return default if x is None else v.int_in(self.name(key), x, lo, hi)

    def number(self, key: str, default: float | None = None, **bounds: Any) -> float | None:
        x = self.data.get(key)
        return default if x is None else v.finite(self.name(key), x, **bounds)

    def mapping(self, key: str) -> dict[str, Any]:
        x = self.data.get(key)
        if x is None:
            return {}
        if not isinstance(x, Mapping):
            raise InvalidInput(f"{self.name(key)} must be an object, got {v._show(x)}")
        return dict(x)

    def refuse(self, key: str, why: str, allowed: tuple[Any, ...] = (None,)) -> None:
        """InvalidInput when ``key`` is set to something other than ``allowed``."""
        x = self.data.get(key)
        if x not in allowed:
            raise InvalidInput(f"{self.name(key)}={v._show(x)} is not supported: {why}")


def text_inputs(f: Fields, key: str, max_batch: int) -> list[str]:
    """A request's texts: a string or a non-empty list of them, at most ``max_batch``."""
    x = f.data.get(key)
    if isinstance(x, str):
        items = [x]
    elif isinstance(x, list) and x:
        if all(isinstance(i, int) and not isinstance(i, bool) for i in x) or all(isinstance(i, list) for i in x):
            raise InvalidInput(f"{key} as token ids is not supported: send the text")
        items = x
    elif x is None:
        raise InvalidInput(f"{key} is required: a string or a list of strings")
    else:
        raise InvalidInput(f"{key} must be a non-empty string or a non-empty list of strings, got {v._show(x)}")
    if len(items) > max_batch:
        raise InvalidInput(f"{key} holds {len(items)} items; this server takes at most {max_batch} per request")
    return [v.text(f"{key}[{i}]", t) for i, t in enumerate(items)]


_DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)


def http_image(name: str, x: Any, max_bytes: int) -> str | bytes:
    """An image a client sent: an http(s) URL, a data URI or bare base64 (decoded here).

    Never a local path: a request must not make the server read its own files.
    URLs are fetched by the pool, under its private-address policy and size cap.
    """
    if not isinstance(x, str) or not x:
        raise InvalidInput(f"{name} must be an image URL, a data URI or base64 text, got {v._show(x)}")
    low = x[:8].lower()
    if low.startswith("http://") or low.startswith("https://"):
        return x
    if _DATA_URI.match(x):
        payload = x[x.index(",") + 1 :]
    elif low.startswith("data:"):
        raise InvalidInput(f"{name}: a data URI must be data:image/<type>;base64,<data>")
    else:
        payload = x
    if len(payload) * 3 // 4 > max_bytes:
        raise InvalidInput(f"{name}: the image is larger than the server's max_image_mb ({max_bytes >> 20} MB)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"{name} is neither an http(s) URL, a data URI nor valid base64 (local paths are not accepted over HTTP)"
        ) from None


async def until_disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the request body must already be read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ClientGone(Exception):
    """The client disconnected while its request ran; nobody reads the answer."""


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Runs ``work`` and cancels it (and so its native job) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, PoolError):
        pass
    raise ClientGone()


async def primed(request: Request, source: AsyncIterator[T]) -> AsyncIterator[T]:
    """``source`` with its first item already taken, before any header goes out: a
    stream the pool refuses (a prompt longer than the context, found once the model
    runs) raises here and answers with its own status, not 200 and an error event.
    A client that leaves meanwhile cancels the wait."""
    it = source.__aiter__()

    async def first() -> tuple[bool, Any]:
        async for item in it:  # leaving the loop keeps the generator open for the rest
            return True, item
        return False, None

    got, item = await cancel_on_disconnect(request, first())

    async def rest() -> AsyncIterator[T]:
        if not got:
            return
        yield item
        async for more in it:
            yield more

    return rest()


class EventStream(Response):
    """A streamed body (SSE or NDJSON) whose producer is cancelled the moment the
    client disconnects, whatever the ASGI server's version: closing the producer
    closes its pool stream, which cancels the job within one step."""

    def __init__(self, chunks: AsyncIterator[str], media_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def produce() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk.encode("utf-8"), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        producer = asyncio.ensure_future(produce())
        watcher = asyncio.ensure_future(until_disconnected(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, watcher):
                task.cancel()
            await asyncio.gather(producer, watcher, return_exceptions=True)
            closer = getattr(self.chunks, "aclose", None)
            if closer is not None:
                await closer()
        if producer.done() and not producer.cancelled() and producer.exception() is not None:
            exc = producer.exception()
            if not isinstance(exc, OSError):
                raise exc  # type: ignore[misc]


def sse(data: Any) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def ndjson(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"


def handles(render: Callable[[PoolError], Response]) -> Callable[[Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
    """Wraps a route: pool errors become ``render``'s response; a client that left gets an empty 499."""

    def wrap(route: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await route(request)
            except PoolError as e:
                return render(e)
            except ClientGone:
                return Response(status_code=499)

        endpoint.__name__ = route.__name__
        endpoint.__doc__ = route.__doc__
        return endpoint

    return wrap
