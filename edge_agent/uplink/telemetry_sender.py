"""Delivering the telemetry outbox to the control plane, oldest report first.

At-least-once from the device, exactly-once in effect: a report leaves the outbox only
when the control plane has answered for its ``report_id`` (stored, or a duplicate of one
already stored). A refusal that retrying cannot fix (400/409/413/422) moves the report to
the sent history as rejected, with one log line; anything else (unreachable, 5xx, 401,
429) stops this round and the report waits for the next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from edge_agent.errors import TransportError
from edge_agent.telemetry.store import TelemetryStore
from edge_agent.uplink.client import RequestRejectedError
from protocol.telemetry import TelemetryAck

__all__ = ["Delivery", "deliver_telemetry"]

log = logging.getLogger(__name__)

_FOR_GOOD = frozenset({400, 409, 413, 422})


@dataclass(frozen=True)
class Delivery:
    stored: int
    duplicates: int
    rejected: int
    error: str | None  # why the round stopped early (the rest waits), None when drained


def deliver_telemetry(
    store: TelemetryStore,
    send: Callable[[bytes], TelemetryAck],
    clock: Callable[[], datetime],
    *,
    batch: int = 50,
) -> Delivery:
    """Send queued reports until the outbox is empty, ``batch`` are sent, or the link
    fails."""
    stored = duplicates = rejected = 0
    for report_id, body in store.pending(batch):
        try:
            ack = send(body.encode())
        except RequestRejectedError as e:
            if e.status_code not in _FOR_GOOD:
                return Delivery(stored, duplicates, rejected, str(e))
            log.error("the control plane refused telemetry report %s for good: %s", report_id, e)
            store.settle(report_id, clock(), f"rejected: {e}")
            rejected += 1
            continue
        except TransportError as e:
            return Delivery(stored, duplicates, rejected, str(e))
        if ack.report_id != report_id:
            return Delivery(
                stored,
                duplicates,
                rejected,
                f"the control plane acknowledged {ack.report_id!r} for report {report_id!r}",
            )
        store.settle(report_id, clock(), "duplicate" if ack.duplicate else "stored")
        if ack.duplicate:
            duplicates += 1
        else:
            stored += 1
    return Delivery(stored, duplicates, rejected, None)
