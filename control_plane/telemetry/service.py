"""Telemetry against the database: ingest (exactly once, rate-limited per device), the
hourly aggregation pass, retention, the signals the rollout gates read, and the read
functions the dashboard and ``/metrics`` plot.

Every estimate here accounts for the privacy noise the devices added (see
:mod:`control_plane.telemetry.estimates`): counts come with their variance and a 95%
interval, quantiles with a bootstrap interval, and nothing is ever negative.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    TooManyRequestsError,
)
from control_plane.rollouts.core import CohortSelector
from control_plane.storage.database import Database, retrying
from control_plane.storage.models import Device, Release, Rollout, RolloutDevice
from control_plane.telemetry.aggregation import Aggregate, hour_of
from control_plane.telemetry.estimates import (
    CountEstimate,
    QuantileEstimate,
    RateEstimate,
    denoised_quantile,
)
from control_plane.telemetry.facts import (
    ERROR_COUNTERS,
    REQUEST_COUNTERS,
    facts_from_json,
    facts_of,
    facts_to_json,
)
from control_plane.telemetry.gates import (
    HISTOGRAM_OF,
    LATENCY_METRICS,
    SIGNALS_KEY,
    MetricComparison,
    RateComparison,
    TelemetrySignals,
    telemetry_gate_specs,
)
from control_plane.telemetry.limits import TelemetryLimits
from control_plane.telemetry.records import TelemetryAggregateRecord, TelemetryReportRecord
from protocol.telemetry import HISTOGRAM_EDGES, TelemetryAck, TelemetryReport

__all__ = [
    "ErrorRatePoint",
    "IngestOutcome",
    "LatencyPoint",
    "PrivacyBudgetRow",
    "TelemetryLimits",
    "TelemetryRateLimitedError",
    "TelemetryService",
    "TelemetrySummary",
    "UsageTotal",
]

log = logging.getLogger("control_plane")
FLEET_COHORT = "*"


class TelemetryRateLimitedError(TooManyRequestsError):
    """A device sent more telemetry reports than its share within the window."""

    error_type = "telemetry_rate_limited"


class IngestOutcome:
    """The outcomes ingest counts (``outpost_cp_telemetry_reports_total{outcome}``)."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    INVALID = "invalid"
    REFUSED = "refused"


# --- what the dashboard reads --------------------------------------------------------


@dataclass(frozen=True)
class LatencyPoint:
    """p50 and p95 of one latency metric in one hour, for one release and device class."""

    hour: datetime
    release_id: str
    device_class: str
    metric: str
    p50: QuantileEstimate
    p95: QuantileEstimate
    reports: int
    devices: int


@dataclass(frozen=True)
class ErrorRatePoint:
    """Errors (server errors and busy answers) per request in one hour."""

    hour: datetime
    release_id: str
    device_class: str
    rate: RateEstimate
    reports: int


@dataclass(frozen=True)
class PrivacyBudgetRow:
    """Epsilon the devices of one class spent over a window, and what they withheld."""

    device_class: str
    reports: int
    devices: int
    epsilon_spent: float
    epsilon_per_report: float
    withheld: Mapping[str, int]


@dataclass(frozen=True)
class UsageTotal:
    """A fleet total of one usage counter (e.g. ``requests.chat``) with its interval."""

    name: str
    estimate: CountEstimate


@dataclass(frozen=True)
class TelemetrySummary:
    reports_stored: int
    reports_pending: int
    aggregate_rows: int
    last_received_at: datetime | None


@dataclass
class TelemetryService:
    db: Database
    limits: TelemetryLimits = field(default_factory=TelemetryLimits)
    counts: Counter[str] = field(default_factory=Counter)  # ingest outcomes, for /metrics

    # --- ingest -------------------------------------------------------------------------

    def ingest(self, signer: str, report: TelemetryReport, now: datetime) -> TelemetryAck:
        """Store ``report`` once (a repeated ``report_id`` answers ``duplicate: true``),
        refuse a report about another device (403), one from the future (422) or one over
        the device's rate (429)."""
        try:
            ack = self._ingest(signer, report, now)
        except TooManyRequestsError:
            self.counts[IngestOutcome.RATE_LIMITED] += 1
            raise
        except InvalidRequestError:
            self.counts[IngestOutcome.INVALID] += 1
            raise
        except (PermissionDeniedError, ConflictError, NotFoundError):
            self.counts[IngestOutcome.REFUSED] += 1
            raise
        self.counts[IngestOutcome.DUPLICATE if ack.duplicate else IngestOutcome.STORED] += 1
        return ack

    def count_invalid(self) -> None:
        """A body that did not parse as a report (counted here, refused by the route)."""
        self.counts[IngestOutcome.INVALID] += 1

    def _ingest(self, signer: str, report: TelemetryReport, now: datetime) -> TelemetryAck:
        if report.device_id != signer:
            raise PermissionDeniedError(
                f"the telemetry report is about device {report.device_id!r} but was signed by"
                f" {signer!r}; a device may only report about itself"
            )
        period_start, period_end = _aware(report.period_start), _aware(report.period_end)
        if period_end > now + self.limits.max_clock_skew:
            raise InvalidRequestError(
                f"telemetry report {report.report_id}: period_end {report.period_end.isoformat()}"
                f" is more than {self.limits.max_clock_skew} ahead of the control plane's clock;"
                " check the device's clock (NTP)"
            )
        facts = facts_to_json(facts_of(report))
        body = report.model_dump(mode="json")
        try:
            with self.db.transaction() as session:
                seen = session.execute(
                    select(TelemetryReportRecord.device_id).where(
                        TelemetryReportRecord.report_id == report.report_id
                    )
                ).first()
                if seen is not None:
                    return self._duplicate(report, seen[0], signer)
                device = session.get(Device, signer)
                if device is None:
                    raise NotFoundError(f"no device with id {signer!r}")
                self._check_rate(session, signer, now)
                session.add(
                    TelemetryReportRecord(
                        report_id=report.report_id,
                        device_id=signer,
                        release_id=report.release_id,
                        device_class=report.device_class,
                        cohort=_cohort_of(session, signer, report.release_id),
                        period_start=period_start,
                        period_end=period_end,
                        received_at=now,
                        aggregated_at=None,
                        facts=facts,
                        body=body,
                    )
                )
                device.last_seen_at = now
                session.flush()
        except IntegrityError:  # the same report twice at once: the other copy was stored
            return TelemetryAck(report_id=report.report_id, duplicate=True)
        return TelemetryAck(report_id=report.report_id, duplicate=False)

    def _duplicate(self, report: TelemetryReport, owner: str, signer: str) -> TelemetryAck:
        if owner != signer:
            raise ConflictError(
                f"telemetry report id {report.report_id} was stored for another device;"
                " report ids are random per report: generate a new one"
            )
        return TelemetryAck(report_id=report.report_id, duplicate=True)

    def _check_rate(self, session: Session, device_id: str, now: datetime) -> None:
        window = self.limits.rate_limit_window
        recent = session.scalar(
            select(func.count())
            .select_from(TelemetryReportRecord)
            .where(
                TelemetryReportRecord.device_id == device_id,
                TelemetryReportRecord.received_at > now - window,
            )
        )
        if (recent or 0) >= self.limits.rate_limit_reports:
            raise TelemetryRateLimitedError(
                f"device {device_id!r} sent {recent} telemetry reports in the last"
                f" {int(window.total_seconds())} s (the limit is"
                f" {self.limits.rate_limit_reports}); keep the report queued and retry"
                " later (see docs/runbooks/cp-telemetry-rate-limited.md)"
            )

    # --- aggregation and retention ----------------------------------------------------

    def aggregate_pending(self, now: datetime, *, batch: int = 2000) -> int:
        """Fold up to ``batch`` not-yet-aggregated reports into their hourly rows, in one
        transaction with marking them (each report is counted exactly once, also with
        several replicas: the pending rows are locked and skipped by the others)."""

        def work(session: Session) -> int:
            rows = session.execute(
                select(
                    TelemetryReportRecord.id,
                    TelemetryReportRecord.device_id,
                    TelemetryReportRecord.release_id,
                    TelemetryReportRecord.cohort,
                    TelemetryReportRecord.device_class,
                    TelemetryReportRecord.period_end,
                    TelemetryReportRecord.facts,
                )
                .where(TelemetryReportRecord.aggregated_at.is_(None))
                .order_by(TelemetryReportRecord.id)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            groups: dict[tuple[str, str, str, datetime], Aggregate] = defaultdict(Aggregate)
            for _id, device_id, release_id, cohort, device_class, period_end, facts in rows:
                key = (release_id or "", cohort, device_class, hour_of(period_end))
                groups[key].add(facts_from_json(facts), device_id)
            for key, aggregate in groups.items():
                self._fold(session, key, aggregate, now)
            ids = [r[0] for r in rows]
            for start in range(0, len(ids), 500):
                session.execute(
                    update(TelemetryReportRecord)
                    .where(TelemetryReportRecord.id.in_(ids[start : start + 500]))
                    .values(aggregated_at=now)
                )
            return len(rows)

        return retrying(self.db, work)

    def _fold(
        self,
        session: Session,
        key: tuple[str, str, str, datetime],
        aggregate: Aggregate,
        now: datetime,
    ) -> None:
        release_id, cohort, device_class, hour = key
        row = session.scalars(
            select(TelemetryAggregateRecord)
            .where(
                TelemetryAggregateRecord.release_id == release_id,
                TelemetryAggregateRecord.cohort == cohort,
                TelemetryAggregateRecord.device_class == device_class,
                TelemetryAggregateRecord.hour == hour,
            )
            .with_for_update()
        ).first()
        release_filter = (
            TelemetryReportRecord.release_id.is_(None)
            if release_id == ""
            else TelemetryReportRecord.release_id == release_id
        )
        devices = session.scalar(
            select(func.count(func.distinct(TelemetryReportRecord.device_id))).where(
                release_filter,
                TelemetryReportRecord.cohort == cohort,
                TelemetryReportRecord.device_class == device_class,
                TelemetryReportRecord.period_end >= hour,
                TelemetryReportRecord.period_end < hour + timedelta(hours=1),
            )
        )
        if row is None:
            session.add(
                TelemetryAggregateRecord(
                    release_id=release_id,
                    cohort=cohort,
                    device_class=device_class,
                    hour=hour,
                    reports=aggregate.reports,
                    devices=int(devices or len(aggregate.devices)),
                    data=aggregate.as_json(),
                    updated_at=now,
                )
            )
            session.flush()  # a concurrent insert of the same key fails here: retried
            return
        stored = Aggregate.from_json(row.data)
        stored.merge(aggregate)
        row.data = stored.as_json()
        row.reports = stored.reports
        row.devices = max(int(devices or 0), row.devices)
        row.updated_at = now

    def prune(self, now: datetime) -> tuple[int, int]:
        """Delete raw reports past their retention (once aggregated) and aggregates past
        theirs; return how many of each."""
        with self.db.transaction() as session:
            raw = session.execute(
                delete(TelemetryReportRecord).where(
                    TelemetryReportRecord.received_at < now - self.limits.raw_retention,
                    TelemetryReportRecord.aggregated_at.is_not(None),
                )
            )
            aggregates = session.execute(
                delete(TelemetryAggregateRecord).where(
                    TelemetryAggregateRecord.hour < now - self.limits.aggregate_retention
                )
            )
        return int(getattr(raw, "rowcount", 0) or 0), int(getattr(aggregates, "rowcount", 0) or 0)

    # --- the rollout gates' signals ---------------------------------------------------

    def rollout_signals(self, session: Session, rollout: Rollout) -> Mapping[str, Any]:
        """What the telemetry gates of ``rollout`` read (``StageCounts.signals``): the
        stage's devices on the new release (reports since each was moved) against the
        previous release on the same cohort (reports since ``baseline_window`` before the
        rollout began). Empty when no telemetry gate is configured."""
        specs = telemetry_gate_specs(rollout.plan.get("gate", {}))
        if not specs or rollout.release_id is None:
            return {}
        candidate = Aggregate()
        candidate_rows = session.execute(
            select(TelemetryReportRecord.device_id, TelemetryReportRecord.facts)
            .join(
                RolloutDevice,
                (RolloutDevice.device_id == TelemetryReportRecord.device_id)
                & (RolloutDevice.rollout_id == rollout.id),
            )
            .where(
                TelemetryReportRecord.release_id == rollout.release_id,
                TelemetryReportRecord.period_end >= RolloutDevice.assigned_at,
            )
        )
        for device_id, facts in candidate_rows:
            candidate.add(facts_from_json(facts), device_id)
        priors = Counter(
            prior
            for (prior,) in session.execute(
                select(RolloutDevice.prior_release_id).where(
                    RolloutDevice.rollout_id == rollout.id,
                    RolloutDevice.prior_release_id.is_not(None),
                )
            )
        )
        baseline_release = priors.most_common(1)[0][0] if priors else None
        baseline = None
        if baseline_release is not None and baseline_release != rollout.release_id:
            baseline = self._cohort_aggregate(
                session,
                CohortSelector.parse(rollout.cohort),
                baseline_release,
                rollout.created_at - self.limits.baseline_window,
            )
        rng = _rng(f"{rollout.id}:{rollout.stage}")
        latency: dict[tuple[str, float], MetricComparison] = {}
        error_rate: RateComparison | None = None
        for spec in specs:
            if spec.get("type") == "error_rate_regression":
                error_rate = RateComparison(
                    candidate=candidate.rate(ERROR_COUNTERS, REQUEST_COUNTERS),
                    baseline=None
                    if baseline is None
                    else baseline.rate(ERROR_COUNTERS, REQUEST_COUNTERS),
                    candidate_devices=len(candidate.devices),
                    candidate_release=_release_label(session, rollout.release_id),
                    baseline_release=None
                    if baseline_release is None
                    else _release_label(session, baseline_release),
                )
                continue
            metric = str(spec.get("metric"))
            q = float(spec.get("quantile", 0.95))
            histogram = HISTOGRAM_OF[metric]
            edges = HISTOGRAM_EDGES[histogram]
            latency[(metric, q)] = MetricComparison(
                candidate=candidate.quantile(histogram, edges, q, rng),
                baseline=None if baseline is None else baseline.quantile(histogram, edges, q, rng),
                candidate_release=_release_label(session, rollout.release_id),
                baseline_release=None
                if baseline_release is None
                else _release_label(session, baseline_release),
            )
        return {SIGNALS_KEY: TelemetrySignals(latency=latency, error_rate=error_rate)}

    def _cohort_aggregate(
        self, session: Session, cohort: CohortSelector, release_id: str, since: datetime
    ) -> Aggregate:
        total = Aggregate()
        rows = session.execute(
            select(
                TelemetryReportRecord.device_id,
                TelemetryReportRecord.facts,
                Device.tags,
                Device.hardware,
            )
            .join(Device, Device.id == TelemetryReportRecord.device_id)
            .where(
                TelemetryReportRecord.release_id == release_id,
                TelemetryReportRecord.period_end >= since,
            )
        )
        for device_id, facts, tags, hardware in rows:
            if cohort.matches(tags, hardware):
                total.add(facts_from_json(facts), device_id)
        return total

    # --- what the dashboard and /metrics read -----------------------------------------

    def _hourly(
        self,
        session: Session,
        *,
        since: datetime,
        until: datetime,
        release_id: str | None = None,
        device_class: str | None = None,
    ) -> dict[tuple[datetime, str, str], tuple[Aggregate, int]]:
        query = select(TelemetryAggregateRecord).where(
            TelemetryAggregateRecord.hour >= hour_of(since),
            TelemetryAggregateRecord.hour <= until,
        )
        if release_id is not None:
            query = query.where(TelemetryAggregateRecord.release_id == release_id)
        if device_class is not None:
            query = query.where(TelemetryAggregateRecord.device_class == device_class)
        out: dict[tuple[datetime, str, str], tuple[Aggregate, int]] = {}
        for row in session.scalars(query.order_by(TelemetryAggregateRecord.hour)):
            key = (row.hour, row.release_id, row.device_class)
            aggregate, devices = out.get(key, (Aggregate(), 0))
            aggregate.merge(Aggregate.from_json(row.data))
            out[key] = (aggregate, devices + row.devices)
        return out

    def latency_series(
        self,
        metric: str,
        *,
        since: datetime,
        until: datetime,
        release_id: str | None = None,
        device_class: str | None = None,
    ) -> list[LatencyPoint]:
        """p50/p95 with 95% intervals of ``metric`` (a key of ``LATENCY_METRICS``: chat_ttft,
        chat_time_per_token, completion, embedding, vision, rag) per hour x release x device
        class, oldest first; hours without that metric are left out."""
        if metric not in HISTOGRAM_OF:
            raise InvalidRequestError(
                f"metric {metric!r} is not one of {', '.join(sorted(LATENCY_METRICS))}"
            )
        histogram = HISTOGRAM_OF[metric]
        edges = HISTOGRAM_EDGES[histogram]
        with self.db.transaction() as session:
            hourly = self._hourly(
                session, since=since, until=until, release_id=release_id, device_class=device_class
            )
        points = []
        for (hour, release, klass), (aggregate, devices) in hourly.items():
            if histogram not in aggregate.histograms:
                continue
            rng = _rng(f"{hour.isoformat()}:{release}:{klass}:{metric}")
            points.append(
                LatencyPoint(
                    hour=hour,
                    release_id=release,
                    device_class=klass,
                    metric=metric,
                    p50=aggregate.quantile(histogram, edges, 0.5, rng, devices=devices),
                    p95=aggregate.quantile(histogram, edges, 0.95, rng, devices=devices),
                    reports=aggregate.reports,
                    devices=devices,
                )
            )
        return points

    def error_rates(
        self,
        *,
        since: datetime,
        until: datetime,
        release_id: str | None = None,
        device_class: str | None = None,
    ) -> list[ErrorRatePoint]:
        """Errors per request (server errors and busy answers, over all features) per hour x
        release x device class, with a 95% interval."""
        with self.db.transaction() as session:
            hourly = self._hourly(
                session, since=since, until=until, release_id=release_id, device_class=device_class
            )
        return [
            ErrorRatePoint(
                hour=hour,
                release_id=release,
                device_class=klass,
                rate=aggregate.rate(ERROR_COUNTERS, REQUEST_COUNTERS),
                reports=aggregate.reports,
            )
            for (hour, release, klass), (aggregate, _devices) in hourly.items()
        ]

    def usage_totals(
        self,
        *,
        since: datetime,
        until: datetime,
        release_id: str | None = None,
        device_class: str | None = None,
    ) -> list[UsageTotal]:
        """Every counter summed over the window (requests per feature, errors per class,
        RAG abstentions, restarts, crashes, ...) with its 95% interval."""
        with self.db.transaction() as session:
            hourly = self._hourly(
                session, since=since, until=until, release_id=release_id, device_class=device_class
            )
        total = Aggregate.of(a for a, _ in hourly.values())
        return [UsageTotal(name, total.count(name)) for name in sorted(total.counters)]

    def privacy_budget(self, *, since: datetime, until: datetime) -> list[PrivacyBudgetRow]:
        """Epsilon spent per device class over the window (the sum of what every report
        charged), the distinct devices behind it, and the fields withheld."""
        with self.db.transaction() as session:
            hourly = self._hourly(session, since=since, until=until)
            devices = dict(
                session.execute(
                    select(
                        TelemetryReportRecord.device_class,
                        func.count(func.distinct(TelemetryReportRecord.device_id)),
                    )
                    .where(
                        TelemetryReportRecord.period_end >= since,
                        TelemetryReportRecord.period_end <= until,
                    )
                    .group_by(TelemetryReportRecord.device_class)
                ).all()
            )
        by_class: dict[str, Aggregate] = defaultdict(Aggregate)
        for (_hour, _release, klass), (aggregate, _n) in hourly.items():
            by_class[klass].merge(aggregate)
        return [
            PrivacyBudgetRow(
                device_class=klass,
                reports=aggregate.reports,
                devices=int(devices.get(klass, 0)),
                epsilon_spent=aggregate.epsilon,
                epsilon_per_report=aggregate.epsilon / aggregate.reports
                if aggregate.reports
                else 0.0,
                withheld=dict(aggregate.withheld),
            )
            for klass, aggregate in sorted(by_class.items())
        ]

    def summary(self) -> TelemetrySummary:
        with self.db.transaction() as session:
            stored = session.scalar(select(func.count()).select_from(TelemetryReportRecord))
            pending = session.scalar(
                select(func.count())
                .select_from(TelemetryReportRecord)
                .where(TelemetryReportRecord.aggregated_at.is_(None))
            )
            rows = session.scalar(select(func.count()).select_from(TelemetryAggregateRecord))
            last = session.scalar(select(func.max(TelemetryReportRecord.received_at)))
        return TelemetrySummary(int(stored or 0), int(pending or 0), int(rows or 0), last)

    def recent_quantiles(
        self, now: datetime, *, window: timedelta = timedelta(hours=1), q: float = 0.95
    ) -> list[tuple[str, str, str, float]]:
        """(metric, release, device class, seconds) of the ``q`` quantile over the last
        ``window`` of aggregates, point estimates only (what ``/metrics`` exports)."""
        with self.db.transaction() as session:
            hourly = self._hourly(session, since=now - window, until=now)
        merged: dict[tuple[str, str], Aggregate] = defaultdict(Aggregate)
        for (_hour, release, klass), (aggregate, _n) in hourly.items():
            merged[(release, klass)].merge(aggregate)
        out = []
        for (release, klass), aggregate in sorted(merged.items()):
            for metric, histogram in HISTOGRAM_OF.items():
                hist = aggregate.histograms.get(histogram)
                if hist is None:
                    continue
                edges = HISTOGRAM_EDGES[histogram]
                value = denoised_quantile(hist[0], hist[1], edges, q)
                if value is not None:
                    out.append((metric, release, klass, value))
        return out


def _aware(moment: datetime) -> datetime:
    """A report's time as UTC (a time without an offset is taken as UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _rng(key: str) -> np.random.Generator:
    """A generator seeded by what is estimated, so the same data gives the same interval
    on every pass and every replica."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def _cohort_of(session: Session, device_id: str, release_id: str | None) -> str:
    """The cohort a report is aggregated under: that of the newest rollout that moved the
    device to the release it reports from, else the whole fleet (``*``)."""
    if release_id is None:
        return FLEET_COHORT
    cohort = session.scalar(
        select(Rollout.cohort)
        .join(RolloutDevice, RolloutDevice.rollout_id == Rollout.id)
        .where(RolloutDevice.device_id == device_id, Rollout.release_id == release_id)
        .order_by(RolloutDevice.assigned_at.desc())
        .limit(1)
    )
    return cohort or FLEET_COHORT


def _release_label(session: Session, release_id: str) -> str:
    release = session.get(Release, release_id)
    return release_id if release is None else f"{release.name}@{release.version}"
