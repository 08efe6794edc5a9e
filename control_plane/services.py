"""The service container: the running control plane's parts, and its background workers.

``ControlPlane.build`` makes every part from settings; the app factory hands it to routes
through ``app.state`` and starts and stops its workers in the app's lifespan.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from control_plane.artifacts.blob_store import BlobStore
from control_plane.artifacts.collector import BlobCollector
from control_plane.director.service import Director
from control_plane.fleet.request_nonces import NoncePruner
from control_plane.nudges import MqttNudgePublisher, NudgePublisher, NullNudgePublisher
from control_plane.releases.qualification import rollout_acceptance_signals
from control_plane.remote_config.service import RemoteConfigService
from control_plane.repository.keyring import Keyring, OnlineKeySource
from control_plane.repository.metadata_store import MetadataStore
from control_plane.rollouts.fault_injection import TestOnlyPause
from control_plane.rollouts.service import RolloutService
from control_plane.rollouts.worker import RolloutWorker
from control_plane.settings import ControlPlaneSettings
from control_plane.storage.database import Database
from control_plane.telemetry.service import TelemetryService
from control_plane.telemetry.worker import TelemetryWorker

Clock = Callable[[], datetime]
log = logging.getLogger("control_plane")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Worker(Protocol):
    """A background job of the control plane: ``tick`` does one bounded pass."""

    name: str
    interval_seconds: float

    def tick(self, now: datetime) -> None: ...


@dataclass
class WorkerThreads:
    """Runs each worker's ``tick`` every ``interval_seconds`` on a thread of its own until
    stopped; a failing tick is logged and the next one runs as planned."""

    workers: list[Worker]
    clock: Clock
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._stop.clear()
        for worker in self.workers:
            thread = threading.Thread(
                target=self._run, args=(worker,), name=f"worker-{worker.name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _run(self, worker: Worker) -> None:
        while not self._stop.is_set():
            try:
                worker.tick(self.clock())
            except Exception:
                log.exception("background worker %s failed; retrying next interval", worker.name)
            self._stop.wait(worker.interval_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()


@dataclass(frozen=True)
class ControlPlane:
    """The running service's parts, handed to routes through ``app.state``."""

    settings: ControlPlaneSettings
    db: Database
    keyring: Keyring
    online_keys: OnlineKeySource
    metadata: MetadataStore
    director: Director
    blobs: BlobStore
    rollouts: RolloutService
    remote_config: RemoteConfigService
    nudges: NudgePublisher
    telemetry: TelemetryService
    clock: Clock

    @classmethod
    def build(cls, settings: ControlPlaneSettings, clock: Clock = utc_now) -> ControlPlane:
        keyring = Keyring(
            offline_dir=settings.resolved_offline_keys_dir, online_dir=settings.online_keys_dir
        )
        online = OnlineKeySource(keyring)
        online.current()  # fail at start, not on the first signature, if keys are missing
        db = Database.from_url(settings.resolved_database_url)
        blobs = BlobStore(settings.blobs_dir)
        blobs.prepare()
        nudges = _nudge_publisher(settings)
        director = Director(db, online, settings.assignment_ttl, nudges=nudges)
        remote_config = RemoteConfigService(db, director, settings.assignment_ttl)
        remote_config.add_listener(lambda device_ids: nudges.publish(device_ids, "config"))
        telemetry = TelemetryService(db, settings.telemetry_limits)
        return cls(
            settings=settings,
            db=db,
            keyring=keyring,
            online_keys=online,
            metadata=MetadataStore(db, settings.lifetimes, online),
            director=director,
            blobs=blobs,
            rollouts=RolloutService(
                db,
                director,
                checkpoint=TestOnlyPause(settings.test_pause_at, settings.data_dir),
                on_config_change=lambda device_ids: nudges.publish(device_ids, "config"),
                signals=lambda session, rollout: {
                    **telemetry.rollout_signals(session, rollout),
                    **rollout_acceptance_signals(session, rollout),
                },
            ),
            remote_config=remote_config,
            nudges=nudges,
            telemetry=telemetry,
            clock=clock,
        )

    def workers(self) -> WorkerThreads:
        """The background workers this control plane runs while it serves."""
        workers: list[Worker] = []
        if self.settings.workers_enabled:
            workers.append(
                RolloutWorker(
                    self.rollouts,
                    self.settings.rollout_tick_seconds,
                    converge_seconds=self.settings.cohort_default_seconds,
                )
            )
            workers.append(NoncePruner(self.db))
            workers.append(BlobCollector(self.db, self.blobs))
            workers.append(
                TelemetryWorker(self.telemetry, self.settings.telemetry_aggregate_seconds)
            )
        return WorkerThreads(workers=workers, clock=self.clock)

    def close(self) -> None:
        self.nudges.close()
        self.db.dispose()


def _nudge_publisher(settings: ControlPlaneSettings) -> NudgePublisher:
    if settings.mqtt_host is None:
        return NullNudgePublisher()
    password = settings.mqtt_password
    return MqttNudgePublisher(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        username=settings.mqtt_username,
        password=None if password is None else password.get_secret_value(),
    )
