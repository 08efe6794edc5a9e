"""``outpost-agent telemetry policy|budget|sent``: the device owner reads the policy in
force and where each setting came from, the epsilon spent and left, and what was sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.store.state_db import StateDB
from edge_agent.telemetry.metrics import AgentMetrics
from edge_agent.telemetry.store import TelemetryStore
from tests.agent_telemetry.helpers import Clock, NoNoise, make_reporter, policy_of

REMOTE = {"telemetry": {"epsilon_per_report": 0.5, "fields": {"prompt_tokens": {"release": False}}}}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    db = StateDB(tmp_path / "state.db")
    db.put("remote_config.applied", json.dumps({"version": 7, "settings": REMOTE}))
    metrics = AgentMetrics()
    metrics.request("vision")
    clock = Clock()
    reporter = make_reporter(
        db,
        clock,
        metrics=metrics,
        mechanism=NoNoise(),
        policy=policy_of(**REMOTE["telemetry"]),
    )
    clock.advance(hours=1)
    first = reporter.close_period()
    assert first is not None
    TelemetryStore(db).settle(first.report.report_id, clock(), "stored")
    clock.advance(hours=1)
    reporter.close_period()  # still queued
    db.close()
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["telemetry", *args]) == 0
    return capsys.readouterr().out


def test_policy_says_where_each_setting_came_from(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _run(capsys, "policy", "--state-dir", str(state_dir))
    assert "policy from: remote_config v7" in text
    assert "epsilon per report 0.5 [remote_config]" in text
    prompt_line = next(line for line in text.splitlines() if line.startswith("prompt_tokens"))
    assert " no " in prompt_line and prompt_line.endswith("remote_config")
    body = json.loads(_run(capsys, "policy", "--state-dir", str(state_dir), "--json"))
    assert body["fields"]["prompt_tokens"]["epsilon_per_report"] is None
    assert body["fields"]["rag_seconds"]["epsilon_per_report"] == pytest.approx(0.5 / 9)
    assert body["sources"]["epsilon_per_report"] == "remote_config"


def test_budget_shows_spent_and_left_from_the_ledger(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = json.loads(_run(capsys, "budget", "--state-dir", str(state_dir), "--json"))
    assert body["lifetime_spent"] == pytest.approx(1.0)  # two reports at 0.5
    assert body["period_left"] == pytest.approx(body["period_cap"] - body["period_spent"])
    text = _run(capsys, "budget", "--state-dir", str(state_dir))
    assert "epsilon lifetime: spent 1 of 25000" in text


def test_sent_shows_every_field_of_every_report(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _run(capsys, "sent", "--state-dir", str(state_dir))
    assert "queued, not sent yet" in text and "(stored)" in text
    assert "prompt_tokens                        withheld: not_in_policy" in text
    assert "vision:1" in text  # the first report's request count, as released
    assert "rss_bytes" in text and "outbox_dropped" in text
    sent = json.loads(_run(capsys, "sent", "--state-dir", str(state_dir), "--json"))
    assert [r["outcome"] for r in sent] == ["queued", "stored"]


def test_a_directory_without_agent_state_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["telemetry", "policy", "--state-dir", str(tmp_path)]) == 2
    assert "no agent state" in capsys.readouterr().err
    assert not (tmp_path / "state.db").exists()
