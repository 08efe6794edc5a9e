"""Install-status reports: queued in the state DB, delivered when the link allows.

Delivery is at-least-once from the device; each report carries a ``report_id`` that the
control plane dedupes, so every report takes effect exactly once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import ValidationError

from edge_agent.errors import TransportError
from edge_agent.store import StateDB
from edge_agent.uplink.client import RequestRejectedError
from protocol import AcceptanceResult, InstallState, StatusReport, StatusReportAck

log = logging.getLogger(__name__)

_POISON_STATUSES = frozenset({400, 409, 413, 422})


class StatusOutbox:
    """A bounded queue of :class:`protocol.StatusReport` in the agent's state DB."""

    def __init__(
        self,
        db: StateDB,
        *,
        device_id: str,
        clock: Callable[[], datetime] | None = None,
        max_pending: int = 1000,
    ) -> None:
        self._db = db
        self._device_id = device_id
        self._clock = clock or (lambda: datetime.now(UTC))
        self._max_pending = max_pending

    def record(
        self,
        state: InstallState,
        *,
        assignment_version: int | None = None,
        release_id: str | None = None,
        detail: str = "",
        serving_release_id: str | None = None,
        acceptance: AcceptanceResult | None = None,
    ) -> StatusReport:
        """Queue a report now; it is sent by the next :meth:`deliver`.

        ``serving_release_id``: the release the device serves after this step (set it
        whenever that is not ``release_id``, as on ``rolled_back``)."""
        now = self._clock()
        report = StatusReport(
            report_id=uuid.uuid4().hex,
            device_id=self._device_id,
            assignment_version=assignment_version,
            release_id=release_id,
            state=state,
            detail=detail[:2000],
            at=now,
            serving_release_id=serving_release_id,
            acceptance=acceptance,
        )
        dropped = self._db.enqueue_report(
            report.report_id, report.model_dump_json(), now, max_pending=self._max_pending
        )
        if dropped:
            log.warning("status outbox full: dropped %d oldest undelivered report(s)", dropped)
        return report

    def pending(self) -> int:
        return self._db.pending_report_count()

    def deliver(self, send: Callable[[StatusReport], StatusReportAck], *, batch: int = 50) -> int:
        """Send queued reports oldest first until done or the link fails; return how many."""
        delivered = 0
        for queued in self._db.pending_reports(batch):
            try:
                report = StatusReport.model_validate_json(queued.body)
            except ValidationError:
                log.error("dropping unreadable queued report %s", queued.report_id)
                self._db.mark_delivered(queued.report_id, self._clock())
                continue
            try:
                send(report)
            except RequestRejectedError as e:
                if e.status_code not in _POISON_STATUSES:
                    raise
                log.error("control plane rejected report %s for good: %s", report.report_id, e)
            except TransportError:
                raise
            self._db.mark_delivered(report.report_id, self._clock())
            delivered += 1
        return delivered
