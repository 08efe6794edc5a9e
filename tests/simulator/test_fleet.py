"""The in-process fleet against a real control plane app: enrollment, rollout, failures."""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from protocol import InstallState
from simulator import AsgiClient, Behaviour, Fleet, Health, PollOutcome, TagSpec, Window
from tests.control_plane.conftest import ControlPlaneUnderTest
from tests.simulator.conftest import devices, fleet, installed, publish

INSTALL = {
    InstallState.DOWNLOADING: 1,
    InstallState.VERIFIED: 1,
    InstallState.ACTIVE: 1,
    InstallState.COMMITTED: 1,
}


def times(counts: dict[InstallState, int], n: int) -> dict[InstallState, int]:
    return {state: count * n for state, count in counts.items()}


def test_a_thousand_devices_enroll_and_step(cp: ControlPlaneUnderTest) -> None:
    spec = TagSpec.parse(["hw=rpi5*3,jetson-orin-nano", "store=lisbon,porto"])
    with AsgiClient(cp.app) as http:
        sim = fleet(cp, 1000, profile=spec, http=http)
        first = sim.step()
        assert (first.enrolled, first.polls, first.errors) == (1000, 1000, ())
        assert first.outcomes == {PollOutcome.NO_ASSIGNMENT: 1000}

        started = time.perf_counter()
        second = sim.step()
        elapsed = time.perf_counter() - started
    print(f"\n1,000 devices, one in-process step: {elapsed:.2f} s", file=sys.stderr)
    assert (second.enrolled, second.polls, second.errors) == (0, 1000, ())
    assert len(second.latencies["poll"]) == 1000

    listed = devices(cp)
    assert set(listed) == set(sim.device_ids())
    assert len(listed) == 1000
    rpi5 = [d for d in listed.values() if "hw=rpi5" in d["tags"]]
    assert len(rpi5) == 750
    assert {d["hardware"]["arch"] for d in rpi5} == {"aarch64"}
    jetsons = [d for d in listed.values() if "hw=jetson-orin-nano" in d["tags"]]
    assert {tuple(d["hardware"]["accelerators"]) for d in jetsons} == {("cuda",)}
    assert (
        Counter(t for d in listed.values() for t in d["tags"] if t.startswith("store="))[
            "store=porto"
        ]
        == 500
    )


def test_a_manual_assignment_reaches_the_targeted_devices_which_commit(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    sim = fleet(cp, 8, profile=TagSpec.parse(["hw=rpi5,mac-m1"]))
    sim.step()
    release = publish(cp, tmp_path, "1.0.0")
    targeted = sim.device_ids(lambda d: "hw=rpi5" in d.profile.tags)
    for device_id in targeted:
        cp.assign(device_id, release["id"])

    result = sim.step()
    assert result.errors == ()
    assert result.new_assignments == 4
    assert result.reports == times(INSTALL, 4)
    believed = installed(cp)
    assert {believed[i] for i in targeted} == {release["id"]}
    assert {v for i, v in believed.items() if i not in targeted} == {None}
    assert {devices(cp)[i]["last_status"]["state"] for i in targeted} == {"committed"}
    assert {sim.by_id(i).serving_release_id for i in targeted} == {release["id"]}

    again = sim.step()
    assert again.reports == {}
    assert again.outcomes == {PollOutcome.UP_TO_DATE: 4, PollOutcome.NO_ASSIGNMENT: 4}


def test_devices_that_fail_health_roll_back_to_their_previous_release_and_stay(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    failing = Behaviour(health=Health.FAILS_HEALTH, failing_releases=frozenset({"2.0.0"}))
    sim = fleet(cp, 6, behaviour=lambda i: failing if i % 3 == 0 else Behaviour())
    sim.step()
    v1, v2 = publish(cp, tmp_path, "1.0.0"), publish(cp, tmp_path, "2.0.0")
    for device_id in sim.device_ids():
        cp.assign(device_id, v1["id"])
    assert sim.step().reports == times(INSTALL, 6)

    for device_id in sim.device_ids():
        cp.assign(device_id, v2["id"])
    result = sim.step()
    assert result.errors == ()
    assert result.reports == {
        InstallState.DOWNLOADING: 6,
        InstallState.VERIFIED: 6,
        InstallState.ACTIVE: 6,
        InstallState.COMMITTED: 4,
        InstallState.ROLLED_BACK: 2,
    }
    failed = sim.device_ids(lambda d: d.index % 3 == 0)
    believed = installed(cp)
    assert {believed[i] for i in failed} == {v1["id"]}
    assert {v for i, v in believed.items() if i not in failed} == {v2["id"]}
    assert {devices(cp)[i]["last_status"]["state"] for i in failed} == {"rolled_back"}

    later = sim.step()  # the failed assignment is not retried
    assert later.reports == {}
    assert later.outcomes == {PollOutcome.GIVEN_UP: 2, PollOutcome.UP_TO_DATE: 4}
    assert {sim.by_id(i).serving_release_id for i in failed} == {v1["id"]}


def test_a_renewed_assignment_of_the_serving_release_commits_even_where_health_fails(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    sim = fleet(cp, 1, behaviour=lambda i: Behaviour(health=Health.FAILS_HEALTH))
    sim.step()
    v1 = publish(cp, tmp_path, "1.0.0")
    (device_id,) = sim.device_ids()
    cp.assign(device_id, v1["id"])
    assert sim.step().reports[InstallState.ROLLED_BACK] == 1  # its first release fails
    sim.set_behaviour(0, Behaviour())
    cp.assign(device_id, v1["id"])
    assert sim.step().reports[InstallState.COMMITTED] == 1

    sim.set_behaviour(0, Behaviour(health=Health.FAILS_HEALTH))
    cp.clock.advance(seconds=cp.settings.assignment_ttl.total_seconds() * 0.6)
    renewal = sim.step()  # the director re-signs past half the lifetime: same release
    assert renewal.new_assignments == 1
    assert renewal.reports[InstallState.COMMITTED] == 1
    assert installed(cp)[device_id] == v1["id"]


def test_an_install_stays_active_for_its_health_window_before_committing(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    by_rounds, by_seconds = Behaviour(install_rounds=2), Behaviour(install_seconds=60)
    sim = fleet(cp, 2, behaviour=lambda i: by_rounds if i == 0 else by_seconds)
    sim.step()
    release = publish(cp, tmp_path, "1.0.0")
    for device_id in sim.device_ids():
        cp.assign(device_id, release["id"])
    rounds_id, seconds_id = sim.device_ids()

    assert InstallState.COMMITTED not in sim.step().reports
    assert {d["last_status"]["state"] for d in devices(cp).values()} == {"active"}
    busy = sim.step()
    assert busy.outcomes == {PollOutcome.BUSY: 2}
    assert busy.reports == {}
    assert sim.step().reports == {InstallState.COMMITTED: 1}  # two rounds, but not 60 s
    assert devices(cp)[rounds_id]["last_status"]["state"] == "committed"
    assert devices(cp)[seconds_id]["last_status"]["state"] == "active"
    cp.clock.advance(seconds=61)
    assert sim.step().reports == {InstallState.COMMITTED: 1}
    assert {d["last_status"]["state"] for d in devices(cp).values()} == {"committed"}


def test_offline_devices_do_not_poll_and_catch_up_when_back(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    away = Behaviour(offline=(Window(1, 3),))
    sim = fleet(cp, 4, behaviour=lambda i: away if i < 2 else Behaviour())
    sim.step()
    release = publish(cp, tmp_path, "1.0.0")
    for device_id in sim.device_ids():
        cp.assign(device_id, release["id"])
    offline = sim.device_ids(lambda d: d.index < 2)
    seen_before = {i: devices(cp)[i]["last_seen_at"] for i in offline}

    for _ in range(2):  # rounds 1 and 2
        cp.clock.advance(seconds=30)
        result = sim.step()
        assert result.polls == 2
    assert {devices(cp)[i]["last_seen_at"] for i in offline} == set(seen_before.values())
    assert {installed(cp)[i] for i in offline} == {None}

    cp.clock.advance(seconds=30)
    back = sim.step()  # round 3
    assert back.polls == 4
    assert back.reports == times(INSTALL, 2)
    assert set(installed(cp).values()) == {release["id"]}


def test_reports_made_while_offline_are_delivered_when_back(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    sim = fleet(cp, 1, behaviour=lambda i: Behaviour(install_rounds=1, offline=(Window(2, 4),)))
    sim.step()
    release = publish(cp, tmp_path, "1.0.0")
    (device_id,) = sim.device_ids()
    cp.assign(device_id, release["id"])
    assert InstallState.ACTIVE in sim.step().reports  # round 1
    assert sim.step().polls == 0  # round 2: offline, commits on the device
    assert sim.device(0).outbox and sim.device(0).outbox[0].state is InstallState.COMMITTED
    assert devices(cp)[device_id]["last_status"]["state"] == "active"
    sim.step()  # round 3: offline
    back = sim.step()
    assert back.reports == {InstallState.COMMITTED: 1}
    assert devices(cp)[device_id]["last_status"]["state"] == "committed"


def test_late_enrollers_appear_when_their_round_comes(cp: ControlPlaneUnderTest) -> None:
    sim = fleet(cp, 5, behaviour=lambda i: Behaviour(enroll_at=2) if i >= 3 else Behaviour())
    assert sim.step().enrolled == 3
    assert len(devices(cp)) == 3
    assert sim.step().enrolled == 0
    assert len(devices(cp)) == 3
    third = sim.step()
    assert (third.enrolled, third.polls) == (2, 5)
    assert set(devices(cp)) == set(sim.device_ids())
    assert len(sim.device_ids()) == 5


def test_silent_devices_poll_and_install_but_never_report(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    silent = Behaviour(health=Health.NEVER_REPORTS)
    sim = fleet(cp, 4, behaviour=lambda i: silent if i % 2 else Behaviour())
    sim.step()
    release = publish(cp, tmp_path, "1.0.0")
    for device_id in sim.device_ids():
        cp.assign(device_id, release["id"])
    cp.clock.advance(seconds=10)

    result = sim.step()
    assert result.polls == 4
    assert result.new_assignments == 4
    assert result.reports == times(INSTALL, 2)
    quiet = sim.device_ids(lambda d: d.index % 2 == 1)
    listed = devices(cp)
    assert {listed[i]["last_status"] is None for i in quiet} == {True}
    assert {listed[i]["installed_release"] is None for i in quiet} == {True}
    assert {datetime.fromisoformat(listed[i]["last_seen_at"]) for i in quiet} == {cp.clock()}


def test_a_saved_fleet_resumes_with_the_same_identities(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    sim = fleet(cp, 3)
    sim.step()
    release = publish(cp, tmp_path, "1.0.0")
    for device_id in sim.device_ids():
        cp.assign(device_id, release["id"])
    sim.step()
    path = tmp_path / "fleet.json"
    sim.save(path)
    assert path.stat().st_mode & 0o777 == 0o600

    resumed = Fleet.resume(cp.client, path, clock=cp.clock, root=cp.root)
    result = resumed.step()
    assert result.errors == ()
    assert (result.enrolled, result.polls) == (0, 3)
    assert result.outcomes == {PollOutcome.UP_TO_DATE: 3}
    assert resumed.device_ids() == sim.device_ids()


def test_without_a_pinned_root_the_fleet_trusts_the_first_root_it_fetches(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    token = cp.auth("operator")["Authorization"].removeprefix("Bearer ")
    sim = Fleet.create(cp.client, size=2, clock=cp.clock, operator_token=token)
    sim.step()
    release = publish(cp, tmp_path, "1.0.0")
    for device_id in sim.device_ids():
        cp.assign(device_id, release["id"])
    assert sim.step().reports == times(INSTALL, 2)
    assert sim.director.keys
