"""What telemetry adds to the agent process, composed in one place for the daemon: the
metrics and their local API hooks (middleware, generation observer, ``/metrics``), the
policy in force, and the reporter thread that queues and delivers reports."""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata

from fastapi import APIRouter, FastAPI

from edge_agent.errors import StoreError
from edge_agent.settings import AgentSettings
from edge_agent.store.state_db import StateDB
from edge_agent.telemetry.instrument import GenerationObserver, TelemetryMiddleware
from edge_agent.telemetry.ledger import budget_window
from edge_agent.telemetry.mechanisms import NoiseMechanism, OpenDPDiscreteLaplace
from edge_agent.telemetry.metrics import AgentMetrics
from edge_agent.telemetry.policy import TelemetryPolicy, resolve_policy
from edge_agent.telemetry.prometheus import AgentCollector, LedgerGauges, metrics_router
from edge_agent.telemetry.reporter import DeliveryOutcome, TelemetryReporter
from edge_agent.telemetry.store import OutboxLimits, TelemetryStore
from edge_agent.telemetry.system import SystemSampler, runtime_versions
from edge_agent.uplink.telemetry_sender import deliver_telemetry
from protocol.remote_config import TelemetrySettings
from protocol.telemetry import TelemetryAck

__all__ = ["TelemetryAgent", "agent_version", "default_device_class"]

log = logging.getLogger(__name__)

PolicyLayers = Callable[[], tuple[TelemetrySettings | None, TelemetrySettings]]


def agent_version() -> str:
    try:
        return metadata.version("outpost")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def default_device_class() -> str:
    return f"{platform.machine().lower() or 'unknown'}-{platform.system().lower() or 'unknown'}"


class TelemetryAgent:
    """Owns the metrics for the agent's lifetime; ``start`` runs the reporter."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        device_id: str,
        layers: PolicyLayers,
        release_id: Callable[[], str | None],
        models_loaded: Callable[[], int],
        mechanism: NoiseMechanism | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = AgentMetrics()
        self.system = SystemSampler()
        self.observer = GenerationObserver(self.metrics)
        self._device_id = device_id
        self._layers = layers
        self._release_id = release_id
        self._models_loaded = models_loaded
        self._mechanism = mechanism
        self._clock = clock
        self._checkpoint = checkpoint
        self._version = agent_version()
        self.store: TelemetryStore | None = None
        self.reporter: TelemetryReporter | None = None
        self._thread: threading.Thread | None = None

    def policy(self) -> TelemetryPolicy:
        release, remote = self._layers()
        return resolve_policy(release, remote, locally_enabled=self.settings.telemetry_enabled)

    def router(self) -> APIRouter:
        return metrics_router(
            AgentCollector(
                self.metrics,
                self.system,
                agent_version=self._version,
                release_id=self._release_id,
                ledger=self._ledger_gauges,
            )
        )

    def install(self, app: FastAPI) -> None:
        """Count every request: call after the other middleware, so this one is outermost
        and sees the rate limiter's 429s too."""
        app.add_middleware(TelemetryMiddleware, metrics=self.metrics)

    def _ledger_gauges(self) -> LedgerGauges | None:
        store = self.store
        if store is None:
            return None
        policy = self.policy()
        spent = store.spent(budget_window(self._clock(), policy.budget_period_seconds))
        reports, size = store.outbox_size()
        return LedgerGauges(reports, size, store.dropped_total(), spent.period, spent.lifetime)

    def start(
        self, db: StateDB, *, send: Callable[[bytes], TelemetryAck], stop: threading.Event
    ) -> threading.Thread:
        """Run the reporter over a writable state database, delivering with ``send``."""
        store = TelemetryStore(db, checkpoint=self._checkpoint)
        self.store = store
        reporter = TelemetryReporter(
            store=store,
            metrics=self.metrics,
            policy=self.policy,
            system=self.system,
            mechanism=self._mechanism or OpenDPDiscreteLaplace(),
            limits=OutboxLimits(
                self.settings.telemetry_outbox_max_reports, self.settings.telemetry_outbox_max_bytes
            ),
            device_id=self._device_id,
            device_class=self.settings.device_class or default_device_class(),
            agent_version=self._version,
            runtime_versions=runtime_versions(),
            release_id=self._release_id,
            models_loaded=self._models_loaded,
            clock=self._clock,
        )
        try:
            reporter.start()
        except StoreError as e:  # never keep the caller (the update thread) from going on
            log.warning("telemetry could not count this start: %s", e)
        self.reporter = reporter

        def deliver() -> DeliveryOutcome:
            return deliver_telemetry(store, send, self._clock)

        thread = threading.Thread(
            target=reporter.run, args=(stop, deliver), name="telemetry", daemon=True
        )
        thread.start()
        self._thread = thread
        return thread

    def status(self) -> dict[str, object]:
        policy = self.policy()
        body: dict[str, object] = {"enabled": policy.enabled, "policy_source": policy.source}
        if self.reporter is not None:
            body["last_error"] = self.reporter.last_error
        if self.store is not None:
            body["outbox_reports"] = self.store.outbox_size()[0]
        return body

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.reporter is not None:
            try:
                self.reporter.stop()
            except Exception:  # a store that cannot be written: counted as a crash next time
                log.warning("could not record the clean stop for telemetry", exc_info=True)
