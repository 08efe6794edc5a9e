"""The update state machine: check -> verify -> download -> verify hashes -> stage ->
activate -> health window -> commit (or roll back) -> report, one cycle per poll, with
backoff and jitter between cycles.

Reports per install: ``downloading``, ``verified``, ``active`` (the new release serves and
its health window runs), then ``committed`` (the window passed: the only success a rollout
counts) or ``rolled_back`` (the previous release serves again; ``serving_release_id`` says
which). A crash inside the window leaves the install journaled as unfinished: recovery puts
the previous release back and the install is retried, at most ``MAX_ACTIVATION_ATTEMPTS``
times.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from edge_agent.errors import (
    BadUpdateError,
    ConfigError,
    DiskFullError,
    StoreUnwritableError,
    TamperedArtifactError,
    TransportError,
)
from edge_agent.release import InstalledRelease
from edge_agent.store import InstallRecord, ReleaseStore
from edge_agent.trust import SignedTarget, check_targets_signed, verify_assignment
from edge_agent.updates.acceptance import Observer, measure
from edge_agent.updates.downloader import ArtifactDownloader, Checkpoint
from edge_agent.updates.health import (
    ACCEPTANCE_RUNBOOK,
    HEALTH_RUNBOOK,
    Acceptance,
    ClassAcceptance,
    HealthVerdict,
    SmokeCheck,
    SmokeResult,
    judge,
    judge_acceptance,
    smoke_checks,
)
from edge_agent.updates.outbox import StatusOutbox
from edge_agent.updates.schedule import PollSchedule
from edge_agent.updates.tuf_client import ImageMetadataClient
from edge_agent.uplink.client import ControlPlaneClient
from protocol import AcceptanceResult, Assignment, InstallState

log = logging.getLogger(__name__)

MAX_ACTIVATION_ATTEMPTS = 3
_HIGHEST_ACCEPTED = "highest_accepted_version"
_GIVEN_UP = "given_up_version"
_REPORTED = "reported:"


class ReleaseActivator(Protocol):
    """The runtime side: start serving ``release`` (load its models) or raise;
    ``deactivate`` stops serving any release (a first install that failed)."""

    def activate(self, release: InstalledRelease) -> None: ...

    def deactivate(self) -> None: ...


class HealthProbe(Protocol):
    """The runtime side of the health window: send one smoke request to the active
    release and say how it went (never raises for a failing request)."""

    def smoke(self, release: InstalledRelease, check: SmokeCheck) -> SmokeResult: ...


@runtime_checkable
class AcceptanceProbe(Protocol):
    """The runtime side of the health window's acceptance suite: an observer that sends one
    query at a time to the active release (a ``HealthProbe`` may also be one)."""

    def observer(self, release: InstalledRelease) -> Observer: ...


class CycleResult(StrEnum):
    NO_ASSIGNMENT = "no_assignment"
    UP_TO_DATE = "up_to_date"
    INSTALLED = "installed"
    REFUSED = "refused"
    FAILED = "failed"
    GIVEN_UP = "given_up"
    OFFLINE = "offline"


_HEALTHY = frozenset({CycleResult.NO_ASSIGNMENT, CycleResult.UP_TO_DATE, CycleResult.INSTALLED})


@dataclass(frozen=True)
class CycleOutcome:
    result: CycleResult
    detail: str = ""
    assignment_version: int | None = None
    error_type: str = ""


@dataclass(frozen=True)
class UpdateStatus:
    """A snapshot of the update loop for the local API's status endpoint."""

    phase: str = "idle"
    online: bool | None = None
    release_id: str | None = None
    release_name: str | None = None
    release_version: str | None = None
    assignment_version: int | None = None
    last_check_at: datetime | None = None
    last_result: str | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    pending_reports: int = 0
    last_health: str | None = None  # the last health window's verdict, in words

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        if self.last_check_at is not None:
            body["last_check_at"] = self.last_check_at.isoformat()
        return body


class UpdateLoop:
    """Polls the control plane and installs verified releases, one cycle at a time."""

    def __init__(
        self,
        *,
        device_id: str,
        store: ReleaseStore,
        control_plane: ControlPlaneClient,
        image_metadata: ImageMetadataClient,
        downloader: ArtifactDownloader,
        activator: ReleaseActivator,
        health: HealthProbe,
        outbox: StatusOutbox,
        schedule: PollSchedule,
        clock: Callable[[], datetime] | None = None,
        rng: Callable[[], float] = random.random,
        checkpoint: Checkpoint | None = None,
        stop: threading.Event | None = None,
        device_class: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``device_class``: the class whose acceptance thresholds (in a release's config)
        this device runs in its health window; None runs the smoke checks only."""
        self._device_id = device_id
        self._device_class = device_class
        self._monotonic = monotonic
        self._store = store
        self._cp = control_plane
        self._metadata = image_metadata
        self._downloader = downloader
        self._activator = activator
        self._health = health
        self._outbox = outbox
        self._schedule = schedule
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = rng
        self._checkpoint = checkpoint or (lambda step: None)
        self._stop = stop or threading.Event()  # set: the agent is shutting down
        self._woken = threading.Event()  # set: check now, don't wait out the delay
        self._lock = threading.Lock()
        self._status = UpdateStatus()
        self._failures = 0
        self._refusals_reported = True  # there may be keys from before a restart
        self._sync_installed()

    # --- status -------------------------------------------------------------------------

    def status(self) -> UpdateStatus:
        with self._lock:
            return replace(self._status, pending_reports=self._outbox.pending())

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)

    def _sync_installed(self) -> None:
        release = self._store.current()
        self._set(
            release_id=release.release_id if release else None,
            release_name=release.release_name if release else None,
            release_version=release.release_version if release else None,
            assignment_version=release.assignment_version if release else None,
        )

    # --- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Cycle until ``stop`` is set; never raises for a bad update or a lost link."""
        while not stop.is_set():
            outcome = self.run_once()
            try:
                self.deliver_reports()
            except Exception:
                log.exception("delivering status reports failed")
            self._failures = 0 if outcome.result in _HEALTHY else self._failures + 1
            self._set(consecutive_failures=self._failures)
            delay = self._schedule.delay(self._failures, self._rng())
            log.debug("update cycle: %s; next check in %.1f s", outcome.result.value, delay)
            self._wait(stop, delay)

    def wake(self) -> None:
        """Check now (an MQTT nudge); wakes during a cycle coalesce into one more cycle."""
        self._woken.set()

    def set_poll_interval(self, seconds: float) -> None:
        """Poll every ``seconds`` from the next wait on (the remote config's setting)."""
        if seconds != self._schedule.interval:
            self._schedule = PollSchedule(seconds, max(self._schedule.max_backoff, seconds))
            self._woken.set()

    def _wait(self, stop: threading.Event, delay: float) -> None:
        deadline = time.monotonic() + delay
        while not stop.is_set() and not self._woken.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._woken.wait(min(remaining, 0.25))
        self._woken.clear()

    def deliver_reports(self) -> int:
        """Send queued status reports; a lost link leaves them queued."""
        try:
            sent = self._outbox.deliver(self._cp.send_status)
        except TransportError as e:
            log.info("status reports stay queued (%d): %s", self._outbox.pending(), e)
            self._set(online=False)
            return 0
        if sent:
            log.info("delivered %d queued status report(s)", sent)
        return sent

    def run_once(self) -> CycleOutcome:
        """One pass of the state machine. Errors become outcomes; serving is untouched."""
        self._set(phase="checking", last_check_at=self._clock())
        try:
            outcome = self._cycle()
        except TransportError as e:
            log.info("control plane unreachable: %s", e)
            outcome = CycleOutcome(CycleResult.OFFLINE, str(e), error_type=type(e).__name__)
        except BadUpdateError as e:
            log.warning("update refused: %s", e)
            outcome = CycleOutcome(CycleResult.REFUSED, str(e), error_type=type(e).__name__)
        except StoreUnwritableError as e:  # disk full or read-only: retried next cycle
            log.warning("update cycle stopped: %s", e)
            outcome = CycleOutcome(CycleResult.FAILED, str(e), error_type=type(e).__name__)
        except Exception as e:
            log.exception("update cycle failed")
            outcome = CycleOutcome(
                CycleResult.FAILED, f"{type(e).__name__}: {e}", error_type=type(e).__name__
            )
        if outcome.result in _HEALTHY and self._refusals_reported:
            # a later refusal of the same kind is news again
            try:
                self._store.db.delete_prefix(_REPORTED + "refused:")
                self._refusals_reported = False
            except StoreUnwritableError as e:
                log.warning("%s", e)
        self._set(
            phase="idle",
            online=outcome.result is not CycleResult.OFFLINE,
            last_result=outcome.result.value,
            last_error=None if outcome.result in _HEALTHY else outcome.detail,
        )
        self._sync_installed()
        return outcome

    def _cycle(self) -> CycleOutcome:
        # check
        envelope = self._cp.fetch_assignment()
        if envelope is None:
            return CycleOutcome(CycleResult.NO_ASSIGNMENT)
        # verify: image-repository metadata, then the director's assignment against it
        try:
            metadata = self._metadata.refresh()
            verdict = verify_assignment(
                envelope,
                director=metadata.director,
                device_id=self._device_id,
                installed_version=self._store.installed_version(),
                highest_accepted_version=self._highest_accepted(),
                now=self._clock(),
            )
            if not verdict.is_new:
                return CycleOutcome(CycleResult.UP_TO_DATE, "", verdict.assignment.version)
            assignment = verdict.assignment
            if self._given_up(assignment.version):
                return CycleOutcome(
                    CycleResult.GIVEN_UP,
                    f"assignment {assignment.version} failed to activate or its health window"
                    " before; waiting for a newer one",
                    assignment.version,
                )
            signed = metadata.signed_targets([t.path for t in assignment.targets])
            check_targets_signed(assignment, signed)
        except BadUpdateError as e:
            self._report_once(f"refused:{type(e).__name__}", InstallState.REFUSED, str(e))
            raise
        try:  # before anything is written: a download that cannot fit never starts
            self._downloader.ensure_space(assignment.targets)
        except DiskFullError as e:
            return self._no_space(assignment, None, e)
        self._store.db.put(_HIGHEST_ACCEPTED, str(assignment.version))
        signed_targets = {path: t for path, t in signed.items() if t is not None}
        install = self._store.begin_install(assignment, envelope, signed_targets)
        return self._install(assignment, install, signed_targets)

    def _install(
        self,
        assignment: Assignment,
        install: InstallRecord,
        signed: Mapping[str, SignedTarget],
    ) -> CycleOutcome:
        version, release_id = assignment.version, assignment.release_id
        try:
            acceptance = Acceptance.from_release_config(assignment.config)
        except ConfigError as e:
            return self._reject_config(install, assignment, e)
        self._report_once(
            f"downloading:{version}", InstallState.DOWNLOADING, "", version, release_id
        )
        # download + verify hashes (a blob enters the store only if its hash matches)
        self._set(phase="downloading")
        try:
            for target in assignment.targets:
                entry = signed.get(target.path)
                self._downloader.fetch(target, entry.custom if entry is not None else None)
        except TamperedArtifactError as e:
            self._store.fail(install, str(e))
            self._report_once(
                f"refused:{version}:tampered", InstallState.REFUSED, str(e), version, release_id
            )
            raise
        except DiskFullError as e:  # the disk filled mid-way; the partial file is gone
            return self._no_space(assignment, install, e)
        self._store.mark_verified(install)
        self._outbox.record(
            InstallState.VERIFIED, assignment_version=version, release_id=release_id
        )
        self._checkpoint("verified")
        # stage
        self._set(phase="activating")
        self._store.stage(install)
        if self._store.db.activation_attempts(version) >= MAX_ACTIVATION_ATTEMPTS:
            detail = (
                f"activation of assignment {version} was interrupted"
                f" {MAX_ACTIVATION_ATTEMPTS} times (the agent died while loading or"
                " health-checking it); giving up on it"
            )
            self._store.fail(install, detail)
            self._give_up(version)
            serving = self._store.current()
            self._outbox.record(
                InstallState.FAILED,
                assignment_version=version,
                release_id=release_id,
                detail=detail,
                serving_release_id=serving.release_id if serving else None,
            )
            return CycleOutcome(CycleResult.GIVEN_UP, detail, version)
        # activate (a renewal - same release re-signed - keeps the rollback target)
        renewal = _same_content(self._store.current(), assignment)
        release = self._store.activate(install, keep_previous=renewal)
        self._checkpoint("activate")
        try:
            self._activator.activate(release)
        except Exception as e:
            reason = f"the runtime could not activate the release: {type(e).__name__}: {e}"
            return self._roll_back(install, assignment, reason)
        # health window: the new release serves; commit only if it answers as it should
        self._store.begin_health_check(install)
        label = f"{assignment.release_name} {assignment.release_version}"
        self._outbox.record(
            InstallState.ACTIVE,
            assignment_version=version,
            release_id=release_id,
            detail=f"{label}: activated, in the health window",
        )
        try:  # so an operator sees "in the health window" while it runs
            self.deliver_reports()
        except Exception:
            log.exception("delivering status reports failed")
        self._set(phase="health_window")
        self._checkpoint("health")
        verdict = self._health_window(release, acceptance)
        self._set(last_health=verdict.reason)
        if not verdict.passed and self._stop.is_set():
            # the runtime is closing under the window: no verdict on the release. The
            # install stays unfinished; recovery at the next start restores the pointers.
            detail = "the agent is shutting down inside the health window; retried after restart"
            log.warning("%s (%s)", detail, verdict.reason)
            return CycleOutcome(CycleResult.FAILED, detail, version)
        if not verdict.passed:
            return self._roll_back(install, assignment, verdict.reason, verdict.acceptance)
        self._store.commit(install)
        self._store.db.delete_prefix(_REPORTED)
        self._outbox.record(
            InstallState.COMMITTED,
            assignment_version=version,
            release_id=release_id,
            detail=f"{label}: {verdict.reason}",
            serving_release_id=release_id,
            acceptance=verdict.acceptance,
        )
        log.info("installed release %s (assignment %d); %s", label, version, verdict.reason)
        return CycleOutcome(CycleResult.INSTALLED, "", version)

    def _health_window(self, release: InstalledRelease, acceptance: Acceptance) -> HealthVerdict:
        checks = smoke_checks(release)
        results: list[SmokeResult] = []
        for check in checks:
            try:
                results.append(self._health.smoke(release, check))
            except Exception as e:  # a probe bug must fail the window, not the loop
                log.exception("smoke request %s raised", check)
                results.append(SmokeResult(check, 0.0, f"{type(e).__name__}: {e}"))
        verdict = judge(checks, results, acceptance)
        suite = acceptance.for_class(self._device_class)
        if not verdict.passed or suite is None or self._device_class is None:
            return verdict
        return self._acceptance_check(release, self._device_class, suite, verdict)

    def _acceptance_check(
        self,
        release: InstalledRelease,
        device_class: str,
        suite: ClassAcceptance,
        smoke: HealthVerdict,
    ) -> HealthVerdict:
        """The release's bounded suite for this device's class (after the smoke checks)."""
        self._set(phase="acceptance_check")
        if not isinstance(self._health, AcceptanceProbe):
            return HealthVerdict(
                False,
                f"the release sets acceptance thresholds for device class {device_class}, but"
                f" this agent's runtime cannot measure them (see {ACCEPTANCE_RUNBOOK})",
            )
        started = self._monotonic()
        try:
            figures = measure(
                suite.thresholds,
                suite.measurement.rules(),
                self._health.observer(release),
                self._monotonic,
            )
        except Exception as e:  # a query that fails is a failed check, not a loop crash
            log.exception("the acceptance check raised")
            return HealthVerdict(
                False,
                f"acceptance check for device class {device_class} could not run:"
                f" {type(e).__name__}: {e} (see {ACCEPTANCE_RUNBOOK})",
            )
        return judge_acceptance(
            device_class,
            suite,
            figures,
            smoke,
            duration_s=self._monotonic() - started,
            loadavg_1m=_load_1m(),
        )

    def _no_space(
        self, assignment: Assignment, install: InstallRecord | None, error: DiskFullError
    ) -> CycleOutcome:
        """Too little free space to download the release: nothing is installed, the device
        keeps serving, the control plane hears it once (state ``failed``); each later cycle
        checks again, so freeing space lets the install go ahead."""
        detail = str(error)
        log.warning("assignment %d not installed: %s", assignment.version, detail)
        if install is not None:
            self._store.fail(install, detail)
        self._report_once(
            f"no-space:{assignment.version}",
            InstallState.FAILED,
            detail,
            assignment.version,
            assignment.release_id,
        )
        return CycleOutcome(CycleResult.FAILED, detail, assignment.version, "DiskFullError")

    def _reject_config(
        self, install: InstallRecord, assignment: Assignment, error: ConfigError
    ) -> CycleOutcome:
        """A release whose config the agent cannot act on: never downloaded or activated."""
        detail = f"{error}; this assignment will not be installed (see {HEALTH_RUNBOOK})"
        log.error("%s; giving up on assignment %d", detail, assignment.version)
        self._store.fail(install, detail)
        self._give_up(assignment.version)
        serving = self._store.current()
        self._outbox.record(
            InstallState.FAILED,
            assignment_version=assignment.version,
            release_id=assignment.release_id,
            detail=detail,
            serving_release_id=serving.release_id if serving else None,
        )
        return CycleOutcome(CycleResult.FAILED, detail, assignment.version, "ConfigError")

    def _roll_back(
        self,
        install: InstallRecord,
        assignment: Assignment,
        reason: str,
        acceptance: AcceptanceResult | None = None,
    ) -> CycleOutcome:
        """Serve the release from before the install again, give up on this assignment
        version (no retry loop on a bad release) and report why."""
        log.error("%s; rolling back", reason)
        prior = self._store.abort_activation(install, reason)
        try:
            if prior is not None:
                self._activator.activate(prior)
            else:
                self._activator.deactivate()
        except Exception:
            log.exception("re-activating the previous release failed too")
        self._store.collect_garbage()  # the rolled-back release is not kept
        self._give_up(assignment.version)
        serving = (
            f"{prior.release_name} {prior.release_version}"
            if prior is not None
            else "nothing (there was no earlier release)"
        )
        self._outbox.record(
            InstallState.ROLLED_BACK,
            assignment_version=assignment.version,
            release_id=assignment.release_id,
            detail=f"{reason}; now serving {serving}",
            serving_release_id=prior.release_id if prior else None,
            acceptance=acceptance,
        )
        return CycleOutcome(CycleResult.FAILED, reason, assignment.version)

    # --- small persistent facts ---------------------------------------------------------

    def _highest_accepted(self) -> int | None:
        value = self._store.db.get(_HIGHEST_ACCEPTED)
        return None if value is None else int(value)

    def _given_up(self, version: int) -> bool:
        return self._store.db.get(_GIVEN_UP) == str(version)

    def _give_up(self, version: int) -> None:
        self._store.db.put(_GIVEN_UP, str(version))

    def _report_once(
        self,
        key: str,
        state: InstallState,
        detail: str,
        assignment_version: int | None = None,
        release_id: str | None = None,
    ) -> None:
        """Queue a report unless one with the same key was queued since the last install."""
        if self._store.db.get(_REPORTED + key) is not None:
            return
        self._store.db.put(_REPORTED + key, "1")
        self._refusals_reported = True
        self._outbox.record(
            state, assignment_version=assignment_version, release_id=release_id, detail=detail
        )


def _load_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on this platform
        return None


def _same_content(current: InstalledRelease | None, assignment: Assignment) -> bool:
    if current is None or current.release_id != assignment.release_id:
        return False
    installed = [(a.name, a.sha256, a.kind, a.format) for a in current.artifacts]
    assigned = [(t.name, t.sha256, t.kind, t.format) for t in assignment.targets]
    return installed == assigned and dict(current.config) == assignment.config
