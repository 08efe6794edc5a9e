"""A config rollout end to end with real processes: the control plane (its rollout worker
ticking), two real agents serving SmolLM2, both tagged ``store=lisbon``, one with a large
context and one with a small one, and the operator's ``outpost-cp rollout create --config``.

A system prompt that only the large-context device can take halts the rollout (the small
one reverts it: its chat health check overflows) and is removed from both; a patch both
can take completes and ends up in the ``tag:store=lisbon`` layer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.cli import main
from tests.e2e.conftest import MODEL_NAME, Agent, ControlPlane, smollm2_path, stop_agent, wait_until

pytestmark = pytest.mark.slow

# ~700 tokens: fits a 2048-token context, overflows a 512-token one
LONG_PROMPT = "You are the store's assistant; answer briefly and politely. " * 60


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OUTPOST_CP_ROLLOUT_TICK_SECONDS", "0.3")
        control_plane = ControlPlane(tmp_path_factory.mktemp("cp") / "data")
    yield control_plane
    control_plane.stop()
    control_plane.admin.close()


@pytest.fixture(scope="module")
def agents(
    cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Agent, Agent]]:
    artifact = cp.upload(smollm2_path(), name=MODEL_NAME, kind="llm", fmt="gguf")
    release = cp.release("config-rollout-e2e", "1.0.0", [artifact["id"]])
    big = Agent(cp, tmp_path_factory.mktemp("big") / "state", tags=["store=lisbon", "ctx=2048"])
    small = Agent(cp, tmp_path_factory.mktemp("small") / "state", tags=["store=lisbon", "ctx=512"])
    big.start(env={"OUTPOST_AGENT_N_CTX": "2048"})
    small.start(env={"OUTPOST_AGENT_N_CTX": "512"})
    for agent in (big, small):
        agent.wait_installed(cp.assign(agent.device_id, release), timeout=120)
    yield big, small
    for agent in (big, small):
        stop_agent(agent)


def outpost_cp(
    cp: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> dict[str, Any]:
    token = tmp_path / "admin.token"
    token.write_text(cp.init["admin_token"] + "\n")
    capsys.readouterr()
    code = main(["--server", cp.url, "--token-file", str(token), "--json", *argv], environ={})
    captured = capsys.readouterr()
    assert code == 0, captured.err
    body: dict[str, Any] = json.loads(captured.out)
    return body


def view(cp: ControlPlane, agent: Agent) -> dict[str, Any]:
    r = cp.admin.get(f"/api/v1/devices/{agent.device_id}/config")
    r.raise_for_status()
    return dict(r.json())


def finished(cp: ControlPlane, rollout_id: str, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        r = cp.admin.get(f"/api/v1/rollouts/{rollout_id}")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body if body["state"] not in ("running", "awaiting_approval") else None

    result: dict[str, Any] = wait_until(done, timeout=timeout, what=f"rollout {rollout_id}")
    return result


def in_sync(cp: ControlPlane, agent: Agent, check: Any, timeout: float = 60) -> dict[str, Any]:
    """Wait until the agent reported ``applied`` for its current effective config (or, for
    a device that was never signed a config, e.g. one a halted rollout did not reach yet,
    until the control plane has none to sign it)."""

    def done() -> dict[str, Any] | None:
        v = view(cp, agent)
        synced = v["in_sync"] or v["issued"] is None
        return v if synced and check(v["effective"]) else None

    result: dict[str, Any] = wait_until(done, timeout=timeout, what=f"{agent.device_id} in sync")
    return result


def test_a_prompt_the_small_context_device_reverts_halts_the_rollout_and_leaves_both(
    cp: ControlPlane,
    agents: tuple[Agent, Agent],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    big, small = agents
    patch = json.dumps({"chat": {"system_prompt": LONG_PROMPT}})
    created = outpost_cp(
        cp, tmp_path, capsys, "rollout", "create", "--config", patch, "--cohort", "store=lisbon",
        "--stages", "50,100", "--max-failure-rate", "0%", "--min-sample", "1",
        "--stage-timeout", "5m",
    )  # fmt: skip
    assert created["kind"] == "config" and created["config_scope"] == "tag:store=lisbon"
    final = finished(cp, created["id"])
    assert final["state"] == "halted", final["reason"]
    assert final["failed"] == 1 and final["rolled_back"] == final["moved"]
    for agent in (big, small):  # the layer is gone: each is back on its prior config, applied
        v = in_sync(cp, agent, lambda eff: "system_prompt" not in eff.get("chat", {}))
        assert not [layer for layer in v["layers"] if layer["scope"].startswith("rollout:")]
        assert agent.status()["config"]["version"] == (v["issued"] or {}).get("version")
    assert view(cp, small)["issued"]["version"] >= 2  # the patch, then its prior config
    events = [e["kind"] for e in final["events"]]
    assert events[0] == "created" and events[-1] == "halted"
    status = outpost_cp(cp, tmp_path, capsys, "rollout", "status", created["id"])
    assert status["kind"] == "config" and status["state"] == "halted"
    with small.api() as api:  # still serving
        r = api.post(
            "/v1/chat/completions",
            json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Say hi."}]},
        )
    assert r.status_code == 200, r.text


def test_a_patch_both_devices_take_completes_and_joins_the_tag_layer(
    cp: ControlPlane,
    agents: tuple[Agent, Agent],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    patch_file = tmp_path / "patch.json"
    patch_file.write_text(json.dumps({"chat": {"max_tokens_default": 48}}))
    created = outpost_cp(
        cp, tmp_path, capsys, "rollout", "create", "--config-file", str(patch_file),
        "--cohort", "store=lisbon", "--stages", "50,100", "--max-failure-rate", "0%",
        "--min-sample", "1",
    )  # fmt: skip
    final = finished(cp, created["id"])
    assert final["state"] == "completed", final["reason"]
    assert final["committed"] == final["moved"] == 2
    for agent in agents:
        v = in_sync(cp, agent, lambda eff: eff.get("chat", {}).get("max_tokens_default") == 48)
        assert [layer["scope"] for layer in v["layers"]] == ["tag:store=lisbon"]
    listed = outpost_cp(cp, tmp_path, capsys, "rollout", "list")
    assert [(r["id"], r["kind"], r["state"]) for r in listed][:2] == [
        (created["id"], "config", "completed"),
        (listed[1]["id"], "config", "halted"),
    ]
