"""Config rollouts across 300 simulated devices that speak the real device protocol and
verify each signed config with the agent's own code, against a real control plane in
process. A fifth of the fleet cannot take a system prompt (its simulated health check
reverts one): a rollout of a prompt halts and every device it reached goes back to the
config it had; a patch the whole fleet takes completes, stage by stage, into the tag
layer. The rollout worker runs one pass per round; the clock moves a minute per round."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from simulator import AsgiClient, Behaviour, Fleet, TagSpec, share
from tests.control_plane.conftest import make_control_plane
from tests.rollouts.conftest import Fleet as Harness

pytestmark = pytest.mark.slow

SIZE = 300
PROMPT = "You are the store's assistant. Answer in one short sentence."


def behaviour(index: int) -> Behaviour:
    small = share(index, 0.2, "small-model")
    return Behaviour(
        syncs_config=True,
        reverts_config=frozenset({"chat.system_prompt"}) if small else frozenset(),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, Fleet]]:
    cp = make_control_plane(tmp_path_factory.mktemp("fleet"), workers_enabled=False)
    with cp.client:
        h = Harness(cp)
        http = AsgiClient(cp.app)
        sim = Fleet.create(
            http,
            size=SIZE,
            clock=cp.clock,
            operator_token=cp.auth("operator")["Authorization"].removeprefix("Bearer "),
            profile=TagSpec.parse(["store=lisbon"]),
            behaviour=behaviour,
            root=cp.root,
        )
        assert sim.step().enrolled == SIZE
        r = cp.client.patch(
            "/api/v1/config/scopes/fleet", json={"log_level": "INFO"}, headers=cp.auth("operator")
        )
        assert r.status_code == 200, r.text
        sim.step()
        assert {d.config_version for d in sim.devices} == {1}
        yield h, sim
        http.close()


def drive(h: Harness, sim: Fleet, rollout_id: str, rounds: int = 30) -> dict[str, Any]:
    for _ in range(rounds):
        result = sim.step()
        assert not result.errors, result.errors[:3]
        h.tick()
        h.cp.clock.advance(seconds=60)
        shown = h.show(rollout_id)
        if shown["state"] != "running":
            break
    for _ in range(2):  # what a halt or a completion left: signed, applied, reported
        assert not sim.step().errors
    return h.show(rollout_id)


def create(h: Harness, patch: dict[str, Any]) -> str:
    r = h.cp.client.post(
        "/api/v1/rollouts",
        json={
            "config": patch,
            "cohort": "store=lisbon",
            "stages": [1, 10, 50, 100],
            "max_failure_rate": 0.05,
            "min_sample": 20,
            "stage_timeout_seconds": 600,
        },
        headers=h.cp.auth("operator"),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_a_prompt_a_fifth_of_the_fleet_reverts_halts_and_leaves_every_device_as_it_was(
    world: tuple[Harness, Fleet],
) -> None:
    h, sim = world
    final = drive(h, sim, create(h, {"chat": {"system_prompt": PROMPT}}))
    assert final["state"] == "halted", final["reason"]
    assert final["stage"] < 4 and final["moved"] < SIZE  # stopped before the whole cohort
    assert final["failed"] >= 1 and final["rolled_back"] == final["moved"]
    assert "rolled back" in final["reason"] and "their prior config" in final["reason"]
    assert all(d.config_settings == {"log_level": "INFO"} for d in sim.devices)
    reached = [d for d in sim.devices if (d.config_version or 0) > 1]
    assert len(reached) == final["moved"]  # only they were signed anything new
    assert Counter(d.config_version for d in reached) == {3: len(reached)}


def test_a_patch_the_whole_fleet_takes_completes_stage_by_stage_into_the_tag_layer(
    world: tuple[Harness, Fleet],
) -> None:
    h, sim = world
    final = drive(h, sim, create(h, {"chat": {"max_tokens_default": 128}}))
    assert final["state"] == "completed", final["reason"]
    assert final["committed"] == final["moved"] == SIZE
    assert [s["devices"] for s in final["stages"]][-1] > 0
    assert "tag:store=lisbon layer" in final["reason"]
    want = {"log_level": "INFO", "chat": {"max_tokens_default": 128}}
    assert all(d.config_settings == want for d in sim.devices)
