"""Keep the device's remote config in step with the control plane.

One cycle (:meth:`ConfigSync.check_once`): fetch the signed config document over HTTP,
verify it (:func:`~edge_agent.remote_config.verify.verify_config_document`), put it in
force live, run the config health check, and keep it (report ``applied``) or put the
previous config back (report ``reverted``). A refused document is reported
``rejected`` with the reason and changes nothing. Cycles run every poll interval, and at
once when :meth:`ConfigSync.wake` is called (an MQTT nudge); a burst of wakes while a
cycle runs causes one more cycle, not one per wake.

The config in force is kept in the state database, so it survives a restart and
applies before the device serves, with no network.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from tuf.api.metadata import Metadata, Root

from edge_agent.errors import BadUpdateError, TransportError
from edge_agent.remote_config.live import LiveConfig
from edge_agent.remote_config.verify import verify_config_document
from edge_agent.store.state_db import StateDB
from edge_agent.trust import DirectorTrust
from edge_agent.updates.schedule import PollSchedule
from edge_agent.uplink.client import ControlPlaneClient, RequestRejectedError
from protocol import SignedEnvelope, paths
from protocol.remote_config import ConfigReport, ConfigReportAck, ConfigState, RemoteConfig

__all__ = [
    "ConfigClient",
    "ConfigHealthProbe",
    "ConfigOutcome",
    "ConfigSource",
    "ConfigSync",
    "applied_config",
]

log = logging.getLogger(__name__)

CONFIG_RUNBOOK = "docs/runbooks/agent-config-rejected-or-reverted.md"
_APPLIED = "remote_config.applied"
_HIGHEST = "remote_config.highest_accepted"
_REFUSED = "remote_config.refused"
_PENDING = "remote_config.pending_reports"
MAX_PENDING_REPORTS = 50
# refusals worth retrying: the device's credentials may be renewed, a rate limit lifts
_RETRY_STATUSES = frozenset({401, 429})


class ConfigSource(Protocol):
    """The control plane's config endpoints, as the device sees them."""

    def fetch_config(self) -> SignedEnvelope | None: ...

    def send_config_report(self, report: ConfigReport) -> ConfigReportAck: ...


class ConfigHealthProbe(Protocol):
    """After a config is in force: ``None`` if the device is healthy under it, else why not
    (never raises for a failing check)."""

    def check(self, config: RemoteConfig) -> str | None: ...


class ConfigClient(ControlPlaneClient):
    """The device-signed config calls (same signing and bounds as the update calls)."""

    def fetch_config(self) -> SignedEnvelope | None:
        response, body = self._signed("GET", paths.DEVICE_CONFIG)
        if response.status_code == 204 or not body:
            return None
        try:
            return SignedEnvelope.model_validate_json(body)
        except ValidationError as e:
            raise BadUpdateError("the control plane's config is not a signed envelope") from e

    def send_config_report(self, report: ConfigReport) -> ConfigReportAck:
        _, answer = self._signed(
            "POST", paths.DEVICE_CONFIG_STATUS, report.model_dump_json().encode()
        )
        try:
            return ConfigReportAck.model_validate_json(answer)
        except ValidationError as e:
            raise TransportError("the control plane's config acknowledgement is malformed") from e


@dataclass(frozen=True)
class ConfigOutcome:
    """What one cycle did: ``none`` (no config for this device), ``up_to_date``,
    ``applied``, ``reverted``, ``rejected`` or ``offline``."""

    result: str
    version: int | None = None
    detail: str = ""


def director_from_metadata(metadata_dir: Path, trusted_root: bytes) -> DirectorTrust:
    """The director keys of the newest root the update loop has verified (``root.json``
    in the TUF metadata directory), else of the root pinned at enrollment. No network:
    the update loop's TUF refresh is what moves the root forward."""
    path = metadata_dir / "root.json"
    content = path.read_bytes() if path.exists() else trusted_root
    root = Metadata[Root].from_bytes(content)
    return DirectorTrust.from_root_signed(root.signed.unrecognized_fields)


def _unverified_version(envelope: SignedEnvelope) -> int | None:
    """The version an envelope claims (for labelling a refusal only; never trusted)."""
    try:
        value = json.loads(envelope.payload_bytes()).get("version")
    except Exception:
        return None
    return value if isinstance(value, int) and value >= 1 else None


def applied_config(db: StateDB) -> tuple[int, RemoteConfig] | None:
    """The remote config last applied on this device and its version (None: none yet)."""
    stored = db.get(_APPLIED)
    if stored is None:
        return None
    value = json.loads(stored)
    return int(value["version"]), RemoteConfig.model_validate(value["settings"])


class ConfigSync:
    """Fetches, verifies, applies (live), health-checks and reports the remote config."""

    def __init__(
        self,
        *,
        device_id: str,
        db: StateDB,
        source: ConfigSource,
        director: Callable[[], DirectorTrust],
        live: LiveConfig,
        health: ConfigHealthProbe,
        schedule: PollSchedule,
        clock: Callable[[], datetime] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._device_id = device_id
        self._db = db
        self._source = source
        self._director = director
        self._live = live
        self._health = health
        self._schedule = schedule
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = rng
        self._wake = threading.Event()
        self._cycle_lock = threading.Lock()
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"version": None, "last_result": None, "last_error": None}

    # --- start-up -----------------------------------------------------------------------

    def restore(self) -> int | None:
        """Put the last applied config back in force (it passed every check before);
        return its version."""
        applied = applied_config(self._db)
        if applied is None:
            return None
        version, config = applied
        self._live.apply(config, version)
        self._set(version=version)
        return version

    # --- status -------------------------------------------------------------------------

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._status.update(changes)

    def status(self) -> dict[str, Any]:
        with self._lock:
            body = dict(self._status)
        body["pending_reports"] = len(self._pending())
        return body

    def set_poll_interval(self, seconds: float | None, default: float) -> None:
        interval = seconds or default
        if interval != self._schedule.interval:
            # the backoff cap must not make polls more frequent than the interval asked for
            self._schedule = PollSchedule(interval, max(self._schedule.max_backoff, interval))
            self._wake.set()  # the next wait uses the new interval

    # --- the loop -----------------------------------------------------------------------

    def wake(self) -> None:
        """Check now (an MQTT nudge). Wakes during a cycle coalesce into one more cycle."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            self._wake.clear()
            outcome = self.check_once()
            self.deliver_reports()
            failures = failures + 1 if outcome.result == "offline" else 0
            delay = self._schedule.delay(failures, self._rng())
            self._wake.wait(delay)

    def check_once(self) -> ConfigOutcome:
        with self._cycle_lock:
            try:
                outcome = self._cycle()
            except TransportError as e:
                outcome = ConfigOutcome("offline", None, str(e))
            except Exception as e:  # a bug must not stop the loop or serving
                log.exception("config cycle failed")
                outcome = ConfigOutcome("failed", None, f"{type(e).__name__}: {e}")
        self._set(
            last_result=outcome.result,
            last_error=outcome.detail if outcome.result in ("rejected", "reverted") else None,
            last_check_at=self._clock().isoformat(),
        )
        return outcome

    def _cycle(self) -> ConfigOutcome:
        envelope = self._source.fetch_config()
        if envelope is None:
            return ConfigOutcome("none")
        applied = self._live.version
        highest = self._db.get(_HIGHEST)
        try:
            verdict = verify_config_document(
                envelope,
                director=self._director(),
                device_id=self._device_id,
                applied_version=applied,
                highest_accepted_version=None if highest is None else int(highest),
                now=self._clock(),
            )
        except BadUpdateError as e:
            version = _unverified_version(envelope)
            key = f"{version}:{type(e).__name__}"
            if self._db.get(_REFUSED) != key:
                self._db.put(_REFUSED, key)
                log.warning("remote config refused: %s", e)
                if version is not None:
                    self._report(version, "rejected", f"rejected: {e} (see {CONFIG_RUNBOOK})")
            return ConfigOutcome("rejected", version, str(e))
        document = verdict.document
        if not verdict.is_new or verdict.config is None:
            return ConfigOutcome("up_to_date", document.version)
        self._db.put(_HIGHEST, str(document.version))  # never tried twice, never replayed
        previous, previous_version = self._live.config, applied
        try:
            self._live.apply(verdict.config, document.version)
            problem = self._health.check(verdict.config)
        except Exception as e:
            problem = f"applying it failed: {type(e).__name__}: {e}"
        if problem is not None:
            self._live.apply(previous, previous_version)
            detail = (
                f"reverted: config v{document.version} made the health check fail ({problem});"
                f" v{previous_version or 0} is back in force (see {CONFIG_RUNBOOK})"
            )
            log.error("%s", detail)
            self._report(document.version, "reverted", detail)
            return ConfigOutcome("reverted", document.version, detail)
        self._db.put(
            _APPLIED, json.dumps({"version": document.version, "settings": document.settings})
        )
        self._set(version=document.version)
        log.info("config applied v%d", document.version)
        self._report(document.version, "applied", f"config applied v{document.version}")
        return ConfigOutcome("applied", document.version)

    # --- reports ------------------------------------------------------------------------

    def _pending(self) -> list[dict[str, Any]]:
        stored = self._db.get(_PENDING)
        pending: list[dict[str, Any]] = json.loads(stored) if stored else []
        return pending

    def _report(self, version: int, state: ConfigState, detail: str) -> None:
        report = ConfigReport(
            report_id=uuid.uuid4().hex,
            device_id=self._device_id,
            config_version=version,
            state=state,
            detail=detail[:2000],
            at=self._clock(),
        )
        pending = self._pending()[-(MAX_PENDING_REPORTS - 1) :]
        pending.append(report.model_dump(mode="json"))
        self._db.put(_PENDING, json.dumps(pending))
        self.deliver_reports()

    def deliver_reports(self) -> int:
        """Send queued config reports, oldest first; a lost link leaves them queued."""
        sent = 0
        for body in self._pending():
            try:
                self._source.send_config_report(ConfigReport.model_validate(body))
            except RequestRejectedError as e:
                if e.status_code in _RETRY_STATUSES:
                    log.info("config reports stay queued: %s", e)
                    break
                # a refusal is final: the same report would be refused every cycle
                log.error(
                    "dropping config report %s (v%s %s): the control plane refused it for"
                    " good with %d: %s",
                    body.get("report_id"),
                    body.get("config_version"),
                    body.get("state"),
                    e.status_code,
                    e,
                )
            except TransportError as e:
                log.info("config reports stay queued: %s", e)
                break
            remaining = [p for p in self._pending() if p["report_id"] != body["report_id"]]
            self._db.put(_PENDING, json.dumps(remaining))
            sent += 1
        return sent
