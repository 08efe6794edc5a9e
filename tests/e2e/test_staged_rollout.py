"""Three real agents (real llama.cpp, real SmolLM2) through staged rollouts on loopback:
a healthy release reaches all three; then one kiosk fails its health window, rolls back by
itself, and the rollout halts on it and sends every moved kiosk back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import MODEL_NAME, Agent, ControlPlane, stop_agent, wait_until

pytestmark = pytest.mark.slow

COHORT = "fleet=staged-e2e"
# A kiosk whose chat smoke request may take at most 1 ms before the window gives up on it:
# its health check cannot pass (a stand-in for a throttled or overloaded device).
HOPELESS_DEVICE = {"OUTPOST_AGENT_HEALTH_CHECK_TIMEOUT_SECONDS": "0.001"}


@pytest.fixture(scope="module")
def kiosks(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Agent]]:
    base = tmp_path_factory.mktemp("staged")
    agents = [Agent(control_plane, base / f"kiosk-{i}", tags=[COHORT]) for i in range(3)]
    for agent in agents:
        agent.start(env={"OUTPOST_AGENT_N_THREADS": "1"})
    yield agents
    for agent in agents:
        stop_agent(agent)


def publish(cp: ControlPlane, version: str, artifact_id: str) -> dict[str, Any]:
    r = cp.admin.post(
        "/api/v1/releases",
        json={"name": "staged", "version": version, "artifacts": [artifact_id], "config": {}},
    )
    r.raise_for_status()
    return dict(r.json())


def roll_out(cp: ControlPlane, version: str) -> dict[str, Any]:
    r = cp.admin.post(
        "/api/v1/rollouts",
        json={
            "release": f"staged@{version}",
            "cohort": COHORT,
            "stages": [50, 100],
            "max_failure_rate": 0.0,
            "min_sample": 1,
            "stage_timeout_seconds": 240,
        },
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def finished(cp: ControlPlane, rollout_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = dict(cp.admin.get(f"/api/v1/rollouts/{rollout_id}").json())
        return body if body["state"] in ("completed", "halted") else None

    return dict(wait_until(done, timeout=240, what=f"rollout {rollout_id} to finish"))


def serving(agent: Agent) -> str | None:
    release_id = agent.status()["updates"]["release_id"]
    return None if release_id is None else str(release_id)


def test_staged_rollout_of_real_agents_completes_then_halts_on_a_failed_health_window(
    control_plane: ControlPlane, kiosks: list[Agent], smollm2_artifact: dict[str, Any]
) -> None:
    cp = control_plane
    publish(cp, "1.0.0", smollm2_artifact["id"])
    v2 = publish(cp, "1.1.0", smollm2_artifact["id"])
    v3 = publish(cp, "1.2.0", smollm2_artifact["id"])

    first = finished(cp, roll_out(cp, "1.0.0")["id"])
    assert first["state"] == "completed", first["reason"]
    second = finished(cp, roll_out(cp, "1.1.0")["id"])
    assert second["state"] == "completed", second["reason"]
    assert second["committed"] == 3
    assert [e["kind"] for e in second["events"]] == ["created", "advanced", "completed"]
    for agent in kiosks:
        assert serving(agent) == v2["id"]
        assert cp.device(agent.device_id)["installed_release"]["id"] == v2["id"]

    hopeless = kiosks[1]
    stop_agent(hopeless)
    hopeless.start(env={"OUTPOST_AGENT_N_THREADS": "1", **HOPELESS_DEVICE})
    third = finished(cp, roll_out(cp, "1.2.0")["id"])
    assert third["state"] == "halted", third
    assert "1 of" in third["reason"] and "failed the health window" in third["reason"]
    assert "rolled back" in third["reason"] and "staged@1.1.0" in third["reason"]

    report = cp.device(hopeless.device_id)["last_status"]
    assert report["release_id"] in (v3["id"], v2["id"])
    states = [e["message"] for e in third["events"] if e["kind"] == "halted"]
    assert states, third["events"]
    # the kiosk rolled back by itself, and every kiosk ends on 1.1.0 again, serving
    wait_until(
        lambda: all(serving(a) == v2["id"] for a in kiosks),
        timeout=180,
        what="every kiosk to serve 1.1.0 again",
    )
    wait_until(
        lambda: all(cp.device(a.device_id)["installed_release"]["id"] == v2["id"] for a in kiosks),
        timeout=60,
        what="the control plane to show every kiosk on 1.1.0",
    )
    with hopeless.api() as api:
        r = api.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 4,
            },
        )
        assert r.status_code == 200, r.text
