"""Qualification with real processes (control plane on SQLite and PostgreSQL, a real agent
of device class x86-ci, the real text-orientation model): a rollout that requires
qualification for the class is refused until a device of the class has reported a passing
acceptance check of the release, then starts; ``outpost-cp release qualify`` and the API
show what the device measured; the suite runs in-process against the installed release and
reports a run signed by the device key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from converters.catalog import preset
from edge_agent.store import load_device_key, load_identity
from edge_agent.uplink.client import ControlPlaneClient, RequestRejectedError, new_http_client
from protocol import AcceptanceReport, AcceptanceResult
from tests.device_tests.agent import VISION_NAME, text_orientation_path
from tests.device_tests.test_on_device_check import final_report, publish
from tests.e2e.conftest import Agent, ControlPlane, stop_agent

pytestmark = pytest.mark.slow

TAG = "acceptance=qualify"
SPEC = preset("text-orientation").spec.to_config()
GENEROUS = {
    "vision": {VISION_NAME: SPEC},
    "acceptance": {
        "device_classes": {
            "x86-ci": {
                "thresholds": {"vision_p95_ms": {VISION_NAME: 5000}, "peak_rss_mb": 16000},
                "measurement": {"warmup": 1, "min_queries": 10, "min_duration_s": 0.0},
            }
        }
    },
}


@pytest.fixture(scope="module")
def agent(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    device = Agent(control_plane, tmp_path_factory.mktemp("qualify") / "state", tags=[TAG])
    device.start(env={"OUTPOST_AGENT_DEVICE_CLASS": "x86-ci"})
    yield device
    stop_agent(device)


def rollout(cp: ControlPlane, release_id: str, **extra: Any) -> Any:
    return cp.admin.post(
        "/api/v1/rollouts",
        json={
            "release": release_id,
            "cohort": TAG,
            "stages": [100],
            "max_failure_rate": 0.1,
            "min_sample": 1,
            "stage_timeout_seconds": 600,
            **extra,
        },
    )


def test_a_rollout_requiring_qualification_waits_for_a_passing_device_of_the_class(
    control_plane: ControlPlane, agent: Agent
) -> None:
    cp = control_plane
    model = cp.upload(
        text_orientation_path("fp32"), name=VISION_NAME, kind="vision-classify", fmt="onnx"
    )
    release_id = publish(cp, "2.0.0-qualify", model["id"], GENEROUS)

    refused = rollout(cp, release_id, require_qualification="x86-ci")
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["error"]["type"] == "release_not_qualified", body
    assert "no device of class x86-ci has reported" in body["error"]["message"]

    version = cp.assign(agent.device_id, release_id)  # one device of the class runs the check
    report = final_report(cp, agent.device_id, version)
    assert report["state"] == "committed", report
    assert "acceptance check passed for device class x86-ci" in report["detail"]

    found = cp.admin.get(
        "/api/v1/releases/reader@2.0.0-qualify/qualification", params={"device_class": "x86-ci"}
    ).json()
    assert (found["reported"], found["passed"], found["qualified"]) == (1, 1, True), found
    (device,) = found["devices"]
    figures = {f["figure"]: f for f in device["figures"]}
    vision = figures[f"vision_p95_ms[{VISION_NAME}]"]
    assert vision["status"] == "pass" and vision["n"] >= 10 and 0 < vision["value"] < 5000
    assert figures["peak_rss_mb"]["status"] == "pass"
    other = cp.admin.get(
        f"/api/v1/releases/{release_id}/qualification", params={"device_class": "rpi5"}
    ).json()
    assert (other["reported"], other["qualified"]) == (0, False)

    cli = subprocess.run(
        [str(Path(sys.executable).parent / "outpost-cp"), "release", "qualify",
         "reader@2.0.0-qualify", "--device-class", "x86-ci", "--server", cp.url],
        env={**os.environ, "OUTPOST_CP_TOKEN": cp.init["admin_token"]},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "1 of 1 devices passed (100%): qualified" in cli.stdout
    assert agent.device_id in cli.stdout and f"vision_p95_ms[{VISION_NAME}]" in cli.stdout

    started = rollout(
        cp,
        release_id,
        require_qualification="x86-ci",
        gates=[{"type": "acceptance_pass_rate", "min_rate": 0.95}],
    )
    assert started.status_code == 201, started.text
    assert started.json()["state"] in ("running", "completed")


def test_the_suite_runs_in_process_against_the_release_a_device_installed(
    agent: Agent, tmp_path: Path
) -> None:
    """``--state-dir``: the release the agent's store serves, loaded by the agent's runtime
    in this process (after the test above installed it); cold start is measured here."""
    profile = tmp_path / "p.toml"
    profile.write_text(
        'schema = 1\nname = "in-process"\ndevice = "test"\n[source]\nkind = "estimate"\n'
        'basis = "generous"\n[measurement]\nwarmup = 1\nmin_queries = 5\nmin_duration_s = 0.0\n'
        f'[thresholds]\ncold_start_ms = 60000\nvision_p95_ms = {{ "{VISION_NAME}" = 5000 }}\n'
        "embedding_p95_ms = 5000\n"
    )
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "device_tests", "run", "--profile", str(profile),
         "--state-dir", str(agent.state_dir), "--json", str(out)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    got = {f["figure"]: f for f in json.loads(out.read_text())["figures"]}
    assert got["cold_start_ms"]["status"] == "pass" and 0 < got["cold_start_ms"]["value"] < 60000
    assert got[f"vision_p95_ms[{VISION_NAME}]"]["status"] == "pass"
    assert got["embedding_p95_ms"]["status"] == "not_measured"  # the release has no embedder
    assert "in-process reader 2.0.0-qualify" in done.stdout


def test_a_suite_run_is_reported_signed_by_the_device_and_counted(
    control_plane: ControlPlane, agent: Agent, tmp_path: Path
) -> None:
    """``--report-to-control-plane``: the suite's numbers go to the control plane signed by
    the device key, about the release the device serves; one about another release is
    refused and nothing is stored."""
    cp = control_plane
    profile = tmp_path / "p.toml"
    profile.write_text(
        'schema = 1\nname = "x86-ci"\ndevice = "test"\n[source]\nkind = "estimate"\n'
        'basis = "strict on purpose"\n[measurement]\nwarmup = 1\nmin_queries = 5\n'
        f'min_duration_s = 0.0\n[thresholds]\nvision_p95_ms = {{ "{VISION_NAME}" = 0.01 }}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "device_tests", "run", "--profile", str(profile),
         "--agent", agent.url, "--token", agent.token, "--report-to-control-plane",
         "--device-state-dir", str(agent.state_dir)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr  # failed, and reported anyway
    assert "reported to the control plane" in done.stdout
    found = cp.admin.get(
        "/api/v1/releases/reader@2.0.0-qualify/qualification", params={"device_class": "x86-ci"}
    ).json()
    (device,) = found["devices"]  # the device's latest result is now the suite's
    assert (device["state"], device["passed"], found["qualified"]) == ("suite", False, False)
    assert device["figures"][0]["status"] == "fail"

    identity = load_identity(agent.state_dir)
    forged = AcceptanceReport(
        report_id="0" * 32,
        device_id=identity.device_id,
        release_id="rel_not_what_it_serves",
        at=datetime.now(UTC),
        profile="x86-ci",
        workload_version="1",
        result=AcceptanceResult(device_class="x86-ci", passed=True, figures=[], duration_s=1),
    )
    with new_http_client(cp.url) as http:
        client = ControlPlaneClient(
            http, device_id=identity.device_id, device_key=load_device_key(agent.state_dir)
        )
        with pytest.raises(RequestRejectedError, match="this device serves") as e:
            client.send_acceptance(forged)
    assert e.value.status_code == 409
    assert cp.query("SELECT count(*) FROM acceptance_results WHERE report_id = :r", r="0" * 32) == [
        (0,)
    ]
