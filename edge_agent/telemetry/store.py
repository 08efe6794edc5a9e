"""The telemetry tables of the state database: the epsilon ledger and the outbox.

:meth:`TelemetryStore.queue` is the one place a report comes to exist: in a single
SQLite transaction it reads the ledger's sums, builds the report (noise drawn), appends
its charge to the ledger, queues it in the outbox and drops the oldest queued reports
beyond the outbox's bounds. A crash anywhere inside leaves neither charge nor report; a
report can never be queued (or sent) without its charge. The ledger is append-only
(triggers refuse UPDATE and DELETE).

Delivered reports move to a bounded sent history (``telemetry sent`` shows it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from edge_agent.store.state_db import StateDB
from edge_agent.telemetry.ledger import BudgetWindow, Spent
from protocol import InstallState, StatusReport
from protocol.telemetry import MAX_TELEMETRY_REPORT_BYTES, TelemetryReport

__all__ = [
    "LedgerView",
    "OutboxLimits",
    "QueuedTelemetry",
    "SentRecord",
    "TelemetryStore",
]

SENT_HISTORY = 500  # delivered reports kept for the device owner to read
CHARGED_CHECKPOINT = "telemetry-charged"  # fault-injection point: charged, not yet queued

_DROPPED = "telemetry.dropped_unreported"
_DROPPED_TOTAL = "telemetry.dropped_total"
_SEQUENCE = "telemetry.sequence"
_RESTARTS = "telemetry.restarts_unreported"
_CRASHES = "telemetry.crashes_unreported"
_RUNNING = "telemetry.running"
_FAILED_STATES = (InstallState.FAILED.value, InstallState.ROLLED_BACK.value)


@dataclass(frozen=True)
class OutboxLimits:
    """Bounds of the queue of undelivered reports; the oldest go first."""

    max_reports: int
    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_reports < 1 or self.max_bytes < MAX_TELEMETRY_REPORT_BYTES:
            raise ValueError(
                f"the telemetry outbox holds at least 1 report and {MAX_TELEMETRY_REPORT_BYTES}"
                " bytes (one report of the largest size)"
            )


@dataclass(frozen=True)
class LedgerView:
    """What the report builder reads, inside the queuing transaction."""

    spent: Spent
    sequence: int  # this report's
    dropped: int  # reports dropped since the last report was built
    restarts: int  # agent starts since then
    crashes: int  # of them after an unclean stop
    install_state: InstallState | None
    install_failures: int  # since the period began


@dataclass(frozen=True)
class QueuedTelemetry:
    report: TelemetryReport
    dropped_now: int  # older reports this one pushed out of the outbox


@dataclass(frozen=True)
class SentRecord:
    report_id: str
    body: str
    queued_at: str
    sent_at: str | None  # None: still queued
    outcome: str  # stored | duplicate | rejected: <why> | queued


def _kv_int(c: sqlite3.Connection, key: str) -> int:
    row = c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def _kv_set(c: sqlite3.Connection, key: str, value: int) -> None:
    c.execute(
        "INSERT INTO kv(key, value) VALUES(?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )


class TelemetryStore:
    """Typed access to the telemetry tables of one :class:`StateDB`."""

    def __init__(self, db: StateDB, *, checkpoint: Callable[[str], None] | None = None) -> None:
        self._db = db
        self._checkpoint = checkpoint or (lambda _step: None)

    # --- the ledger -----------------------------------------------------------------

    @staticmethod
    def _spent(c: sqlite3.Connection, window: BudgetWindow) -> Spent:
        period = c.execute(
            "SELECT COALESCE(SUM(epsilon), 0) FROM telemetry_ledger WHERE period_start = ?",
            (window.key,),
        ).fetchone()[0]
        lifetime = c.execute("SELECT COALESCE(SUM(epsilon), 0) FROM telemetry_ledger").fetchone()[0]
        return Spent(period=float(period), lifetime=float(lifetime))

    def spent(self, window: BudgetWindow) -> Spent:
        with self._db.reading() as c:
            return self._spent(c, window)

    def ledger_entries(self, limit: int = 50) -> list[tuple[str, str, str, float]]:
        """The latest charges: (report id, charged at, budget period start, epsilon)."""
        with self._db.reading() as c:
            rows = c.execute(
                "SELECT report_id, charged_at, period_start, epsilon FROM telemetry_ledger"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    # --- queuing a report -------------------------------------------------------------

    def queue(
        self,
        build: Callable[[LedgerView], TelemetryReport],
        *,
        window: BudgetWindow,
        period_start: datetime,
        now: datetime,
        limits: OutboxLimits,
    ) -> QueuedTelemetry:
        """Build, charge and queue one report atomically (see the module docstring)."""
        with self._db.transaction() as c:
            view = LedgerView(
                spent=self._spent(c, window),
                sequence=_kv_int(c, _SEQUENCE) + 1,
                dropped=_kv_int(c, _DROPPED),
                restarts=_kv_int(c, _RESTARTS),
                crashes=_kv_int(c, _CRASHES),
                install_state=self._last_install_state(c),
                install_failures=self._install_failures(c, period_start),
            )
            report = build(view)
            body = report.model_dump_json()
            if report.privacy.epsilon_charged > 0:
                c.execute(
                    "INSERT INTO telemetry_ledger(report_id, charged_at, period_start, epsilon,"
                    " policy_digest) VALUES(?, ?, ?, ?, ?)",
                    (
                        report.report_id,
                        now.isoformat(),
                        window.key,
                        report.privacy.epsilon_charged,
                        report.policy.digest,
                    ),
                )
            self._checkpoint(CHARGED_CHECKPOINT)
            c.execute(
                "INSERT INTO telemetry_outbox(report_id, body, size, carried_drops, queued_at)"
                " VALUES(?, ?, ?, ?, ?)",
                (
                    report.report_id,
                    body,
                    len(body.encode()),
                    report.outbox_dropped,
                    now.isoformat(),
                ),
            )
            dropped_now, carried = self._enforce(c, limits)
            _kv_set(c, _SEQUENCE, view.sequence)
            # drops of reports that themselves carried a drop count are counted again
            _kv_set(c, _DROPPED, dropped_now + carried)
            _kv_set(c, _DROPPED_TOTAL, _kv_int(c, _DROPPED_TOTAL) + dropped_now)
            _kv_set(c, _RESTARTS, 0)
            _kv_set(c, _CRASHES, 0)
        return QueuedTelemetry(report, dropped_now)

    @staticmethod
    def _enforce(c: sqlite3.Connection, limits: OutboxLimits) -> tuple[int, int]:
        """Drop the oldest queued reports beyond the bounds (never the newest)."""
        rows = c.execute(
            "SELECT seq, size, carried_drops FROM telemetry_outbox ORDER BY seq DESC"
        ).fetchall()
        kept_bytes = 0
        drop: list[tuple[int, int]] = []
        for i, (seq, size, carried) in enumerate(rows):
            kept_bytes += int(size)
            if i > 0 and (i >= limits.max_reports or kept_bytes > limits.max_bytes):
                drop.append((int(seq), int(carried)))
        for seq, _ in drop:
            c.execute("DELETE FROM telemetry_outbox WHERE seq = ?", (seq,))
        return len(drop), sum(carried for _, carried in drop)

    @staticmethod
    def _last_install_state(c: sqlite3.Connection) -> InstallState | None:
        row = c.execute("SELECT body FROM outbox ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return None
        try:
            return StatusReport.model_validate_json(row[0]).state
        except ValidationError:
            return None

    @staticmethod
    def _install_failures(c: sqlite3.Connection, since: datetime) -> int:
        rows = c.execute(
            "SELECT body FROM outbox WHERE queued_at >= ?", (since.isoformat(),)
        ).fetchall()
        failures = 0
        for (body,) in rows:
            try:
                if StatusReport.model_validate_json(body).state.value in _FAILED_STATES:
                    failures += 1
            except ValidationError:
                continue
        return failures

    # --- delivery ------------------------------------------------------------------------

    def pending(self, limit: int) -> list[tuple[str, str]]:
        """Queued reports, oldest first: (report id, body as queued)."""
        with self._db.reading() as c:
            rows = c.execute(
                "SELECT report_id, body FROM telemetry_outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def settle(self, report_id: str, now: datetime, outcome: str) -> None:
        """The control plane answered for ``report_id``: move it to the sent history."""
        with self._db.transaction() as c:
            row = c.execute(
                "SELECT body, queued_at FROM telemetry_outbox WHERE report_id = ?", (report_id,)
            ).fetchone()
            if row is None:
                return
            c.execute("DELETE FROM telemetry_outbox WHERE report_id = ?", (report_id,))
            c.execute(
                "INSERT OR IGNORE INTO telemetry_sent(report_id, body, queued_at, sent_at,"
                " outcome) VALUES(?, ?, ?, ?, ?)",
                (report_id, row[0], row[1], now.isoformat(), outcome[:300]),
            )
            c.execute(
                "DELETE FROM telemetry_sent WHERE seq NOT IN"
                " (SELECT seq FROM telemetry_sent ORDER BY seq DESC LIMIT ?)",
                (SENT_HISTORY,),
            )

    def history(self, limit: int = 20) -> list[SentRecord]:
        """The latest reports, newest first: queued ones, then delivered ones."""
        with self._db.reading() as c:
            queued = c.execute(
                "SELECT report_id, body, queued_at FROM telemetry_outbox ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            sent = c.execute(
                "SELECT report_id, body, queued_at, sent_at, outcome FROM telemetry_sent"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        records = [SentRecord(str(r[0]), str(r[1]), str(r[2]), None, "queued") for r in queued]
        records += [SentRecord(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in sent]
        return records[:limit]

    def outbox_size(self) -> tuple[int, int]:
        """(queued reports, their bytes)."""
        with self._db.reading() as c:
            row = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM telemetry_outbox"
            ).fetchone()
        return int(row[0]), int(row[1])

    def dropped_total(self) -> int:
        with self._db.reading() as c:
            return _kv_int(c, _DROPPED_TOTAL)

    # --- restarts and crashes ------------------------------------------------------------

    def note_start(self) -> bool:
        """Count an agent start; True if the previous run did not stop cleanly."""
        with self._db.transaction() as c:
            crashed = _kv_int(c, _RUNNING) == 1
            _kv_set(c, _RESTARTS, _kv_int(c, _RESTARTS) + 1)
            if crashed:
                _kv_set(c, _CRASHES, _kv_int(c, _CRASHES) + 1)
            _kv_set(c, _RUNNING, 1)
        return crashed

    def note_clean_stop(self) -> None:
        with self._db.transaction() as c:
            _kv_set(c, _RUNNING, 0)
