"""``/metrics``: the pool's counters, latencies, replicas and memory in Prometheus'
text format, read from ``Pool.stats()`` at each scrape, plus the server's own
per-route request counts and latency histogram."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..pool import Pool

__all__ = ["HttpMetrics", "PoolCollector", "registry_for"]

_PRESSURE = {"low": 0, "moderate": 1, "high": 2, "critical": 3}
_COUNTS = {
    "requests": ("mpool_requests_total", "Requests submitted to the model."),
    "succeeded": ("mpool_requests_succeeded_total", "Requests that returned a result."),
    "errors": ("mpool_request_errors_total", "Requests that failed in the model or its loading."),
    "timeouts": ("mpool_request_timeouts_total", "Requests that ran out of time."),
    "rejections": ("mpool_request_rejections_total", "Requests refused because the queue was full."),
    "cancellations": ("mpool_request_cancellations_total", "Requests cancelled by their caller."),
    "replicas_spawned": ("mpool_replicas_spawned_total", "Replicas started."),
    "replicas_evicted": ("mpool_replicas_evicted_total", "Replicas unloaded by keep-alive, memory pressure or scale-down."),
    "spawn_failures": ("mpool_spawn_failures_total", "Replica loads that failed."),
    "replica_deaths": ("mpool_replica_deaths_total", "Replica threads that ended unexpectedly."),
}
_LATENCIES = {
    "queue_time": ("mpool_queue_time_seconds", "Time requests waited in the queue (recent quantiles)."),
    "compute_time": ("mpool_compute_time_seconds", "Time requests ran on a replica (recent quantiles)."),
    "time_to_first_chunk": ("mpool_time_to_first_chunk_seconds", "Time to a stream's first chunk (recent quantiles)."),
}


class PoolCollector(Collector):
    """Reads ``pool.stats()`` on each scrape; one series per model (and device)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        stats: dict[str, Any] = self.pool.stats()
        models = stats["models"].values()
        counters = {k: CounterMetricFamily(name.removesuffix("_total"), doc, labels=["model"]) for k, (name, doc) in _COUNTS.items()}
        gauges = {
            "replicas": GaugeMetricFamily("mpool_replicas", "Live replicas (loading or serving).", labels=["model"]),
            "busy_replicas": GaugeMetricFamily("mpool_busy_replicas", "Replicas running a request.", labels=["model"]),
            "running": GaugeMetricFamily(
                "mpool_running_requests", "Requests on busy replicas (each sequence of a continuous batch).", labels=["model"]
            ),
            "queued": GaugeMetricFamily("mpool_queued_requests", "Requests waiting for a replica.", labels=["model"]),
            "loaded": GaugeMetricFamily("mpool_model_loaded", "1 when the model has a serving replica.", labels=["model"]),
            "pinned": GaugeMetricFamily("mpool_model_pinned", "1 when the model is never evicted.", labels=["model"]),
        }
        reserved = GaugeMetricFamily(
            "mpool_model_reserved_bytes", "Memory reserved for the model's replicas.", labels=["model", "device"]
        )
        usage = GaugeMetricFamily(
            "mpool_model_usage",
            "Gauges the model's loaded replicas report, summed (a decoder's KV cache blocks, prefix cache hits).",
            labels=["model", "name"],
        )
        latencies = {
            k: GaugeMetricFamily(name, doc, labels=["model", "quantile"]) for k, (name, doc) in _LATENCIES.items()
        }
        for m in models:
            key = m["key"]
            for k, family in counters.items():
                family.add_metric([key], m["counts"][k])
            gauges["replicas"].add_metric([key], m["replicas"])
            gauges["busy_replicas"].add_metric([key], m["busy_replicas"])
            gauges["running"].add_metric([key], m["running"])
            gauges["queued"].add_metric([key], m["queued"])
            gauges["loaded"].add_metric([key], 1.0 if m["state"] == "ready" else 0.0)
            gauges["pinned"].add_metric([key], 1.0 if m["pinned"] else 0.0)
            for device, mb in m["reserved_mb"].items():
                reserved.add_metric([key, device], mb * (1 << 20))
            for name, value in (m.get("usage") or {}).items():
                usage.add_metric([key, name], value)
            for k, quantiles in latencies.items():
                q = m[k]
                if q["count"]:
                    quantiles.add_metric([key, "0.5"], q["p50_ms"] / 1e3)
                    quantiles.add_metric([key, "0.95"], q["p95_ms"] / 1e3)
        yield from counters.values()
        yield from gauges.values()
        yield reserved
        yield usage
        yield from latencies.values()
        memory = GaugeMetricFamily("mpool_device_memory_bytes", "Device memory by kind.", labels=["device", "kind"])
        pressure = GaugeMetricFamily(
            "mpool_device_pressure", "Memory pressure: 0 low, 1 moderate, 2 high, 3 critical.", labels=["device"]
        )
        for d in stats["devices"]:
            for kind in ("total", "budget", "committed", "os_free", "available"):
                memory.add_metric([d["device"], kind], d[f"{kind}_mb"] * (1 << 20))
            pressure.add_metric([d["device"]], _PRESSURE.get(d["pressure"], -1))
        yield memory
        yield pressure
        yield GaugeMetricFamily("mpool_threads", "Native threads the pool holds.", value=stats["threads"])


class HttpMetrics:
    """Per-route request counts by status and a latency histogram (to the end of the body)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "mpool_http_request_duration_seconds",
            "HTTP requests by route and status, to the end of the response body.",
            ["route", "method", "status"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )

    def middleware(self, app: ASGIApp, routes: set[str]) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            path = scope.get("path", "")
            route = path if path in routes else ("/v1/models/{model}" if path.startswith("/v1/models/") else "other")
            try:
                await app(scope, receive, sending)
            finally:
                self.latency.labels(route, scope.get("method", ""), str(status)).observe(time.perf_counter() - start)

        return wrapped


def registry_for(pool: Pool) -> CollectorRegistry:
    """A registry of this app's own (not prometheus_client's global one: several apps may share a process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(pool))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
