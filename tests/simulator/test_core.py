"""The pure parts: fleet mixes, device state machine, latency figures, state files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.trust import DirectorTrust
from protocol import (
    ASSIGNMENT_PAYLOAD_TYPE,
    Assignment,
    InstallState,
    SignedEnvelope,
    TargetRef,
    generate_key_pair,
    sign_envelope,
)
from simulator import (
    Behaviour,
    Health,
    Mix,
    PollOutcome,
    SetupError,
    SimDevice,
    TagSpec,
    Window,
    share,
    uniform,
)
from simulator.load import LatencySummary, percentile
from simulator.state import load, save

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DIRECTOR = generate_key_pair()
TRUST = DirectorTrust(keys={DIRECTOR.key_id: DIRECTOR.public}, threshold=1)


def envelope(device_id: str, version: int, release_id: str) -> SignedEnvelope:
    sha = "ab" * 32
    assignment = Assignment(
        device_id=device_id,
        version=version,
        release_id=release_id,
        release_name="assistant",
        release_version=release_id,
        targets=[
            TargetRef(
                name="m", path=f"{sha}/m.gguf", sha256=sha, length=1, kind="llm", format="gguf"
            )
        ],
        issued_at=NOW,
        expires_at=NOW + timedelta(days=7),
    )
    return sign_envelope(ASSIGNMENT_PAYLOAD_TYPE, assignment.model_dump(mode="json"), [DIRECTOR])


def device(behaviour: Behaviour | None = None) -> SimDevice:
    return SimDevice(
        0, uniform()(0), behaviour or Behaviour(), generate_key_pair(), device_id="dev_0"
    )


def states(d: SimDevice) -> list[InstallState]:
    return [r.state for r in d.outbox]


# --- fleet mixes ----------------------------------------------------------------------------


def test_a_tag_spec_covers_every_combination_in_weighted_proportion() -> None:
    spec = TagSpec.parse(["hw=rpi5*3,mac-m1", "store=lisbon,porto"], extra_tags=["sim"])
    fleet = [spec(i) for i in range(800)]
    combos = Counter(p.tags for p in fleet)
    assert combos[("hw=rpi5", "store=lisbon", "sim")] == 300
    assert combos[("hw=mac-m1", "store=porto", "sim")] == 100
    assert {p.hardware.os for p in fleet if "hw=mac-m1" in p.tags} == {"darwin"}
    assert spec(7) == spec(7)
    assert len({p.name for p in fleet}) == 800


@pytest.mark.parametrize("bad", ["hw", "hw=", "=rpi5", "hw=rpi 5", "hw=rpi5*0", "hw=/x"])
def test_a_malformed_tag_spec_is_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(SetupError):
        TagSpec.parse([bad])


def test_shares_pick_about_that_fraction_and_independent_subsets() -> None:
    failing = {i for i in range(10_000) if share(i, 0.2, "a")}
    silent = {i for i in range(10_000) if share(i, 0.2, "b")}
    assert 1800 < len(failing) < 2200
    assert 300 < len(failing & silent) < 500  # ~4%: independent, not the same devices
    mix = Mix(fails_health=0.2, never_reports=0.1)
    health = Counter(mix(i).health for i in range(10_000))
    assert 1800 < health[Health.FAILS_HEALTH] < 2200
    assert health[Health.NEVER_REPORTS] > 600


def test_offline_windows_and_late_enrollment_are_counted_in_rounds() -> None:
    b = Behaviour(offline=(Window(2, 4), Window(9)), enroll_at=1)
    assert [b.online(r) for r in range(6)] == [True, True, False, False, True, True]
    assert not b.online(100)
    assert (b.enrolled_by(0), b.enrolled_by(1)) == (False, True)
    with pytest.raises(SetupError):
        Window(3, 3)


# --- the device state machine -------------------------------------------------------------


def test_a_healthy_device_walks_the_install_states_once_per_version() -> None:
    d = device()
    assert d.observe(envelope("dev_0", 1, "r1"), director=TRUST, round_=0, now=NOW) is (
        PollOutcome.INSTALLING
    )
    assert states(d) == ["downloading", "verified", "active", "committed"]
    assert d.observe(envelope("dev_0", 1, "r1"), director=TRUST, round_=1, now=NOW) is (
        PollOutcome.UP_TO_DATE
    )
    assert len(d.outbox) == 4


def test_a_failing_device_rolls_back_naming_what_it_serves_and_gives_up_that_version() -> None:
    d = device(Behaviour(health=Health.FAILS_HEALTH, failing_releases=frozenset({"r2"})))
    d.observe(envelope("dev_0", 1, "r1"), director=TRUST, round_=0, now=NOW)
    d.outbox.clear()
    d.observe(envelope("dev_0", 2, "r2"), director=TRUST, round_=1, now=NOW)
    assert states(d) == ["downloading", "verified", "active", "rolled_back"]
    rolled_back = d.outbox[-1]
    assert (rolled_back.release_id, rolled_back.serving_release_id) == ("r2", "r1")
    assert d.serving_release_id == "r1"
    assert d.observe(envelope("dev_0", 2, "r2"), director=TRUST, round_=2, now=NOW) is (
        PollOutcome.GIVEN_UP
    )
    assert d.observe(envelope("dev_0", 3, "r3"), director=TRUST, round_=3, now=NOW) is (
        PollOutcome.INSTALLING
    )


def test_an_assignment_for_another_device_is_refused() -> None:
    d = device()
    outcome = d.observe(envelope("dev_other", 1, "r1"), director=TRUST, round_=0, now=NOW)
    assert outcome is PollOutcome.REFUSED
    assert states(d) == ["refused"]
    assert d.serving is None


def test_an_assignment_signed_by_an_unknown_key_is_refused() -> None:
    d = device()
    other = DirectorTrust(keys={(k := generate_key_pair()).key_id: k.public}, threshold=1)
    outcome = d.observe(envelope("dev_0", 1, "r1"), director=other, round_=0, now=NOW)
    assert outcome is PollOutcome.REFUSED
    assert "not signed by the director" in d.outbox[0].detail


def test_a_silent_device_installs_but_queues_nothing() -> None:
    d = device(Behaviour(health=Health.NEVER_REPORTS))
    d.observe(envelope("dev_0", 1, "r1"), director=TRUST, round_=0, now=NOW)
    assert d.serving_release_id == "r1"
    assert d.outbox == []


def test_report_ids_are_unique_hex32() -> None:
    d = device()
    d.observe(envelope("dev_0", 1, "r1"), director=TRUST, round_=0, now=NOW)
    ids = [r.report_id for r in d.outbox]
    assert len(set(ids)) == len(ids) == 4
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


# --- figures and state ---------------------------------------------------------------------


def test_latency_summary_uses_nearest_rank_percentiles() -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    summary = LatencySummary.of(samples)
    assert (summary.count, summary.p50_ms, summary.p99_ms, summary.max_ms) == (100, 50, 99, 100)
    assert percentile([0.5], 99) == 0.5
    assert LatencySummary.of([]).count == 0


def test_a_saved_state_restores_keys_ids_and_install_progress(tmp_path: Path) -> None:
    d = device()
    d.observe(envelope("dev_0", 1, "r1"), director=TRUST, round_=0, now=NOW)
    save([d], tmp_path / "s.json")
    (back,) = load(tmp_path / "s.json", lambda i: Behaviour())
    assert back.key.public_hex == d.key.public_hex
    assert (back.device_id, back.serving, back.highest_accepted) == (
        "dev_0",
        d.serving,
        1,
    )
    with pytest.raises(SetupError):
        (tmp_path / "bad.json").write_text("{}")
        load(tmp_path / "bad.json", lambda i: Behaviour())


def test_the_simulator_imports_no_control_plane_code_and_no_runtime() -> None:
    probe = (
        "import json, sys, simulator, simulator.cli, simulator.load\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(done.stdout))
    top = {m.split(".")[0] for m in loaded}
    assert not top & {"control_plane", "llama_cpp", "onnxruntime", "sqlalchemy", "fastapi"}
    assert {m for m in loaded if m.startswith("edge_agent.")} <= {
        "edge_agent.errors",
        "edge_agent.trust",
        "edge_agent.trust.director",
        "edge_agent.trust.targets",
    }
