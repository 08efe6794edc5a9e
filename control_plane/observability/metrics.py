"""Prometheus ``/metrics`` for the control plane.

What it exports (Prometheus conventions: base units, ``_total`` counters, ``_seconds``;
no label ever names a device):

- ``outpost_cp_http_requests_total{method,route,status}`` and
  ``outpost_cp_http_request_duration_seconds{method,route}`` (``route`` is the route's
  template, e.g. ``/api/v1/devices/{device_id}``; ``unmatched`` for a 404 on no route);
- fleet gauges read from the database at scrape time: ``outpost_cp_devices{release,
  device_class,presence}``, ``outpost_cp_rollouts{state}``;
- telemetry: ``outpost_cp_telemetry_reports_total{outcome}`` (this process),
  ``outpost_cp_telemetry_reports_pending_aggregation``,
  ``outpost_cp_fleet_latency_p95_seconds{metric,release,device_class}`` (last hour's
  aggregates, privacy noise accounted for) and
  ``outpost_cp_telemetry_epsilon_spent_24h{device_class}``.

The fleet data is not public: ``/metrics`` needs ``Authorization: Bearer`` with either an
API token that may read (viewer and up) or the dedicated scrape token
``OUTPOST_CP_METRICS_TOKEN``. Each app has its own registry (tests and replicas never
share state through the client library's global one).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from control_plane.access.roles import Permission
from control_plane.access.tokens import authenticate_api_token
from control_plane.errors import AuthenticationError
from control_plane.rollouts.core import tag_dict
from control_plane.services import ControlPlane
from control_plane.storage.models import Device, Release, Rollout
from control_plane.telemetry.service import IngestOutcome

__all__ = ["HTTP_BUCKETS_SECONDS", "METRICS_PATH", "install_metrics"]

METRICS_PATH = "/metrics"
# API calls are fast, but uploads and a contended database are not; past the client
# library's default 10 s, up to two minutes.
HTTP_BUCKETS_SECONDS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
ONLINE_WINDOW = timedelta(minutes=5)  # as the dashboard counts a device online
DEVICE_CLASS_TAG = "hw"
UNCLASSIFIED = "unclassified"

Scope = dict[str, Any]


class _HttpMetrics:
    """Pure ASGI middleware: counts and times every HTTP request by route template."""

    def __init__(self, app: Any, requests: Counter, duration: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.duration = duration

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            self.requests.labels(method, route, str(status[0])).inc()
            self.duration.labels(method, route).observe(time.perf_counter() - started)


class _FleetCollector(Collector):
    """Gauges read from the database at scrape time (so every replica exports the same
    fleet), plus this process's ingest counters."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self.cp = control_plane

    def collect(self) -> Iterator[Metric]:
        now = self.cp.clock()
        devices = GaugeMetricFamily(
            "outpost_cp_devices",
            "Enrolled devices by installed release, device class (hw tag) and presence",
            labels=["release", "device_class", "presence"],
        )
        for (release, klass, presence), n in sorted(self._devices(now).items()):
            devices.add_metric([release, klass, presence], n)
        yield devices
        rollouts = GaugeMetricFamily("outpost_cp_rollouts", "Rollouts by state", labels=["state"])
        with self.cp.db.transaction() as session:
            by_state = dict(
                session.execute(select(Rollout.state, func.count()).group_by(Rollout.state)).all()
            )
        for state, n in sorted(by_state.items()):
            rollouts.add_metric([state], n)
        yield rollouts
        reports = CounterMetricFamily(
            "outpost_cp_telemetry_reports",
            "Telemetry reports this process answered, by outcome",
            labels=["outcome"],
        )
        counts = self.cp.telemetry.counts
        for outcome in (
            IngestOutcome.STORED,
            IngestOutcome.DUPLICATE,
            IngestOutcome.RATE_LIMITED,
            IngestOutcome.INVALID,
            IngestOutcome.REFUSED,
        ):
            reports.add_metric([outcome], counts[outcome])
        yield reports
        summary = self.cp.telemetry.summary()
        yield GaugeMetricFamily(
            "outpost_cp_telemetry_reports_pending_aggregation",
            "Stored telemetry reports not yet folded into the hourly aggregates",
            value=summary.reports_pending,
        )
        latency = GaugeMetricFamily(
            "outpost_cp_fleet_latency_p95_seconds",
            "p95 latency over the last hour of device telemetry (privacy noise accounted for)",
            labels=["metric", "release", "device_class"],
        )
        labels = self._release_labels()
        for metric, release, klass, seconds in self.cp.telemetry.recent_quantiles(now):
            latency.add_metric([metric, labels.get(release, release or "none"), klass], seconds)
        yield latency
        epsilon = GaugeMetricFamily(
            "outpost_cp_telemetry_epsilon_spent_24h",
            "Privacy budget (epsilon) the devices of a class spent on reports in the last 24 h",
            labels=["device_class"],
        )
        for row in self.cp.telemetry.privacy_budget(since=now - timedelta(days=1), until=now):
            epsilon.add_metric([row.device_class], row.epsilon_spent)
        yield epsilon

    def _release_labels(self) -> dict[str, str]:
        with self.cp.db.transaction() as session:
            rows = session.execute(select(Release.id, Release.name, Release.version)).all()
        return {rid: f"{name}@{version}" for rid, name, version in rows}

    def _devices(self, now: datetime) -> dict[tuple[str, str, str], int]:
        labels = self._release_labels()
        out: dict[tuple[str, str, str], int] = {}
        with self.cp.db.transaction() as session:
            rows = session.execute(
                select(Device.installed_release_id, Device.tags, Device.last_seen_at)
            ).all()
        for release_id, tags, last_seen in rows:
            release = "none" if release_id is None else labels.get(release_id, release_id)
            klass = tag_dict(tags).get(DEVICE_CLASS_TAG) or UNCLASSIFIED
            if last_seen is None:
                presence = "never_seen"
            else:
                presence = "online" if now - last_seen <= ONLINE_WINDOW else "stale"
            key = (release, klass, presence)
            out[key] = out.get(key, 0) + 1
        return out


def _authorize(control_plane: ControlPlane, header: str) -> None:
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthenticationError(
            "/metrics needs 'Authorization: Bearer <token>': an API token that may read, or"
            " the scrape token OUTPOST_CP_METRICS_TOKEN (docs/telemetry.md)"
        )
    scrape = control_plane.settings.metrics_token
    if scrape is not None and hmac.compare_digest(
        secret.encode(), scrape.get_secret_value().encode()
    ):
        return
    with control_plane.db.transaction() as session:
        principal = authenticate_api_token(session, secret)
    principal.require(Permission.READ)


def install_metrics(app: FastAPI, control_plane: ControlPlane) -> CollectorRegistry:
    """Count and time every request and serve ``/metrics`` (token-protected) on ``app``."""
    registry = CollectorRegistry()
    requests = Counter(
        "outpost_cp_http_requests",
        "HTTP requests answered, by method, route template and status",
        ["method", "route", "status"],
        registry=registry,
    )
    duration = Histogram(
        "outpost_cp_http_request_duration_seconds",
        "Time to answer an HTTP request, by method and route template",
        ["method", "route"],
        buckets=HTTP_BUCKETS_SECONDS,
        registry=registry,
    )
    registry.register(_FleetCollector(control_plane))
    app.add_middleware(_HttpMetrics, requests=requests, duration=duration)

    @app.get(METRICS_PATH, include_in_schema=False)
    async def metrics(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        await run_in_threadpool(_authorize, control_plane, header)
        body = await run_in_threadpool(generate_latest, registry)
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)

    return registry
