"""The periodic reporter: at the end of each period, turn what was counted into a report
(charged and queued in one transaction), then try to deliver the outbox.

Time is passed in (``clock``), so a test drives thirty days in a loop. The daemon runs
:meth:`TelemetryReporter.run` in a thread; everything else is callable directly.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from edge_agent.errors import StoreError
from edge_agent.telemetry.ledger import budget_window
from edge_agent.telemetry.mechanisms import NoiseMechanism
from edge_agent.telemetry.metrics import AgentMetrics, MetricsSnapshot
from edge_agent.telemetry.policy import TelemetryPolicy
from edge_agent.telemetry.report import ReportContext, build_report
from edge_agent.telemetry.store import LedgerView, OutboxLimits, QueuedTelemetry, TelemetryStore
from edge_agent.telemetry.system import SystemSample
from protocol.telemetry import OperationalFields, TelemetryReport

__all__ = ["DeliverOutbox", "SystemFacts", "TelemetryReporter"]

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30.0  # the run loop looks at the clock at least this often
MIN_RETRY_SECONDS = 30.0


class SystemFacts(Protocol):
    def sample(self) -> SystemSample: ...

    def uptime_seconds(self) -> float: ...


class DeliveryOutcome(Protocol):
    @property
    def error(self) -> str | None: ...


DeliverOutbox = Callable[[], DeliveryOutcome]


class TelemetryReporter:
    """Builds one report per policy interval and hands the outbox to ``deliver``."""

    def __init__(
        self,
        *,
        store: TelemetryStore,
        metrics: AgentMetrics,
        policy: Callable[[], TelemetryPolicy],
        system: SystemFacts,
        mechanism: NoiseMechanism,
        limits: OutboxLimits,
        device_id: str,
        device_class: str,
        agent_version: str,
        runtime_versions: Mapping[str, str],
        release_id: Callable[[], str | None],
        models_loaded: Callable[[], int],
        clock: Callable[[], datetime],
        new_report_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._policy = policy
        self._system = system
        self._mechanism = mechanism
        self._limits = limits
        self._device_id = device_id
        self._device_class = device_class
        self._agent_version = agent_version
        self._runtime_versions = dict(runtime_versions)
        self._release_id = release_id
        self._models_loaded = models_loaded
        self._clock = clock
        self._new_id = new_report_id
        self._period_start = clock()
        self._baseline: MetricsSnapshot | None = None
        self._retry_at: datetime | None = None
        self._failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Count this agent start (and a crash, if the last run did not stop cleanly)."""
        if self._store.note_start():
            log.warning("the previous agent run did not stop cleanly; counted as a crash")

    def stop(self) -> None:
        self._store.note_clean_stop()

    def due(self, now: datetime) -> bool:
        return now >= self._period_start + timedelta(seconds=self._policy().interval_seconds)

    def close_period(self) -> QueuedTelemetry | None:
        """End the period now: queue its report (None when telemetry is off: the
        period's counts are discarded, never sent later)."""
        now = self._clock()
        policy = self._policy()
        snapshot = self._metrics.snapshot()
        if not policy.enabled:
            self._baseline, self._period_start = snapshot, now
            return None
        counts = snapshot.since(self._baseline).counts
        sample = self._system.sample()
        period_start = self._period_start
        window = budget_window(now, policy.budget_period_seconds)

        def build(view: LedgerView) -> TelemetryReport:
            operational = OperationalFields(
                agent_version=self._agent_version,
                runtime_versions=self._runtime_versions,
                uptime_seconds=self._system.uptime_seconds(),
                restarts=view.restarts,
                crashes=view.crashes,
                install_state=view.install_state,
                install_failures=view.install_failures,
                models_loaded=self._models_loaded(),
                rss_bytes=sample.rss_bytes,
                cpu_percent=sample.cpu_percent,
                load_average_1m=sample.load_average_1m,
                temperature_celsius=sample.temperature_celsius,
            )
            ctx = ReportContext(
                report_id=self._new_id(),
                device_id=self._device_id,
                sequence=view.sequence,
                period_start=period_start,
                period_end=now,
                release_id=self._release_id(),
                device_class=self._device_class,
                operational=operational,
                outbox_dropped=view.dropped,
                spent=view.spent,
                window=window,
            )
            return build_report(ctx, counts, policy, self._mechanism)

        queued = self._store.queue(
            build, window=window, period_start=period_start, now=now, limits=self._limits
        )
        # only once it is queued: a failed write keeps the counts for the next period
        self._baseline, self._period_start = snapshot, now
        if queued.dropped_now:
            log.warning(
                "telemetry outbox full (%d reports / %d bytes at most): dropped the %d oldest",
                self._limits.max_reports,
                self._limits.max_bytes,
                queued.dropped_now,
            )
        return queued

    def tick(self, deliver: DeliverOutbox | None) -> None:
        """One look at the clock: close a period that is due, then deliver if it is time."""
        now = self._clock()
        if self.due(now):
            try:
                self.close_period()
            except StoreError as e:
                self.last_error = f"the telemetry report was not queued: {e}"
                log.warning("%s", self.last_error)
        if deliver is None or (self._retry_at is not None and now < self._retry_at):
            return
        try:
            outcome = deliver()
        except StoreError as e:
            outcome_error: str | None = f"the telemetry outbox cannot be read: {e}"
        else:
            outcome_error = outcome.error
        if outcome_error is None:
            self._failures, self._retry_at, self.last_error = 0, None, None
            return
        self._failures += 1
        backoff = min(
            MIN_RETRY_SECONDS * 2 ** min(self._failures - 1, 16), self._policy().interval_seconds
        )
        self._retry_at = now + timedelta(seconds=backoff)
        self.last_error = outcome_error
        log.info("telemetry delivery deferred %.0f s: %s", backoff, outcome_error)

    def run(self, stop: threading.Event, deliver: DeliverOutbox | None) -> None:
        """Tick until ``stop`` is set (the daemon's thread)."""
        while True:
            try:
                self.tick(deliver)
            except Exception:  # never let telemetry take the agent down
                log.exception("telemetry tick failed")
            if stop.wait(self._next_wait()):
                return

    def _next_wait(self) -> float:
        """Seconds until the period ends or a retry is due, at most MAX_WAIT_SECONDS."""
        now = self._clock()
        due_at = self._period_start + timedelta(seconds=self._policy().interval_seconds)
        moments = [due_at] + ([self._retry_at] if self._retry_at is not None else [])
        wait = min((m - now).total_seconds() for m in moments)
        return min(MAX_WAIT_SECONDS, max(0.5, wait))
