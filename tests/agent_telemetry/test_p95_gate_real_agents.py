"""Real agents, real control plane: a rollout of a deliberately slower release halts on the
p95 gate at its first stage, judged on the telemetry the agents sent themselves.

Two real agents (``python -m edge_agent run``, the real SmolLM2 in llama.cpp) run
release 1.0.0 of a real ``python -m control_plane serve`` (SQLite and PostgreSQL). Chat
traffic goes to each agent's local API through the official ``openai`` client. Release
2.0.0 differs only in its chat template, which appends standing instructions after the
conversation: every chat's first token then needs ~300 more tokens of prompt processing.
(With ~150 the gate once let 2.0.0 through and the rollout completed, on SQLite; its
reason was not recorded and the cause is not known. ~300 widen the margin; ~600 were
tried too, and the agents then did not take 2.0.0 within 3 minutes, also not looked
into.)
(A long *system* prompt would not do: it comes first, and llama.cpp reuses the evaluated
prefix of the previous request, so it costs only the first chat.) The rollout is created
with the real ``outpost-cp rollout create --max-p95-regression 20%``; its only stage is the
whole cohort (two devices), so which devices stage 1 holds is not left to the salted
buckets. The gate must halt it naming both p95s with their intervals, and both agents must
go back to 1.0.0.

The telemetry policy rides in both releases (a policy bundle): a report every 10 s (the
least the schema allows) instead of hourly, and nearly all of the largest per-report
epsilon (10) on ``chat_ttft_seconds`` (discrete Laplace at scale ~0.1: the noise is then
below one request per bucket). At the default policy (scale 40 per bucket) the noise of
ten requests per release would swamp both histograms and the gate could not tell the
releases apart; docs/telemetry.md ("Measured here") says how many requests a stage needs
at the default epsilon.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.agent_telemetry.test_agent_e2e_control_plane import _sent
from tests.e2e.conftest import (  # noqa: F401 # fixtures, by name
    MODEL_NAME,
    Agent,
    ControlPlane,
    control_plane,
    fresh_postgres_database,
    smollm2_artifact,
    stop_agent,
    wait_until,
)
from tests.requirements import LLAMA, require_installed
from tests.telemetry_cp.test_p95_gate_real import _cli

pytestmark = pytest.mark.slow

COHORT_TAG = "hw=p95-real-agents"
AGENTS = 2
CHATS = 5  # per agent and release: 10 measured chats per release, gate minimum 8
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
STANDING_INSTRUCTIONS = " ".join(
    f"Rule {i}: answer politely, briefly and only about the kiosk's products." for i in range(16)
)
TEMPLATES = {
    "1.0.0": CHATML + "<|im_start|>assistant\n",
    "2.0.0": CHATML
    + f"<|im_start|>system\n{STANDING_INSTRUCTIONS}<|im_end|>\n<|im_start|>assistant\n",
}
POLICY = {
    "telemetry": {
        "interval_seconds": 10,
        "epsilon_per_report": 10,
        "epsilon_per_period": 1000,
        "fields": {"chat_ttft_seconds": {"weight": 1000}},  # the other nine keep weight 1
    }
}


def _release(cp: ControlPlane, version: str, artifacts: list[str]) -> str:
    config = {"models": {MODEL_NAME: {"chat_template": TEMPLATES[version]}}}
    r = cp.admin.post(
        "/api/v1/releases",
        json={
            "name": "p95-real-agents",
            "version": version,
            "artifacts": artifacts,
            "config": config,
        },
    )
    r.raise_for_status()
    return str(r.json()["id"])


def _serves(agent: Agent, release_id: str) -> bool:
    return bool(agent.status()["updates"]["release_id"] == release_id)


def _wait_serving(agents: list[Agent], release_id: str, what: str) -> None:
    for agent in agents:
        wait_until(
            partial(_serves, agent, release_id),
            timeout=180,
            what=f"{agent.device_id} to {what}",
        )


def _chats(agent: Agent, tag: str) -> None:
    """``CHATS`` streamed chats through the official client, one after another."""
    client = openai.OpenAI(base_url=f"{agent.url}/v1", api_key=agent.token, timeout=120)
    for i in range(CHATS):
        stream = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": f"Say hello to visitor {tag}-{i}."}],
            max_tokens=2,
            stream=True,
        )
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(pieces).strip(), f"an empty answer from {agent.device_id}"


def _traffic(agents: list[Agent], tag: str) -> datetime:
    """Chats on every agent at once; returns when the last one ended."""
    with ThreadPoolExecutor(len(agents)) as pool:
        for done in [pool.submit(_chats, a, f"{tag}{n}") for n, a in enumerate(agents)]:
            done.result()
    return datetime.now(UTC)


def _reported_since(agent: Agent, moment: datetime) -> bool:
    """The agent delivered a report whose period began after ``moment``: every request
    before it is in a report the control plane stored."""
    return any(
        r["outcome"] == "stored" and datetime.fromisoformat(r["period_start"]) >= moment
        for r in _sent(agent)
    )


@pytest.fixture
def fleet(
    control_plane: ControlPlane,  # noqa: F811 # the fixture imported above
    smollm2_artifact: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[list[Agent], dict[str, str]]]:
    require_installed(*LLAMA)
    cp = control_plane
    if cp.process is None:
        cp.start()
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    bundle = cp.upload(policy, name="p95-real-policy", kind="policy", fmt="json")
    artifacts = [smollm2_artifact["id"], bundle["id"]]
    releases = {v: _release(cp, v, artifacts) for v in TEMPLATES}
    agents = [Agent(cp, tmp_path / f"device-{i}", tags=[COHORT_TAG]) for i in range(AGENTS)]
    try:
        for agent in agents:
            # one llama.cpp thread: on a loaded 2-core box two threads stall each other
            agent.start(env={"OUTPOST_AGENT_N_THREADS": "1"})
            cp.assign(agent.device_id, releases["1.0.0"])
        _wait_serving(agents, releases["1.0.0"], "serve 1.0.0")
        yield agents, releases
    finally:
        for agent in agents:
            stop_agent(agent)


def test_a_slower_release_from_real_agents_halts_on_the_p95_gate_at_the_first_stage(
    control_plane: ControlPlane,  # noqa: F811
    fleet: tuple[list[Agent], dict[str, str]],
) -> None:
    agents, releases = fleet
    baseline_done = _traffic(agents, "a")
    wait_until(
        lambda: all(_reported_since(a, baseline_done) for a in agents),
        timeout=90,
        what="every agent to report its 1.0.0 chats",
    )
    rollout = _cli(
        control_plane,
        "rollout",
        "create",
        "--release",
        "p95-real-agents@2.0.0",
        "--cohort",
        COHORT_TAG,
        "--stages",
        "100",
        "--min-sample",
        "2",
        "--max-p95-regression",
        "20%",
        "--telemetry-min-sample",
        str(AGENTS),
        "--telemetry-min-requests",
        "8",
    )
    assert rollout["state"] == "running", rollout
    _wait_serving(agents, releases["2.0.0"], "serve 2.0.0")
    _traffic(agents, "b")

    def finished() -> dict[str, Any] | None:
        shown = _cli(control_plane, "rollout", "status", rollout["id"])
        return shown if shown["state"] != "running" else None

    shown = wait_until(finished, timeout=120, what="the p95 gate to judge the stage")
    reason = shown["reason"]
    events = "; ".join(f"{e['kind']}: {e['message']}" for e in shown["events"])
    assert shown["state"] == "halted", f"{reason} (events: {events})"
    assert shown["stage"] == 1
    assert "p95 time to first token" in reason and reason.count("95% CI") == 2, reason
    assert "on p95-real-agents@2.0.0 (2 devices)" in reason, reason
    assert "on p95-real-agents@1.0.0 (2 devices)" in reason, reason
    assert "more than the allowed +20%" in reason
    _wait_serving(agents, releases["1.0.0"], "be rolled back to 1.0.0")  # stage 1's devices
