"""A real agent reports telemetry to a real control plane (SQLite and PostgreSQL): every
report the agent delivered is stored exactly once, in sequence, a kill -9 is counted as a
crash in the next report, and a re-sent report is answered as a duplicate."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.store import load_device_key
from edge_agent.uplink import ControlPlaneClient, new_http_client
from tests.e2e.conftest import (  # noqa: F401 # fixtures, by name
    Agent,
    ControlPlane,
    control_plane,
    fresh_postgres_database,
    smollm2_artifact,
    wait_until,
)
from tests.requirements import LLAMA, require_installed

pytestmark = pytest.mark.slow


def _stored(cp: ControlPlane, device_id: str) -> list[str]:
    rows = cp.query(
        "SELECT report_id FROM telemetry_reports WHERE device_id = :device_id",
        device_id=device_id,
    )
    return [str(r[0]) for r in rows]


def _sent(agent: Agent) -> list[dict[str, Any]]:
    db = sqlite3.connect(agent.state_dir / "state.db")
    try:
        rows = db.execute("SELECT body, outcome FROM telemetry_sent ORDER BY seq").fetchall()
    finally:
        db.close()
    return [{**json.loads(body), "outcome": outcome} for body, outcome in rows]


@pytest.fixture
def reporting(
    control_plane: ControlPlane,  # noqa: F811 # the fixture imported above
    smollm2_artifact: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> Iterator[Agent]:
    require_installed(*LLAMA)
    if control_plane.process is None:
        control_plane.start()
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"telemetry": {"interval_seconds": 10}}))
    bundle = control_plane.upload(policy, name="policy", kind="policy", fmt="json")
    release_id = control_plane.release(
        "telemetry-e2e", tmp_path.name[-12:], [smollm2_artifact["id"], bundle["id"]]
    )
    agent = Agent(control_plane, tmp_path / "device")
    agent.start()
    agent.wait_installed(control_plane.assign(agent.device_id, release_id), timeout=180)
    try:
        yield agent
    finally:
        if agent.process is not None:
            agent.kill_9()


def test_reports_are_stored_once_in_order_and_a_crash_is_counted(
    control_plane: ControlPlane,  # noqa: F811
    reporting: Agent,
) -> None:
    agent = reporting
    wait_until(
        lambda: len(_stored(control_plane, agent.device_id)) >= 1,
        timeout=90,
        what="a telemetry report stored by the control plane",
    )
    agent.kill_9()
    agent.start()
    after_crash = wait_until(
        lambda: [r for r in _sent(agent) if r["operational"]["crashes"] == 1],
        timeout=90,
        what="a report counting the crash",
    )
    agent.terminate()

    sent = _sent(agent)
    stored = _stored(control_plane, agent.device_id)
    assert sorted(stored) == sorted(r["report_id"] for r in sent)  # every one, once each
    assert len(set(stored)) == len(stored)
    assert all(r["outcome"] == "stored" for r in sent)
    assert [r["sequence"] for r in sent] == list(range(1, len(sent) + 1))
    assert after_crash[0]["operational"]["restarts"] == 1
    assert after_crash[0]["release_id"] is not None

    # the same report again (a lost answer, retried): the control plane says duplicate
    client = ControlPlaneClient(
        new_http_client(control_plane.url),
        device_id=agent.device_id,
        device_key=load_device_key(agent.state_dir),
    )
    first = json.dumps({k: v for k, v in sent[0].items() if k != "outcome"}).encode()
    ack = client.send_telemetry(first)
    assert ack.duplicate and ack.report_id == sent[0]["report_id"]
    assert len(_stored(control_plane, agent.device_id)) == len(stored)
