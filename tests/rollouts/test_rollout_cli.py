"""``outpost-cp rollout ...`` against a real control plane on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control_plane.cli_harness import OperatorShell, operator_shell
from tests.control_plane.conftest import small_gguf


@pytest.fixture
def sh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[OperatorShell]:
    with operator_shell(tmp_path, capsys) as shell:
        for i in range(4):
            shell.cp.enroll(f"kiosk-{i}", tags=["hw=rpi5"])
        artifact = shell.cp.upload(small_gguf(tmp_path, seed=3))
        shell.cp.publish([artifact["id"]], name="kiosk-assistant", version="1.1.0")
        yield shell


def test_create_status_pause_resume_approve_abort(sh: OperatorShell) -> None:
    created = sh.run(
        "rollout", "create", "--release", "kiosk-assistant@1.1.0", "--cohort", "hw=rpi5",
        "--stages", "50,100", "--max-failure-rate", "5%", "--min-sample", "2",
        "--stage-timeout", "30m", "--manual-approval", role="operator",
    ).data  # fmt: skip
    rid = created["id"]
    assert created["plan"]["stages"] == [50, 100]
    assert created["plan"]["stage_timeout_seconds"] == 1800
    gates = created["plan"]["gate"]["gates"]
    assert {"type": "failure_rate", "max_rate": 0.05, "min_sample": 2} in gates
    assert {"type": "manual_approval"} in gates
    text = sh.run("rollout", "status", rid, json_mode=False)
    assert text.code == 0 and "kiosk-assistant@1.1.0" in text.out and "STAGE" in text.out
    assert sh.run("rollout", "pause", rid, role="operator").data["state"] == "paused"
    assert sh.run("rollout", "resume", rid, role="operator").data["state"] == "running"
    assert sh.run("rollout", "approve", rid, role="operator").code == 0
    listed = sh.run("rollout", "list").data
    assert [r["id"] for r in listed] == [rid]
    aborted = sh.run("rollout", "abort", rid, "--no-rollback", role="operator").data
    assert aborted["state"] == "aborted" and aborted["rolled_back"] == 0
    again = sh.run("rollout", "pause", rid, role="operator")
    assert again.code == 1 and "aborted" in again.err


def test_refusals_exit_with_the_reason(sh: OperatorShell) -> None:
    bad = sh.run(
        "rollout", "create", "--release", "kiosk-assistant@1.1.0", "--cohort", "hw=rpi9",
        role="operator",
    )  # fmt: skip
    assert bad.code == 1 and "matches no enrolled device" in bad.err
    viewer = sh.run(
        "rollout", "create", "--release", "kiosk-assistant@1.1.0", "--cohort", "hw=rpi5",
        role="viewer",
    )  # fmt: skip
    assert viewer.code == 1 and "403" in viewer.err
    with pytest.raises(SystemExit) as usage:
        sh.run(
            "rollout", "create", "--release", "x@1", "--cohort", "*",
            "--max-failure-rate", "lots", role="operator",
        )  # fmt: skip
    assert usage.value.code == 2
    assert "rate like 5%" in sh.capsys.readouterr().err
