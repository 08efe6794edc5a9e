"""Thirty simulated days without a link (clock passed in): the outbox stays within its
bounds, the oldest reports are dropped and the drops are counted, and when the link
returns the rest arrive exactly once, even when an acknowledgement is lost."""

from __future__ import annotations

from pathlib import Path

import httpx

from edge_agent.telemetry.metrics import AgentMetrics
from edge_agent.telemetry.store import OutboxLimits, TelemetryStore
from edge_agent.uplink import ControlPlaneClient, new_http_client
from edge_agent.uplink.telemetry_sender import Delivery, deliver_telemetry
from protocol import generate_key_pair
from protocol.telemetry import MAX_TELEMETRY_REPORT_BYTES
from tests.agent_telemetry.helpers import Clock, make_reporter, open_db, policy_of
from tests.agent_updates.simulator import BASE_URL, ControlPlaneSimulator

DEVICE = "dev-offline"
PERIOD_HOURS = 4
DAYS = 30
MAX_REPORTS = 40


def test_a_month_offline_keeps_the_newest_reports_and_counts_the_rest(tmp_path: Path) -> None:
    sim = ControlPlaneSimulator()
    key = generate_key_pair()
    sim.devices[DEVICE] = key.public
    client = ControlPlaneClient(
        new_http_client(BASE_URL, transport=sim.transport), device_id=DEVICE, device_key=key
    )
    db, clock, metrics = open_db(tmp_path), Clock(), AgentMetrics()
    limits = OutboxLimits(MAX_REPORTS, 16 * MAX_TELEMETRY_REPORT_BYTES)
    reporter = make_reporter(
        db,
        clock,
        metrics=metrics,
        limits=limits,
        device_id=DEVICE,
        policy=policy_of(interval_seconds=PERIOD_HOURS * 3600.0),
    )
    store = TelemetryStore(db)

    def deliver() -> Delivery:
        return deliver_telemetry(store, client.send_telemetry, clock)

    sim.online = False
    built = 0
    for _ in range(DAYS * 24 // PERIOD_HOURS):
        metrics.request("chat")
        clock.advance(hours=PERIOD_HOURS)
        reporter.tick(deliver)  # due: builds a report; delivery fails and backs off
        built += 1
        reports, size = store.outbox_size()
        assert reports <= MAX_REPORTS and size <= limits.max_bytes
    assert reporter.last_error is not None and "not reachable" in reporter.last_error
    assert store.outbox_size()[0] == MAX_REPORTS
    assert not sim.telemetry

    # the link returns; the first answer is lost after the report was stored
    sim.online = True
    sim.drop_telemetry_acks = True
    first = deliver_telemetry(store, client.send_telemetry, clock)
    assert first.error is not None and first.stored == 0
    sim.drop_telemetry_acks = False
    again = deliver_telemetry(store, client.send_telemetry, clock)
    assert (again.duplicates, again.stored, again.error) == (1, MAX_REPORTS - 1, None)
    clock.advance(hours=PERIOD_HOURS)
    reporter.tick(deliver)  # one more report (it carries the last drops), then delivery
    built += 1
    assert store.outbox_size() == (0, 0)

    received = sorted(sim.telemetry.values(), key=lambda r: r.sequence)
    assert len(received) == MAX_REPORTS + 1
    # exactly once: the re-sent report is stored once; the device saw it as a duplicate
    assert len(sim.telemetry_bodies) == len(received) + 1
    outcomes = [r.outcome for r in store.history(limit=100)]
    assert outcomes.count("duplicate") == 1 and outcomes.count("stored") == MAX_REPORTS
    # the newest survived, in order, and every dropped report is counted exactly once
    assert received[-1].sequence == built
    sequences = [r.sequence for r in received]
    assert sequences == sorted(set(sequences))
    dropped = built - len(received)
    assert dropped == built - (MAX_REPORTS + 1) > 0
    assert sum(r.outbox_dropped for r in received) == dropped
    assert store.dropped_total() == dropped
    # and each period's count made it into its own report
    assert all(r.usage.get("requests_by_feature").status == "released" for r in received)


def test_a_report_the_control_plane_refuses_for_good_is_not_retried(tmp_path: Path) -> None:
    sim = ControlPlaneSimulator()
    key = generate_key_pair()
    sim.devices[DEVICE] = key.public
    db, clock = open_db(tmp_path), Clock()
    reporter = make_reporter(db, clock, device_id="someone-else")  # the CP answers 422
    clock.advance(hours=1)
    reporter.close_period()
    client = ControlPlaneClient(
        new_http_client(BASE_URL, transport=sim.transport), device_id=DEVICE, device_key=key
    )
    store = TelemetryStore(db)
    outcome = deliver_telemetry(store, client.send_telemetry, clock)
    assert (outcome.rejected, outcome.error) == (1, None)
    assert store.outbox_size() == (0, 0)
    assert store.history()[0].outcome.startswith("rejected: ")
    assert isinstance(sim.transport, httpx.MockTransport)
