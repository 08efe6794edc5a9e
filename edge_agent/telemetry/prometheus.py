"""``GET /metrics`` on the local API: the agent's counters in Prometheus text format.

A collector of its own registry (never the client library's global one) reads
:class:`AgentMetrics` at scrape time, so requests pay nothing for Prometheus. Names follow
Prometheus conventions (base units, ``_seconds``, ``_bytes``, ``_total``); labels are
feature, error class and release only: nothing names the device or a request. The route
sits behind the local API's bearer token (Prometheus: ``authorization: {credentials: ...}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from edge_agent.telemetry.metrics import AgentMetrics
from edge_agent.telemetry.system import SystemSampler
from protocol.telemetry import ERROR_CLASSES, FEATURES, HISTOGRAM_EDGES, SensitiveField

__all__ = ["AgentCollector", "LedgerGauges", "metrics_router"]

PREFIX = "outpost_agent_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HISTOGRAMS: dict[SensitiveField, str] = {
    "chat_ttft_seconds": "time to first token of chat completions",
    "chat_time_per_output_token_seconds": "chat decode time per output token",
    "completion_seconds": "whole /v1/completions requests",
    "embedding_seconds": "/v1/embeddings requests",
    "vision_seconds": "vision requests",
    "rag_seconds": "RAG queries",
    "prompt_tokens": "prompt length in tokens",
}


@dataclass(frozen=True)
class LedgerGauges:
    """Telemetry's own state, read at scrape time."""

    outbox_reports: int
    outbox_bytes: int
    dropped_total: int
    epsilon_period_spent: float
    epsilon_lifetime_spent: float


class AgentCollector(Collector):
    def __init__(
        self,
        metrics: AgentMetrics,
        system: SystemSampler,
        *,
        agent_version: str,
        release_id: Callable[[], str | None],
        ledger: Callable[[], LedgerGauges | None] = lambda: None,
    ) -> None:
        self._metrics = metrics
        self._system = system
        self._agent_version = agent_version
        self._release_id = release_id
        self._ledger = ledger

    def collect(self) -> Iterator[Metric]:
        snap = self._metrics.snapshot()
        requests = CounterMetricFamily(
            PREFIX + "requests", "local API requests per feature", labels=["feature"]
        )
        for name, value in zip(FEATURES, snap.counts["requests_by_feature"], strict=True):
            requests.add_metric([name], value)
        yield requests
        errors = CounterMetricFamily(
            PREFIX + "request_errors",
            "failed local API requests by class (busy: 503, rate_limited: 429)",
            labels=["class"],
        )
        for name, value in zip(ERROR_CLASSES, snap.counts["errors_by_class"], strict=True):
            errors.add_metric([name], value)
        yield errors
        yield CounterMetricFamily(
            PREFIX + "rag_abstentions",
            "RAG answers that abstained for weak evidence",
            value=snap.counts["rag_abstentions"][0],
        )
        for field, doc in _HISTOGRAMS.items():
            edges, counts = HISTOGRAM_EDGES[field], snap.counts[field]
            cumulative, buckets = 0, []
            for edge, count in zip(edges, counts, strict=False):
                cumulative += count
                buckets.append((f"{edge:g}", cumulative))
            buckets.append(("+Inf", cumulative + counts[-1]))
            yield HistogramMetricFamily(
                PREFIX + field, doc, buckets=buckets, sum_value=snap.sums[field]
            )
        yield CounterMetricFamily(
            PREFIX + "output_tokens", "tokens generated", value=snap.output_tokens
        )
        yield CounterMetricFamily(
            PREFIX + "decode_seconds",
            "time spent generating after the first token (tokens/s = rate of output_tokens"
            " over rate of this)",
            value=snap.decode_seconds,
        )
        yield GaugeMetricFamily(
            PREFIX + "process_resident_memory_bytes", "agent RSS", value=self._system.rss_bytes()
        )
        yield CounterMetricFamily(
            PREFIX + "process_cpu_seconds", "agent CPU time", value=self._system.cpu_seconds()
        )
        yield GaugeMetricFamily(
            PREFIX + "uptime_seconds",
            "since the agent started",
            value=self._system.uptime_seconds(),
        )
        temperature = self._system.temperature_celsius()
        if temperature is not None:
            yield GaugeMetricFamily(
                PREFIX + "temperature_celsius", "hottest sensor", value=temperature
            )
        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "agent version and serving release",
            labels=["version", "release"],
        )
        info.add_metric([self._agent_version, self._release_id() or ""], 1)
        yield info
        ledger = self._ledger()
        if ledger is not None:
            yield GaugeMetricFamily(
                PREFIX + "telemetry_outbox_reports", "reports waiting", value=ledger.outbox_reports
            )
            yield GaugeMetricFamily(
                PREFIX + "telemetry_outbox_bytes", "their size", value=ledger.outbox_bytes
            )
            yield CounterMetricFamily(
                PREFIX + "telemetry_reports_dropped",
                "reports dropped by a full outbox",
                value=ledger.dropped_total,
            )
            budget = GaugeMetricFamily(
                PREFIX + "privacy_epsilon_spent", "epsilon charged", labels=["scope"]
            )
            budget.add_metric(["period"], ledger.epsilon_period_spent)
            budget.add_metric(["lifetime"], ledger.epsilon_lifetime_spent)
            yield budget


def metrics_router(collector: AgentCollector) -> APIRouter:
    """``GET /metrics``, mounted behind the local API's token like the other routers."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # the collector reads the state database: off the event loop
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE)

    return router
