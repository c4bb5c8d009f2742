"""Prometheus metrics of one server (``GET /metrics``), with ``prometheus-client``.

Every server has its own :class:`~prometheus_client.CollectorRegistry` (two apps in one process, as in
tests, never share counters). What is exported (all names start with ``openqwen_``):

- ``requests_total{route, status}``: HTTP requests answered, by route (the route's path; unknown paths
  are ``other``, so a scanner cannot blow up the label set) and status code;
- ``queue_length``: engine requests waiting for a KV-cache slot; ``running_slots``: slots generating;
  ``admitted_choices``: choices this server has taken in and not finished (running + queued);
- ``kv_cache_usage_ratio``: cache positions held by running requests / the cache's positions;
- ``time_to_first_token_seconds``, ``inter_token_latency_seconds``, ``request_duration_seconds``:
  histograms (per choice, per streamed step, per HTTP request);
- ``prompt_tokens_total``, ``generation_tokens_total``: tokens read and generated.
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no *_created series: they double the output and no dashboard reads them

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STEP = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    """The counters, gauges and histograms of one server; ``routes``: the paths named as themselves."""

    def __init__(self, engine: Any, admitted: Callable[[], int], routes: set[str]) -> None:
        self.registry = CollectorRegistry()
        self.routes = routes
        r = self.registry
        self.requests = Counter("openqwen_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        Gauge("openqwen_queue_length", "engine requests waiting for a KV-cache slot",
              registry=r).set_function(lambda: engine.num_waiting)
        Gauge("openqwen_running_slots", "KV-cache slots generating now",
              registry=r).set_function(lambda: engine.num_active)
        Gauge("openqwen_admitted_choices", "choices taken in and not finished (running + queued)",
              registry=r).set_function(admitted)
        capacity = max(1, int(getattr(engine, "max_batch_size", 1)) * int(getattr(engine, "max_seq_len", 1)))
        Gauge("openqwen_kv_cache_usage_ratio", "KV-cache positions held by running requests / all positions",
              registry=r).set_function(lambda: getattr(engine, "cache_tokens", 0) / capacity)
        self.ttft = Histogram("openqwen_time_to_first_token_seconds", "submission to first generated token",
                              buckets=_LATENCY, registry=r)
        self.itl = Histogram("openqwen_inter_token_latency_seconds", "time between generated tokens of a choice",
                             buckets=_STEP, registry=r)
        self.duration = Histogram("openqwen_request_duration_seconds", "HTTP request start to last byte",
                                  ["route"], buckets=_LATENCY, registry=r)
        self.prompt_tokens = Counter("openqwen_prompt_tokens", "prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("openqwen_generation_tokens", "tokens generated", registry=r)

    def route(self, path: str) -> str:
        if path in self.routes:
            return path
        for prefix in ("/v1/models/", "/static/"):
            if path.startswith(prefix):
                return prefix + "*"
        return "other"

    def answered(self, path: str, status: int, seconds: float) -> None:
        route = self.route(path)
        self.requests.labels(route, str(status)).inc()
        self.duration.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
