"""A rollout halted by the p95 latency gate (telemetry from signed reports, the rollout
engine in process): its page shows both p95s with their intervals, as the gate stored
them."""

from __future__ import annotations

import re

import pytest

from tests.dashboard.conftest import signed_in_client
from tests.rollouts.conftest import Fleet
from tests.telemetry_cp.test_gate_rollout import _on, _send, _start, gated

__all__ = ["gated"]  # the fixture: a fleet on 1.0.0 with 1.1.0 published


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_p95_gate_decision_shows_both_numbers_and_intervals(
    gated: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout = _start(gated, monkeypatch)
    _send(_on(gated, "1.1.0"), gated.releases["1.1.0"]["id"], 0.60, seed=2)  # twice as slow
    gated.tick()
    shown = gated.show(rollout["id"])
    assert shown["state"] == "halted", shown["reason"]
    halted = next(e for e in shown["events"] if e["kind"] == "halted")
    gate = next(g for g in halted["numbers"]["numbers"]["gates"] if g["gate"].startswith("chat"))
    page = signed_in_client(gated.cp, "viewer").get(f"/dashboard/rollouts/{rollout['id']}").text
    row = re.search(rf"<td>{gate['gate']}</td>(.*?)</tr>", page, re.S)
    assert row, page
    assert 'class="badge verdict-halt">halt</span>' in row.group(1)
    assert "more than the allowed +20%" in row.group(1)
    for side in ("candidate", "baseline"):
        for key in (f"{side}_seconds", f"{side}_low_seconds", f"{side}_high_seconds"):
            value = f"{gate['numbers'][key]:.4g}"
            assert f'<span class="key">{key}</span> {value}</span>' in row.group(1), key
    assert f'<span class="key">regression</span> {gate["numbers"]["regression"]:.4g}' in page
