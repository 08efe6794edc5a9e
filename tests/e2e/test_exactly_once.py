"""Exactly-once status reports, with an acknowledgement really lost: a real agent reaches a
real control plane through a loopback proxy that lets the control plane store a report and
withholds its answer; the agent is killed (-9) while it waits, between the POST and marking
the report delivered. The restarted agent sends the report again; the control plane keeps
one row per report."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Agent, ControlPlane, stop_agent, wait_until
from tests.e2e.proxy import AckLosingProxy

pytestmark = pytest.mark.slow


def undelivered_report_ids(agent: Agent) -> list[str]:
    """Reports the agent's outbox still has to deliver (read from its state database)."""
    db = sqlite3.connect(agent.state_dir / "state.db")
    try:
        rows = db.execute("SELECT report_id FROM outbox WHERE delivered_at IS NULL ORDER BY seq")
        return [str(r[0]) for r in rows]
    finally:
        db.close()


def test_a_report_whose_ack_was_lost_to_a_kill_takes_effect_once(
    control_plane: ControlPlane, smollm2_artifact: dict[str, Any], tmp_path: Path
) -> None:
    release = control_plane.release("exactly-once", "1.0.0", [smollm2_artifact["id"]])
    with AckLosingProxy(control_plane.url) as proxy:
        agent = Agent(control_plane, tmp_path / "state", server_url=proxy.url)
        try:
            proxy.hold_status_ack(lambda report: report["state"] == "verified")
            agent.start()
            version = control_plane.assign(agent.device_id, release)
            held = proxy.wait_held(timeout=120)["report_id"]
            assert control_plane.stored_report_ids(agent.device_id).count(held) == 1
            agent.kill_9()  # the control plane has the report; the device never heard so
            assert held in undelivered_report_ids(agent)

            agent.start()
            agent.wait_installed(version, timeout=120)
            wait_until(
                lambda: undelivered_report_ids(agent) == [],
                timeout=60,
                what="the restarted agent to deliver its queued reports",
            )
            assert (control_plane.device(agent.device_id)["last_status"] or {})[
                "state"
            ] == "committed"
        finally:
            stop_agent(agent)
    assert proxy.status_posts.count(held) >= 2, "the report was not sent again"
    stored = control_plane.stored_report_ids(agent.device_id)
    assert stored.count(held) == 1, "the re-sent report took effect twice"
    assert len(stored) == len(set(stored))
    assert sorted(stored) == sorted(agent.queued_report_ids())  # every report, exactly once
