"""The health window in the update loop: a release is committed only after its smoke
requests pass; one that fails is rolled back by the device itself, reported with the
reason, and never retried; a crash inside the window leaves the previous release."""

from __future__ import annotations

import pytest

from edge_agent.store import InstallStep
from edge_agent.updates import MAX_ACTIVATION_ATTEMPTS, CycleResult, SmokeCheck
from protocol import InstallState, StatusReport
from tests.agent_updates.conftest import Device, restart
from tests.agent_updates.simulator import Release, gguf_bytes, release_of


class PowerCut(BaseException):
    """Stands in for the process dying: nothing in the agent catches it."""


def reports(device: Device) -> list[StatusReport]:
    return sorted(device.sim.reports.values(), key=lambda r: r.at)


def states(device: Device) -> list[InstallState]:
    return [r.state for r in reports(device)]


def installed_a(device: Device) -> None:
    device.sim.assign(device.device_id, release_of(device.sim, "a"))
    assert device.cycle().result is CycleResult.INSTALLED


def test_a_release_is_committed_only_after_its_health_window_passes(device: Device) -> None:
    seen_inside: list[tuple[list[InstallState], str, tuple[str | None, str | None]]] = []
    device.health.during = lambda: seen_inside.append(
        (states(device), device.loop.status().phase, device.store.pointers())
    )
    device.sim.assign(device.device_id, release_of(device.sim, "a"))
    assert device.cycle().result is CycleResult.INSTALLED

    assert device.health.asked == [("a", SmokeCheck("chat", "model-a"))]
    # inside the window: the new release serves, the operator already sees "active"
    assert seen_inside == [
        (
            [InstallState.DOWNLOADING, InstallState.VERIFIED, InstallState.ACTIVE],
            "health_window",
            ("assignment-1", None),
        )
    ]
    last = reports(device)[-1]
    assert last.state is InstallState.COMMITTED and last.serving_release_id == "rel-a"
    assert "health window passed: chat 'model-a' 5 ms" in last.detail
    install = device.store.db.installs_of(1)[-1]
    assert device.store.db.journal_steps(install.install_id)[-2:] == [
        InstallStep.HEALTH_CHECK.value,
        InstallStep.ACTIVE.value,
    ]
    assert "health window passed" in (device.loop.status().last_health or "")


def test_every_model_of_a_release_gets_a_smoke_request(device: Device) -> None:
    sim = device.sim
    chat = sim.publish("chat", gguf_bytes("chat"))
    embedder = sim.publish("embedder", gguf_bytes("embedder"), kind="embedding")
    prompts = sim.publish("prompts", b'{"system": "Be brief."}', kind="config", fmt="json")
    sim.assign(device.device_id, Release("rel-multi", "demo", "m", [chat, embedder, prompts]))
    assert device.cycle().result is CycleResult.INSTALLED
    assert [check for _, check in device.health.asked] == [
        SmokeCheck("chat", "chat"),
        SmokeCheck("embedding", "embedder"),
    ]


def test_a_release_whose_smoke_request_fails_is_rolled_back_and_reported(device: Device) -> None:
    installed_a(device)
    device.sim.assign(device.device_id, release_of(device.sim, "b"))
    device.health.errors["chat"] = "the chat reply was empty (0 tokens)"

    outcome = device.cycle()

    assert outcome.result is CycleResult.FAILED
    assert device.serving_version() == "a"
    assert device.store.pointers() == ("assignment-1", None)
    last = reports(device)[-1]
    assert last.state is InstallState.ROLLED_BACK
    assert last.release_id == "rel-b" and last.serving_release_id == "rel-a"
    assert "chat smoke request on 'model-b' failed" in last.detail
    assert "the chat reply was empty (0 tokens)" in last.detail
    assert "now serving demo a" in last.detail
    assert states(device)[-3:] == [
        InstallState.VERIFIED,
        InstallState.ACTIVE,
        InstallState.ROLLED_BACK,
    ]
    device.assert_store_holds_only_verified_releases()
    assert device.cycle().result is CycleResult.GIVEN_UP  # not retried
    assert [v for v, _ in device.health.asked] == ["a", "b"]
    device.health.errors.clear()  # the operator fixed it in a new release
    device.sim.assign(device.device_id, release_of(device.sim, "c"))
    assert device.cycle().result is CycleResult.INSTALLED
    assert device.serving_version() == "c"


def test_a_release_slower_than_its_acceptance_threshold_is_rolled_back(device: Device) -> None:
    installed_a(device)
    b = release_of(device.sim, "b")
    b.config = {"acceptance": {"max_smoke_ms": {"chat": 1}}}
    device.sim.assign(device.device_id, b)
    device.health.elapsed_ms["chat"] = 84.0

    assert device.cycle().result is CycleResult.FAILED

    assert device.serving_version() == "a"
    last = reports(device)[-1]
    assert last.state is InstallState.ROLLED_BACK and last.serving_release_id == "rel-a"
    assert "took 84 ms, over the release's acceptance.max_smoke_ms.chat of 1 ms" in last.detail


def test_a_first_release_that_fails_its_health_window_is_not_served(device: Device) -> None:
    device.sim.assign(device.device_id, release_of(device.sim, "a"))
    device.health.errors["chat"] = "ContextOverflowError: the prompt is 40 tokens"

    assert device.cycle().result is CycleResult.FAILED

    assert device.activator.deactivated and device.serving_version() is None
    assert device.store.pointers() == (None, None)
    last = reports(device)[-1]
    assert last.state is InstallState.ROLLED_BACK and last.serving_release_id is None
    assert "now serving nothing" in last.detail


def test_a_probe_that_raises_fails_the_window_instead_of_the_loop(device: Device) -> None:
    installed_a(device)
    device.sim.assign(device.device_id, release_of(device.sim, "b"))
    device.health.die_with = RuntimeError("the runtime lost its model thread")

    assert device.cycle().result is CycleResult.FAILED

    assert device.serving_version() == "a"
    assert "RuntimeError: the runtime lost its model thread" in reports(device)[-1].detail


def test_a_crash_inside_the_health_window_leaves_the_previous_release(device: Device) -> None:
    installed_a(device)
    device.sim.assign(device.device_id, release_of(device.sim, "b"))
    device.health.die_with = PowerCut()  # the process dies mid smoke request
    with pytest.raises(PowerCut):
        device.cycle()
    assert device.store.pointers() == ("assignment-2", "assignment-1")  # b was serving

    device = restart(device)

    assert device.serving_version() == "a"
    assert device.store.pointers() == ("assignment-1", None)
    interrupted = device.store.db.installs_of(2)[-1]
    assert interrupted.step is InstallStep.INTERRUPTED
    assert interrupted.detail == "interrupted at health_check"
    assert device.cycle().result is CycleResult.INSTALLED  # retried, and it passes now
    assert device.serving_version() == "b"
    assert states(device)[-1] is InstallState.COMMITTED
    device.store.close()


def test_repeated_crashes_inside_the_health_window_are_given_up(device: Device) -> None:
    """A release whose smoke request kills the agent must not crash-loop it."""
    installed_a(device)
    device.sim.assign(device.device_id, release_of(device.sim, "b"))
    for _ in range(MAX_ACTIVATION_ATTEMPTS):
        device.health.die_with = PowerCut()
        with pytest.raises(PowerCut):
            device.cycle()
        device = restart(device)
        assert device.serving_version() == "a"

    assert device.cycle().result is CycleResult.GIVEN_UP

    assert device.serving_version() == "a"
    last = reports(device)[-1]
    assert last.state is InstallState.FAILED and last.serving_release_id == "rel-a"
    assert "health-checking" in last.detail
    device.store.close()


def test_a_shutdown_inside_the_health_window_is_no_verdict_on_the_release(
    device: Device,
) -> None:
    """SIGTERM closes the runtime under the smoke request; that must not give up on a
    good release: the install stays unfinished and is retried after the restart."""
    installed_a(device)
    device.sim.assign(device.device_id, release_of(device.sim, "b"))
    device.health.errors["chat"] = "NoModelError: the registry was closed"
    device.health.during = device.stop.set

    assert device.cycle().result is CycleResult.FAILED

    assert InstallState.ROLLED_BACK not in states(device)
    assert device.store.db.unfinished_install() is not None
    device = restart(device)
    assert device.serving_version() == "a"
    assert device.cycle().result is CycleResult.INSTALLED
    assert device.serving_version() == "b"
    device.store.close()


def test_an_acceptance_block_with_a_typo_is_refused_before_any_download(device: Device) -> None:
    installed_a(device)
    b = release_of(device.sim, "b")
    b.config = {"acceptance": {"max_smoke_ms": {"chatt": 5000}}}
    device.sim.assign(device.device_id, b)
    requests = len(device.sim.target_requests)

    outcome = device.cycle()

    assert outcome.result is CycleResult.FAILED and outcome.error_type == "ConfigError"
    assert len(device.sim.target_requests) == requests
    assert device.serving_version() == "a"
    last = reports(device)[-1]
    assert last.state is InstallState.FAILED and last.serving_release_id == "rel-a"
    assert "acceptance.max_smoke_ms.chatt" in last.detail
    assert device.cycle().result is CycleResult.GIVEN_UP
