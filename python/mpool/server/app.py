"""The ASGI app (Starlette) and ``serve()`` (uvicorn).

``create_app(config)`` builds a pool from the config, registers its models and
returns the app; ``create_app(config, pool=pool)`` serves a pool the caller owns
(and keeps: the app does not close it). The app adds no model logic: every route
calls the public ``mpool.Pool`` API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..pool import Pool
from . import ollama_api, openai_api
from .config import ServerConfig
from .http import BodyTooLarge, MethodNotAllowed, RouteNotFound, Unauthorized, ollama_error, openai_error
from .metrics import HttpMetrics, exposition, registry_for
from .state import ServerState, register_models

__all__ = ["create_app", "serve"]

log = logging.getLogger("mpool.server")

# Routes anyone may call: probes carry no credentials and reveal nothing.
_OPEN_PATHS = {"/health", "/ready"}


def _error_response(path: str, e: Any) -> Response:
    return ollama_error(e) if path.startswith("/api/") else openai_error(e)


class Guard:
    """API keys (Bearer, compared in constant time) and the request body cap, as ASGI middleware."""

    def __init__(self, app: ASGIApp, api_keys: list[str], max_body: int) -> None:
        self.app = app
        self.keys = [k.encode("utf-8") for k in api_keys]
        self.max_body = max_body

    def _authorized(self, scope: Scope) -> bool:
        if not self.keys or scope.get("path") in _OPEN_PATHS:
            return True
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
        scheme, _, token = header.partition(b" ")
        token = token.strip() if scheme.lower() == b"bearer" else b""
        ok = False
        for key in self.keys:  # every key is compared: the time does not say which one matched
            ok |= hmac.compare_digest(token, key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if not self._authorized(scope):
            await _error_response(path, Unauthorized("a valid API key is required: Authorization: Bearer <key>"))(
                scope, receive, send
            )
            return
        too_large = BodyTooLarge(f"the request body exceeds this server's limit of {self.max_body} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_body:
                    await _error_response(path, too_large)(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise too_large
            return message

        await self.app(scope, counted, send)


async def health(request: Request) -> Response:
    """Liveness: the process answers and its pool accepts requests."""
    state: ServerState = request.app.state.mpool
    if state.pool._native.shutting_down():
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Readiness: every preloaded model has a serving replica."""
    state: ServerState = request.app.state.mpool
    ok, models = state.readiness()
    return JSONResponse({"status": "ready" if ok else "not_ready", "models": models}, status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    return Response(exposition(request.app.state.registry), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error_response(request.url.path, RouteNotFound(f"no route {request.method} {request.url.path}"))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    allow = getattr(exc, "headers", None) or {}
    response = _error_response(
        request.url.path,
        MethodNotAllowed(f"{request.method} is not served at {request.url.path}; allowed: {allow.get('Allow', '')}"),
    )
    response.headers.update(allow)
    return response


async def _body_too_large(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyTooLarge)
    return _error_response(request.url.path, exc)


def create_app(config: ServerConfig | None = None, *, pool: Pool | None = None) -> Starlette:
    """The server as an ASGI app. Without ``pool``, it builds one from ``config``
    (its [pool] table and models) and closes it at shutdown, after ``grace_period``
    seconds for in-flight work; a given ``pool`` gets the config's models registered
    and stays the caller's."""
    cfg = config or ServerConfig()
    own = pool is None
    the_pool = Pool(**cfg.pool_kwargs()) if pool is None else pool
    try:
        models = register_models(the_pool, cfg)
    except BaseException:
        if own:
            the_pool.close(0)
        raise
    state = ServerState(the_pool, cfg, models)
    if pool is not None:  # models the caller registered are served too
        from .state import ModelInfo

        for m in the_pool.models():
            state.models.setdefault(
                m["key"], ModelInfo(key=m["key"], capabilities=list(m["capabilities"]), keep_alive=m["keep_alive"])
            )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = asyncio.ensure_future(state.preload())
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            if own:
                await the_pool.aclose(timeout=cfg.grace_period)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *openai_api.routes,
        *ollama_api.routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed, BodyTooLarge: _body_too_large},
    )
    app.state.mpool = state
    app.state.registry = registry_for(the_pool)
    http_metrics = HttpMetrics(app.state.registry)
    paths = {r.path for r in routes}
    app.add_middleware(_Wrap, wrap=lambda inner: http_metrics.middleware(Guard(inner, cfg.api_keys, cfg.limits.max_body_bytes), paths))
    return app


class _Wrap:
    """Starlette middleware from a function of the inner app."""

    def __init__(self, app: ASGIApp, wrap: Any) -> None:
        self.inner = wrap(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.inner(scope, receive, send)


def serve(config: ServerConfig, *, log_level: str = "info") -> None:
    """Runs the server until SIGINT/SIGTERM: then it stops accepting, gives in-flight
    requests ``grace_period`` seconds, cancels the rest and closes the pool."""
    import uvicorn

    app = create_app(config)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_keys:
        log.warning("mpool serve: listening on %s without API keys; anyone who can reach it can use it", config.host)
    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        timeout_graceful_shutdown=max(int(config.grace_period), 1),
        lifespan="on",
        ws="none",  # no websocket routes
        access_log=False,
    )
    server = uvicorn.Server(uv)
    # uvicorn re-raises the signal that stopped it once it has shut down, which would
    # end the process by that signal after a clean shutdown; these handlers take it
    # instead, so a graceful stop exits with status 0.
    taken: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: taken.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
