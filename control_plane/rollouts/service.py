"""Staged rollouts against the database: create, advance one stage at a time, halt and
roll back, operator actions, and the convergence of late devices to a cohort's default.

The rules live in :mod:`control_plane.rollouts.core`; this module gathers the counts
they judge and carries out what they decide, each pass in one transaction (a replica
killed mid-pass leaves nothing half done). Exactly one replica advances a rollout at a
time: the pass locks the rollout's row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite
has one writer anyway).
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.access.tokens import new_id
from control_plane.director.service import Director, latest_assignments
from control_plane.errors import ConflictError, NotFoundError, ReleaseAwaitingSignatureError
from control_plane.releases.qualification import require_qualified
from control_plane.releases.state import ReleaseState
from control_plane.remote_config.core import ConfigValidationError, Scope, apply_change
from control_plane.remote_config.service import current_layers, reached_devices, set_layer
from control_plane.rollouts.core import (
    ACTIVE_STATES,
    Action,
    AllOf,
    CohortSelector,
    Decision,
    Gate,
    InvalidRolloutError,
    ManualApproval,
    Outcome,
    RolloutKind,
    RolloutState,
    StageCounts,
    StagePlan,
    Step,
    after_action,
    bucket_of,
    config_outcome,
    config_target_scope,
    decide,
    gate_from_spec,
    halt_summary,
    is_timed_out,
)
from control_plane.storage.database import Database, retrying
from control_plane.storage.models import (
    CohortDefault,
    ConfigReportRecord,
    Device,
    DeviceConfigRecord,
    Release,
    Rollout,
    RolloutDevice,
    RolloutEvent,
    StatusReportRecord,
)
from protocol.messages import FINAL_INSTALL_STATES, InstallState
from protocol.remote_config import config_digest

WORKER_ACTOR = "rollout-worker"
_NO_CHANGE = "the patch does not change its effective config"
MAX_OVERLAP_NAMED = 10
_CONVERGE_LOCK_ID = 0x6F7574706F7374  # "outpost": one replica converges defaults at a time
_CREATE_LOCK_ID = _CONVERGE_LOCK_ID + 1  # rollout creation (the overlap check) is serial


@dataclass(frozen=True)
class RolloutRequest:
    """A validated ``rollout create``."""

    release: str | None  # a release id or name@version (a release rollout)
    cohort: CohortSelector
    plan: StagePlan
    gate: Gate
    stage_timeout: timedelta
    manual_approval: bool
    config: Mapping[str, Any] | None = None  # a merge patch (a config rollout)
    config_scope: str | None = None  # where a config rollout's patch goes on completion
    require_qualification: str | None = None  # a device class the release must be qualified on

    @property
    def kind(self) -> RolloutKind:
        return RolloutKind.RELEASE if self.config is None else RolloutKind.CONFIG

    @classmethod
    def of(
        cls,
        *,
        release: str | None = None,
        config: Any = None,
        cohort: str,
        stages: Sequence[float],
        max_failure_rate: float,
        min_sample: int,
        stage_timeout_seconds: int,
        max_failures: int | None = None,
        manual_approval: bool = False,
        extra_gates: Sequence[Mapping[str, Any]] = (),
        require_qualification: str | None = None,
    ) -> RolloutRequest:
        gates: list[Gate] = [
            gate_from_spec(
                {"type": "failure_rate", "max_rate": max_failure_rate, "min_sample": min_sample}
            )
        ]
        if max_failures is not None:
            gates.append(gate_from_spec({"type": "max_failures", "limit": max_failures}))
        gates.extend(gate_from_spec(spec) for spec in extra_gates)
        if manual_approval:
            gates.append(ManualApproval())
        if not 1 <= stage_timeout_seconds <= 30 * 24 * 3600:
            raise InvalidRolloutError(
                "stage_timeout_seconds", f"{stage_timeout_seconds} is not in [1, 2592000] (30 days)"
            )
        if (release is None) == (config is None):
            raise InvalidRolloutError(
                "release", "a rollout moves either a release or a config patch: give exactly one"
            )
        selector = CohortSelector.parse(cohort)
        scope: str | None = None
        if config is not None:
            scope = config_target_scope(selector)
            # the patch must be a valid layer on its own (it sits between tag and device)
            apply_change(Scope.parse(scope), {}, config)
        return cls(
            release=release,
            cohort=selector,
            plan=StagePlan.parse(stages),
            gate=AllOf(gates=tuple(gates)),
            stage_timeout=timedelta(seconds=stage_timeout_seconds),
            manual_approval=manual_approval,
            config=None if config is None else dict(config),
            config_scope=scope,
            require_qualification=require_qualification,
        )


@dataclass(frozen=True)
class StageView:
    stage: int
    percent: float
    devices: int  # devices whose bucket first falls in this stage and that were moved
    committed: int
    failed: int
    timed_out: int
    pending: int


@dataclass(frozen=True)
class RolloutView:
    rollout: Rollout
    release: Release | None  # None for a config rollout
    counts: StageCounts
    stages: list[StageView]
    events: list[RolloutEvent]
    rolled_back: int


def plan_of(rollout: Rollout) -> StagePlan:
    return StagePlan(percents=tuple(float(p) for p in rollout.plan["stages"]))


def gate_of(rollout: Rollout) -> Gate:
    return gate_from_spec(rollout.plan["gate"])


def resolve_release(session: Session, ref: str) -> Release:
    """A release by id or ``name@version``; a 4xx naming the field when there is none."""
    release = session.get(Release, ref)
    if release is None and "@" in ref:
        name, _, version = ref.rpartition("@")
        release = session.scalars(
            select(Release).where(Release.name == name, Release.version == version)
        ).first()
    if release is None:
        raise InvalidRolloutError("release", f"no release {ref!r} (give an id or name@version)")
    if release.state != ReleaseState.PUBLISHED:
        raise ReleaseAwaitingSignatureError(
            f"release: {release.name}@{release.version} awaits the release manager's"
            " signature of its targets ('outpost-cp sign-targets'); it can be rolled out once"
            " signed"
        )
    return release


@dataclass(frozen=True)
class _FleetDevice:
    id: str
    tags: list[str]
    hardware: dict[str, Any]
    installed_release_id: str | None


def _fleet(session: Session) -> list[_FleetDevice]:
    rows = session.execute(
        select(Device.id, Device.tags, Device.hardware, Device.installed_release_id).order_by(
            Device.id
        )
    )
    return [_FleetDevice(r[0], list(r[1] or []), dict(r[2] or {}), r[3]) for r in rows]


def _members(session: Session, rollout_id: str) -> dict[str, RolloutDevice]:
    rows = session.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id))
    return {r.device_id: r for r in rows}


def _active_rollouts(session: Session, kind: str | None = None) -> list[Rollout]:
    query = select(Rollout).where(Rollout.state.in_([s.value for s in ACTIVE_STATES]))
    if kind is not None:
        query = query.where(Rollout.kind == kind)
    return list(session.scalars(query.order_by(Rollout.created_at, Rollout.id)))


def subject(rollout: Rollout) -> str:
    """What a rollout moves, for messages: ``name@version`` or ``config {...}``."""
    if rollout.kind == RolloutKind.CONFIG.value:
        return f"config {json.dumps(rollout.config_patch, sort_keys=True)[:200]}"
    release = rollout.release
    return "?" if release is None else f"{release.name}@{release.version}"


def _event(
    session: Session,
    rollout: Rollout,
    *,
    kind: str,
    actor: str,
    message: str,
    now: datetime,
    numbers: Mapping[str, Any] | None = None,
) -> None:
    session.add(
        RolloutEvent(
            rollout_id=rollout.id,
            at=now,
            actor=actor,
            kind=kind,
            stage=rollout.stage,
            message=message,
            numbers=dict(numbers or {}),
        )
    )


class RolloutService:
    """Creates and drives staged rollouts; every operator action is audited."""

    def __init__(
        self,
        db: Database,
        director: Director,
        *,
        checkpoint: Callable[[str], None] | None = None,
        on_config_change: Callable[[Sequence[str]], None] | None = None,
        signals: Callable[[Session, Rollout], Mapping[str, Any]] | None = None,
    ) -> None:
        self.db = db
        self.director = director
        # what other services measured for a pass (telemetry): put in StageCounts.signals
        self.signals = signals
        # called after commit with the devices a config rollout may have changed (nudges)
        self.on_config_change = on_config_change
        # TEST ONLY (see control_plane.rollouts.fault_injection): called at named steps
        # inside a pass's locked transaction; a no-op unless a test freezes a replica there.
        self.checkpoint = checkpoint or _no_checkpoint

    # --- create --------------------------------------------------------------------------

    def create(self, request: RolloutRequest, *, actor: str, now: datetime) -> Rollout:
        def work(session: Session) -> Rollout:
            release = None if request.release is None else resolve_release(session, request.release)
            if release is not None and request.require_qualification is not None:
                require_qualified(session, release, request.require_qualification)
            if request.config_scope is not None:  # the fold must be valid too, checked now
                scope = Scope.parse(request.config_scope)
                apply_change(scope, current_layers(session).layer(scope), request.config)
            _wait_lock(session, _CREATE_LOCK_ID)  # two replicas never both pass the overlap check
            fleet = _fleet(session)
            cohort = [d for d in fleet if request.cohort.matches(d.tags, d.hardware)]
            if not cohort:
                raise InvalidRolloutError(
                    "cohort", f"{request.cohort.text!r} matches no enrolled device"
                )
            self._refuse_overlap(session, request.kind, request.cohort, cohort, fleet)
            rollout = Rollout(
                id=new_id("ro"),
                kind=request.kind.value,
                release_id=None if release is None else release.id,
                config_patch=request.config,
                config_scope=request.config_scope,
                cohort=request.cohort.text,
                plan={
                    "stages": list(request.plan.percents),
                    "gate": request.gate.spec(),
                    "stage_timeout_seconds": int(request.stage_timeout.total_seconds()),
                    "manual_approval": request.manual_approval,
                },
                salt=secrets.token_hex(16),
                state=RolloutState.RUNNING.value,
                stage=0,
                stage_started_at=now,
                approved_stage=None,
                reason="",
                created_at=now,
                created_by=actor,
                updated_at=now,
                finished_at=None,
            )
            session.add(rollout)
            session.flush()
            moved = self._join(session, rollout, release, now, fleet=fleet)
            _event(
                session,
                rollout,
                kind="created",
                actor=actor,
                now=now,
                message=f"stage 1 ({request.plan.percents[0]:g}%): assigned {moved} of"
                f" {len(cohort)} cohort devices {subject(rollout)}",
                numbers={"cohort": len(cohort), "moved": moved},
            )
            audit.record(
                session,
                actor=actor,
                action="rollout.create",
                target=rollout.id,
                now=now,
                details={
                    "kind": rollout.kind,
                    "what": subject(rollout),
                    "release_id": rollout.release_id,
                    "config_scope": rollout.config_scope,
                    "cohort": rollout.cohort,
                    "plan": rollout.plan,
                    "cohort_devices": len(cohort),
                },
            )
            return rollout

        rollout = retrying(self.db, work)
        self._notify_config(rollout.id)
        return rollout

    def _notify_config(self, rollout_id: str, *, also: Sequence[str] = ()) -> None:
        """Tell the devices of a config rollout (after commit) that their config may have
        changed: a nudge carries no authority, so telling too many is harmless."""
        if self.on_config_change is None:
            return
        with self.db.transaction() as session:
            rollout = session.get(Rollout, rollout_id)
            if rollout is None or rollout.kind != RolloutKind.CONFIG.value:
                return
            ids = set(_members(session, rollout_id)) | set(also)
            if rollout.state == RolloutState.COMPLETED.value and rollout.config_scope:
                ids |= set(reached_devices(session, Scope.parse(rollout.config_scope)))
        if ids:
            self.on_config_change(sorted(ids))

    def _refuse_overlap(
        self,
        session: Session,
        kind: RolloutKind,
        selector: CohortSelector,
        cohort: Sequence[_FleetDevice],
        fleet: Sequence[_FleetDevice],
    ) -> None:
        ids = {d.id for d in cohort}
        for other in _active_rollouts(session, kind.value):  # a release and a config may overlap
            theirs = CohortSelector.parse(other.cohort)
            claimed = {d.id for d in fleet if theirs.matches(d.tags, d.hardware)}
            claimed |= set(_members(session, other.id))
            both = sorted(ids & claimed)
            if both:
                named = ", ".join(both[:MAX_OVERLAP_NAMED])
                more = f" and {len(both) - MAX_OVERLAP_NAMED} more" if len(both) > 10 else ""
                raise ConflictError(
                    f"cohort: {selector.text!r} overlaps {kind.value} rollout {other.id}"
                    f" ({other.cohort!r},"
                    f" {other.state}) on {len(both)} devices: {named}{more}; wait for it to"
                    " finish, abort it, or narrow the cohort"
                )

    # --- one pass of the worker ----------------------------------------------------------

    def advance(self, rollout_id: str, now: datetime) -> Step | None:
        """Judge a running rollout once and carry out the decision. ``None`` when another
        replica holds it or it is not running."""

        def work(session: Session) -> Step | None:
            rollout = self._lock(session, rollout_id, wait=False)
            if rollout is None:
                return None
            state = RolloutState(rollout.state)
            self._record_outcomes(session, rollout, now)
            if state not in (RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL):
                return None
            release = rollout.release
            self._time_out(session, rollout, now)
            self._join(session, rollout, release, now)
            counts = self.counts(session, rollout)
            if self.signals is not None:
                counts = replace(
                    counts, signals={**counts.signals, **self.signals(session, rollout)}
                )
            decision = decide(plan_of(rollout), gate_of(rollout), counts)
            self._carry_out(session, rollout, release, counts, decision, now)
            if decision.step is Step.ADVANCE:
                session.flush()  # the whole pass is written, not yet committed
                self.checkpoint("rollout-advanced")
            return decision.step

        step = retrying(self.db, work)
        if step in (Step.ADVANCE, Step.HALT, Step.COMPLETE):
            self._notify_config(rollout_id)
        return step

    def active_ids(self) -> list[str]:
        with self.db.transaction() as session:
            return [r.id for r in _active_rollouts(session)]

    def _lock(self, session: Session, rollout_id: str, *, wait: bool) -> Rollout | None:
        query = select(Rollout).where(Rollout.id == rollout_id)
        query = query.with_for_update(skip_locked=not wait)
        return session.scalars(query).first()

    def _record_outcomes(self, session: Session, rollout: Rollout, now: datetime) -> None:
        """Take each undecided device's first final report about this rollout's release
        (a config rollout: its first config report about a version carrying the patch)."""
        if rollout.kind == RolloutKind.CONFIG.value:
            self._record_config_outcomes(session, rollout, now)
            return
        open_rows = {
            r.device_id: r
            for r in session.scalars(
                select(RolloutDevice).where(
                    RolloutDevice.rollout_id == rollout.id,
                    RolloutDevice.outcome.in_([Outcome.PENDING.value, Outcome.TIMED_OUT.value]),
                )
            )
        }
        if not open_rows:
            return
        reports = session.execute(
            select(
                StatusReportRecord.device_id,
                StatusReportRecord.state,
                StatusReportRecord.detail,
                StatusReportRecord.assignment_version,
            )
            .join(
                RolloutDevice,
                (RolloutDevice.device_id == StatusReportRecord.device_id)
                & (RolloutDevice.rollout_id == rollout.id),
            )
            .where(
                RolloutDevice.outcome.in_([Outcome.PENDING.value, Outcome.TIMED_OUT.value]),
                StatusReportRecord.release_id == rollout.release_id,
                StatusReportRecord.assignment_version >= RolloutDevice.assignment_version,
                StatusReportRecord.state.in_([s.value for s in FINAL_INSTALL_STATES]),
            )
            .order_by(StatusReportRecord.id)
        )
        decided: set[str] = set()
        for device_id, state, detail, _version in reports:
            row = open_rows.get(device_id)
            if row is None or device_id in decided:
                continue
            decided.add(device_id)
            committed = state == InstallState.COMMITTED.value
            row.outcome = (Outcome.COMMITTED if committed else Outcome.FAILED).value
            row.outcome_at = now
            row.detail = f"{state}: {detail}"[:2000] if not committed else ""

    def _record_config_outcomes(self, session: Session, rollout: Rollout, now: datetime) -> None:
        undecided = [Outcome.PENDING.value, Outcome.TIMED_OUT.value]
        reports = session.execute(
            select(
                ConfigReportRecord.device_id,
                ConfigReportRecord.state,
                ConfigReportRecord.detail,
                ConfigReportRecord.config_version,
            )
            .join(
                RolloutDevice,
                (RolloutDevice.device_id == ConfigReportRecord.device_id)
                & (RolloutDevice.rollout_id == rollout.id),
            )
            .where(
                RolloutDevice.outcome.in_(undecided),
                ConfigReportRecord.config_version >= RolloutDevice.assignment_version,
                # a version issued after the layer was removed says nothing about the patch
                RolloutDevice.rollback_assignment_version.is_(None)
                | (ConfigReportRecord.config_version < RolloutDevice.rollback_assignment_version),
            )
            .order_by(ConfigReportRecord.id)
        ).all()
        if not reports:
            return
        open_rows = _members(session, rollout.id)
        decided: set[str] = set()
        for device_id, state, detail, version in reports:
            row = open_rows.get(device_id)
            if row is None or device_id in decided or row.outcome not in undecided:
                continue
            decided.add(device_id)
            outcome = config_outcome(state)
            row.outcome = outcome.value
            row.outcome_at = now
            row.detail = "" if outcome is Outcome.COMMITTED else f"v{version} {detail}"[:2000]

    def _time_out(self, session: Session, rollout: Rollout, now: datetime) -> None:
        timeout = timedelta(seconds=int(rollout.plan["stage_timeout_seconds"]))
        for row in session.scalars(
            select(RolloutDevice).where(
                RolloutDevice.rollout_id == rollout.id,
                RolloutDevice.outcome == Outcome.PENDING.value,
            )
        ):
            if is_timed_out(row.assigned_at, timeout, now):
                row.outcome = Outcome.TIMED_OUT.value
                row.outcome_at = now
                row.detail = f"no final report within the stage timeout ({timeout})"

    def _join(
        self,
        session: Session,
        rollout: Rollout,
        release: Release | None,
        now: datetime,
        *,
        fleet: Sequence[_FleetDevice] | None = None,
    ) -> int:
        """Move every cohort device whose bucket the current stage covers and that this
        rollout has not moved yet (late enrollers and re-tagged devices too); a device
        another running rollout of its kind holds is left to it. Returns how many moved."""
        fleet = _fleet(session) if fleet is None else fleet
        selector = CohortSelector.parse(rollout.cohort)
        plan = plan_of(rollout)
        members = _members(session, rollout.id)
        held_elsewhere = set(
            session.scalars(
                select(RolloutDevice.device_id)
                .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
                .where(
                    Rollout.id != rollout.id,
                    Rollout.kind == rollout.kind,
                    Rollout.state.in_([s.value for s in ACTIVE_STATES]),
                )
            )
        )
        joining: list[tuple[_FleetDevice, int]] = []
        for device in fleet:
            if device.id in members or device.id in held_elsewhere:
                continue
            if not selector.matches(device.tags, device.hardware):
                continue
            bucket = bucket_of(rollout.salt, device.id)
            if plan.covers(rollout.stage, bucket):
                joining.append((device, bucket))
        if not joining:
            return 0
        if release is None:
            return self._join_config(session, rollout, joining, now)
        latest = latest_assignments(session, [d.id for d, _ in joining])
        moves: list[tuple[str, Release]] = []
        for device, _bucket in joining:
            current = latest.get(device.id)
            runs_it = current is not None and current.release_id == release.id
            if not (runs_it and device.installed_release_id == release.id):
                moves.append((device.id, release))
        issued = self.director.issue_many(
            session, moves, issued_by=f"rollout:{rollout.id}", now=now
        )
        for device, bucket in joining:
            record = issued.get(device.id)
            prior = latest.get(device.id)
            session.add(
                RolloutDevice(
                    rollout_id=rollout.id,
                    device_id=device.id,
                    bucket=bucket,
                    stage=rollout.stage,
                    # what the device runs (by its own report), else what it was assigned
                    prior_release_id=device.installed_release_id
                    or (prior.release_id if prior is not None else None),
                    assignment_version=record.version
                    if record
                    else (prior.version if prior else 0),
                    assigned_at=now,
                    outcome=(Outcome.PENDING if record else Outcome.COMMITTED).value,
                    outcome_at=None if record else now,
                    detail="" if record else "already runs this release",
                    rollback_assignment_version=None,
                )
            )
        session.flush()
        return len(joining)

    def _join_config(
        self,
        session: Session,
        rollout: Rollout,
        joining: Sequence[tuple[_FleetDevice, int]],
        now: datetime,
    ) -> int:
        """Give each joining device the patch as a layer of its effective config. A device
        whose effective config the patch does not change has nothing to apply and counts
        as a success at once; the others are judged by the first config report about a
        version newer than the one they were issued before joining."""
        patch = rollout.config_patch or {}
        for device, bucket in joining:
            layers = current_layers(session, device.id)
            before = config_digest(layers.effective(device.id, device.tags))
            after = config_digest(layers.effective(device.id, device.tags, extra=[patch]))
            changes = before != after
            issued = session.scalar(
                select(func.max(DeviceConfigRecord.version)).where(
                    DeviceConfigRecord.device_id == device.id
                )
            )
            session.add(
                RolloutDevice(
                    rollout_id=rollout.id,
                    device_id=device.id,
                    bucket=bucket,
                    stage=rollout.stage,
                    prior_release_id=None,
                    assignment_version=int(issued or 0) + 1,
                    assigned_at=now,
                    outcome=(Outcome.PENDING if changes else Outcome.COMMITTED).value,
                    outcome_at=None if changes else now,
                    detail="" if changes else _NO_CHANGE,
                    rollback_assignment_version=None,
                )
            )
        session.flush()
        return len(joining)

    def counts(self, session: Session, rollout: Rollout) -> StageCounts:
        by_outcome: Counter[str] = Counter(
            dict(
                session.execute(
                    select(RolloutDevice.outcome, func.count())
                    .where(RolloutDevice.rollout_id == rollout.id)
                    .group_by(RolloutDevice.outcome)
                ).all()
            )
        )
        plan = plan_of(rollout)
        return StageCounts(
            stage=rollout.stage,
            percent=plan.percents[rollout.stage],
            is_last=plan.is_last(rollout.stage),
            committed=by_outcome[Outcome.COMMITTED.value],
            failed=by_outcome[Outcome.FAILED.value],
            timed_out=by_outcome[Outcome.TIMED_OUT.value],
            pending=by_outcome[Outcome.PENDING.value],
            approved=rollout.approved_stage == rollout.stage,
        )

    def _carry_out(
        self,
        session: Session,
        rollout: Rollout,
        release: Release | None,
        counts: StageCounts,
        decision: Decision,
        now: datetime,
    ) -> None:
        rollout.updated_at = now
        step = decision.step
        numbers = decision.result.as_json()
        if step is Step.WAIT:
            rollout.state = RolloutState.RUNNING.value
            rollout.reason = f"{counts.label()}: {decision.message}"
            return
        if step is Step.AWAIT_APPROVAL:
            if rollout.state != RolloutState.AWAITING_APPROVAL.value:
                rollout.state = RolloutState.AWAITING_APPROVAL.value
                rollout.reason = decision.message
                _event(
                    session,
                    rollout,
                    kind="awaiting_approval",
                    actor=WORKER_ACTOR,
                    message=decision.message,
                    now=now,
                    numbers=numbers,
                )
            return
        if step is Step.HALT:
            summary = halt_summary(counts, decision)
            moved_back, left = self._roll_back(session, rollout, now)
            rollout.state = RolloutState.HALTED.value
            rollout.reason = (
                f"{summary}; {_rollback_phrase(moved_back, left)}"
                " (see docs/runbooks/cp-rollout-halted.md)"
            )
            rollout.finished_at = now
            self._decided(session, rollout, "halted", rollout.reason, now, numbers)
            return
        if step is Step.COMPLETE and release is None:
            self._complete_config(session, rollout, counts, now, numbers)
            return
        if step is Step.COMPLETE and release is not None:
            rollout.state = RolloutState.COMPLETED.value
            rollout.finished_at = now
            rollout.reason = (
                f"completed: {counts.committed} of {counts.moved} devices committed"
                f" {release.name}@{release.version}; it is now the default of {rollout.cohort!r}"
            )
            session.add(
                CohortDefault(
                    cohort=rollout.cohort, release_id=release.id, rollout_id=rollout.id, set_at=now
                )
            )
            self._decided(session, rollout, "completed", rollout.reason, now, numbers)
            return
        # advance
        assert decision.next_stage is not None
        passed = f"{counts.label()} passed: {decision.message}"
        rollout.stage = decision.next_stage
        rollout.stage_started_at = now
        rollout.state = RolloutState.RUNNING.value
        moved = self._join(session, rollout, release, now)
        rollout.reason = f"{passed}; stage {rollout.stage + 1} assigned {moved} more devices"
        self._decided(session, rollout, "advanced", rollout.reason, now, numbers)

    def _complete_config(
        self,
        session: Session,
        rollout: Rollout,
        counts: StageCounts,
        now: datetime,
        numbers: Mapping[str, Any],
    ) -> None:
        """Fold the patch into the scope it targets (a new version of that layer, audited
        as ``config.set`` by the rollout); the rollout's own layer then stops applying, so
        the devices it reached keep the same settings and later cohort devices get them."""
        scope = Scope.parse(rollout.config_scope or "")
        rollout.finished_at = now
        try:
            layer = set_layer(
                session, scope, rollout.config_patch or {}, actor=f"rollout:{rollout.id}", now=now
            )
        except ConfigValidationError as e:  # the scope's layer changed since create
            moved_back, left = self._roll_back(session, rollout, now)
            rollout.state = RolloutState.HALTED.value
            rollout.reason = (
                f"every stage passed, but the patch no longer fits {scope}'s layer: {e};"
                f" {_rollback_phrase(moved_back, left)} (see docs/runbooks/cp-rollout-halted.md)"
            )
            self._decided(session, rollout, "halted", rollout.reason, now, numbers)
            return
        rollout.state = RolloutState.COMPLETED.value
        rollout.reason = (
            f"completed: {counts.committed} of {counts.moved} devices applied"
            f" {subject(rollout)}; it is now part of the {scope} layer (v{layer.version})"
        )
        self._decided(session, rollout, "completed", rollout.reason, now, numbers)

    def _decided(
        self,
        session: Session,
        rollout: Rollout,
        kind: str,
        message: str,
        now: datetime,
        numbers: Mapping[str, Any],
    ) -> None:
        _event(
            session,
            rollout,
            kind=kind,
            actor=WORKER_ACTOR,
            message=message,
            now=now,
            numbers=numbers,
        )
        audit.record(
            session,
            actor=WORKER_ACTOR,
            action=f"rollout.{kind}",
            target=rollout.id,
            now=now,
            details={"stage": rollout.stage, "message": message},
        )

    def _roll_back(
        self, session: Session, rollout: Rollout, now: datetime
    ) -> tuple[Counter[str], int]:
        """Re-assign every moved device the release it ran before; returns how many went
        back to which release (by name@version) and how many had none to go back to. A
        config rollout removes its layer from every device it reached instead."""
        if rollout.kind == RolloutKind.CONFIG.value:
            return self._remove_layer(session, rollout), 0
        rows = list(
            session.scalars(
                select(RolloutDevice).where(
                    RolloutDevice.rollout_id == rollout.id,
                    RolloutDevice.rollback_assignment_version.is_(None),
                )
            )
        )
        targets: dict[str, Release] = {}
        moves: list[tuple[str, Release]] = []
        left = 0
        for row in rows:
            if row.prior_release_id is None or row.prior_release_id == rollout.release_id:
                left += row.prior_release_id is None
                continue
            prior = targets.get(row.prior_release_id)
            if prior is None:
                prior = session.get(Release, row.prior_release_id)
                if prior is None:  # pragma: no cover - foreign key guarantees it
                    continue
                targets[prior.id] = prior
            moves.append((row.device_id, prior))
        issued = self.director.issue_many(
            session, moves, issued_by=f"rollout:{rollout.id}:rollback", now=now
        )
        back: Counter[str] = Counter()
        by_device = {row.device_id: row for row in rows}
        for device_id, prior in moves:
            by_device[device_id].rollback_assignment_version = issued[device_id].version
            back[f"{prior.name}@{prior.version}"] += 1
        return back, left

    def _remove_layer(self, session: Session, rollout: Rollout) -> Counter[str]:
        """The patch stops applying to the devices it reached: their next signed config is
        the one they had before (a newer version), which they apply and report."""
        rows = list(
            session.scalars(
                select(RolloutDevice).where(
                    RolloutDevice.rollout_id == rollout.id,
                    RolloutDevice.rollback_assignment_version.is_(None),
                )
            )
        )
        back: Counter[str] = Counter()
        for row in rows:
            issued = session.scalar(
                select(func.max(DeviceConfigRecord.version)).where(
                    DeviceConfigRecord.device_id == row.device_id
                )
            )
            # the version that takes the layer away is newer than any issued so far
            row.rollback_assignment_version = int(issued or 0) + 1
            if row.detail != _NO_CHANGE:  # a device the patch did not change has nothing back
                back["their prior config"] += 1
        return back

    # --- operator actions ----------------------------------------------------------------

    def act(
        self,
        rollout_id: str,
        action: Action,
        *,
        actor: str,
        now: datetime,
        roll_back: bool = True,
    ) -> Rollout:
        """Pause, resume, approve the current stage, or abort (rolling back by default)."""

        def work(session: Session) -> Rollout:
            rollout = self._lock(session, rollout_id, wait=True)
            if rollout is None:
                raise NotFoundError(f"no rollout with id {rollout_id!r}")
            state = RolloutState(rollout.state)
            new_state = after_action(state, action, rollout.id)
            details: dict[str, Any] = {"from": state.value, "to": new_state.value}
            message = f"{action.value} by {actor}"
            if action is Action.APPROVE:
                rollout.approved_stage = rollout.stage
                message = f"stage {rollout.stage + 1} approved by {actor}"
                details["stage"] = rollout.stage + 1
            if action is Action.RESUME:
                # the stage timeout restarts for devices still pending
                for row in session.scalars(
                    select(RolloutDevice).where(
                        RolloutDevice.rollout_id == rollout.id,
                        RolloutDevice.outcome == Outcome.PENDING.value,
                    )
                ):
                    row.assigned_at = now
            if action is Action.ABORT:
                rollout.finished_at = now
                if roll_back:
                    back, left = self._roll_back(session, rollout, now)
                    message = f"aborted by {actor}; {_rollback_phrase(back, left)}"
                else:
                    message = f"aborted by {actor}; devices keep what they were assigned"
                details["roll_back"] = roll_back
                rollout.reason = message
            rollout.state = new_state.value
            rollout.updated_at = now
            _event(session, rollout, kind=action.value, actor=actor, message=message, now=now)
            audit.record(
                session,
                actor=actor,
                action=f"rollout.{action.value}",
                target=rollout.id,
                now=now,
                details=details,
            )
            return rollout

        rollout = retrying(self.db, work)
        if action is Action.ABORT:
            self._notify_config(rollout_id)
        return rollout

    # --- reading -------------------------------------------------------------------------

    def view(self, rollout_id: str) -> RolloutView:
        with self.db.transaction() as session:
            rollout = session.get(Rollout, rollout_id)
            if rollout is None:
                raise NotFoundError(f"no rollout with id {rollout_id!r}")
            return self._view(session, rollout)

    def views(self, *, limit: int = 100) -> list[RolloutView]:
        with self.db.transaction() as session:
            rows = session.scalars(
                select(Rollout).order_by(Rollout.created_at.desc(), Rollout.id).limit(limit)
            )
            return [self._view(session, r) for r in rows]

    def _view(self, session: Session, rollout: Rollout) -> RolloutView:
        plan = plan_of(rollout)
        per_stage: dict[int, Counter[str]] = {}
        for stage, outcome, n in session.execute(
            select(RolloutDevice.stage, RolloutDevice.outcome, func.count())
            .where(RolloutDevice.rollout_id == rollout.id)
            .group_by(RolloutDevice.stage, RolloutDevice.outcome)
        ).all():
            per_stage.setdefault(stage, Counter())[outcome] = n
        stages = [
            StageView(
                stage=i,
                percent=p,
                devices=sum(per_stage.get(i, Counter()).values()),
                committed=per_stage.get(i, Counter())[Outcome.COMMITTED.value],
                failed=per_stage.get(i, Counter())[Outcome.FAILED.value],
                timed_out=per_stage.get(i, Counter())[Outcome.TIMED_OUT.value],
                pending=per_stage.get(i, Counter())[Outcome.PENDING.value],
            )
            for i, p in enumerate(plan.percents)
        ]
        events = list(
            session.scalars(
                select(RolloutEvent)
                .where(RolloutEvent.rollout_id == rollout.id)
                .order_by(RolloutEvent.id)
            )
        )
        rolled_back = session.scalar(
            select(func.count())
            .select_from(RolloutDevice)
            .where(
                RolloutDevice.rollout_id == rollout.id,
                RolloutDevice.rollback_assignment_version.is_not(None),
            )
        )
        return RolloutView(
            rollout=rollout,
            release=rollout.release,
            counts=self.counts(session, rollout),
            stages=stages,
            events=events,
            rolled_back=int(rolled_back or 0),
        )

    # --- cohort defaults -----------------------------------------------------------------

    def converge_defaults(self, now: datetime) -> int:
        """Assign each cohort's default release (left by its newest completed rollout) to
        devices of that cohort that no running rollout holds and whose newest assignment
        is older than the default and names another release (newcomers, devices that were
        re-tagged into the cohort). A later manual assignment is left alone."""

        def work(session: Session) -> int:
            if not _try_lock(session, _CONVERGE_LOCK_ID):
                return 0
            defaults = list(session.scalars(select(CohortDefault).order_by(CohortDefault.id)))
            if not defaults:
                return 0
            newest: dict[str, CohortDefault] = {}
            for row in defaults:
                newest[row.cohort] = row
            fleet = _fleet(session)
            held = set(
                session.scalars(
                    select(RolloutDevice.device_id)
                    .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
                    .where(
                        Rollout.kind == RolloutKind.RELEASE.value,
                        Rollout.state.in_([s.value for s in ACTIVE_STATES]),
                    )
                )
            )
            active_cohorts = [
                CohortSelector.parse(r.cohort)
                for r in _active_rollouts(session, RolloutKind.RELEASE.value)
            ]
            latest = latest_assignments(session)
            wanted: dict[str, CohortDefault] = {}
            for default in sorted(newest.values(), key=lambda d: d.id):
                selector = CohortSelector.parse(default.cohort)
                for device in fleet:
                    if device.id in held or not selector.matches(device.tags, device.hardware):
                        continue
                    if any(s.matches(device.tags, device.hardware) for s in active_cohorts):
                        continue  # a running rollout will take it
                    wanted[device.id] = default  # the newest default wins
            releases: dict[str, Release] = {}
            moves: list[tuple[str, Release]] = []
            for device_id, default in wanted.items():
                current = latest.get(device_id)
                if current is not None and (
                    current.release_id == default.release_id or current.issued_at >= default.set_at
                ):
                    continue
                if default.release_id not in releases:
                    found = session.get(Release, default.release_id)
                    if found is None:  # pragma: no cover - foreign key guarantees it
                        continue
                    releases[default.release_id] = found
                moves.append((device_id, releases[default.release_id]))
            self.director.issue_many(session, moves, issued_by="cohort-default", now=now)
            return len(moves)

        return retrying(self.db, work)


def _no_checkpoint(_step: str) -> None:
    return None


def _wait_lock(session: Session, key: int) -> None:
    """A transaction-scoped advisory lock on PostgreSQL, waited for; SQLite has one writer."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _try_lock(session: Session, key: int) -> bool:
    """A transaction-scoped advisory lock on PostgreSQL; SQLite has one writer anyway."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar())


def _rollback_phrase(back: Counter[str], left: int) -> str:
    parts = [f"rolled back {n} devices to {name}" for name, n in sorted(back.items())]
    if not parts:
        parts = ["no device to roll back"]
    if left:
        parts.append(f"{left} had no earlier release and keep this one")
    return "; ".join(parts)
