"""mpool inside Ray Serve: one ``Pool`` per Serve replica, the HTTP server's routes
as the deployment's ingress.

Serve places replicas across machines, scales them and routes requests; inside
each replica the pool loads, shares and evicts models by memory. Model
multiplexing maps to the pool's registry: a request's multiplexed model id
(header ``serve_multiplexed_model_id``, or ``handle.options(multiplexed_model_id=)``)
selects the model key, so the body may leave ``model`` out, and Serve prefers
replicas that have already served that id. Serve's per-replica model count is
set high: the pool's governor, not a count, decides what stays loaded.

    from ray import serve
    import mpool.ray
    serve.run(mpool.ray.deployment("models.toml", num_replicas=2), route_prefix="/")

Needs ``ray[serve]`` and the ``serve`` extra. docs/scale-out.md says when to use
the in-process pool, the server and Ray Serve.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig

from .errors import InvalidInput
from .pool import Pool
from .server.app import create_app
from .server.config import ServerConfig, config_from_dict, load_config
from .server.state import ROUTED_MODEL

__all__ = ["MpoolIngress", "deployment"]

# Serve's LRU over multiplexed models must never unload one: the pool decides.
_NO_COUNT_LIMIT = 1 << 30


def _config(config: ServerConfig | Mapping[str, Any] | str | os.PathLike[str]) -> ServerConfig:
    if isinstance(config, ServerConfig):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise InvalidInput(f"config must be a ServerConfig, a dict or a TOML path, got {type(config).__name__}")


class MpoolIngress:
    """A Serve replica: its own Pool with the config's models, serving the server's routes."""

    def __init__(self, config: ServerConfig | Mapping[str, Any] | str | os.PathLike[str]) -> None:
        cfg = _config(config)
        self._pool = Pool(**cfg.pool_kwargs())
        self._app = create_app(cfg, pool=self._pool)
        self._state = self._app.state.mpool

    @serve.multiplexed(max_num_models_per_replica=_NO_COUNT_LIMIT)
    async def _resident(self, model_id: str) -> str:
        """Serve's multiplexed loader: the pool loads the model (a registered key)."""
        self._state.model(model_id)
        await self._pool.aload(model_id)
        return model_id

    def __serve_build_asgi_app__(self) -> Any:
        app = self._app
        replica = self

        async def routed(scope: Any, receive: Any, send: Any) -> None:
            model_id = serve.get_multiplexed_model_id() if scope["type"] == "http" else ""
            if not model_id:
                await app(scope, receive, send)
                return
            token = ROUTED_MODEL.set(model_id)
            try:
                try:
                    await replica._resident(model_id)
                except Exception:  # noqa: BLE001 - the route answers with the pool's error for this id
                    pass
                await app(scope, receive, send)
            finally:
                ROUTED_MODEL.reset(token)

        return routed

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close(timeout=5.0)


def deployment(
    config: ServerConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    name: str = "mpool",
    num_replicas: int | str = 1,
    max_ongoing_requests: int = 64,
    max_queued_requests: int = -1,
    retry_after_s: int = 1,
    ray_actor_options: Mapping[str, Any] | None = None,
    autoscaling_config: Mapping[str, Any] | None = None,
) -> Any:
    """A Serve application (for ``serve.run``): ``num_replicas`` replicas, each one
    Pool with the config's models and the OpenAI / Ollama routes.

    ``max_ongoing_requests`` bounds what Serve sends one replica at a time (the pool
    queues and batches within it); past ``max_queued_requests`` waiting at the
    proxy, requests are refused at once with 429 and ``Retry-After``, as the
    server refuses a full model queue. ``num_replicas="auto"`` or
    ``autoscaling_config`` let Serve scale.
    """
    cfg = _config(config)  # checked here, on the driver, before any replica starts
    options: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=retry_after_s),
        "ray_actor_options": dict(ray_actor_options or {}),
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = dict(autoscaling_config)
    else:
        options["num_replicas"] = num_replicas
    ingress = serve.deployment(**options)(serve.ingress()(MpoolIngress))
    return ingress.bind(cfg)
