"""``outpost-cp rollout create`` with the telemetry gate flags, against a real control plane
on loopback: each flag becomes the gate spec the engine stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.control_plane.cli_harness import operator_shell
from tests.control_plane.conftest import small_gguf


def test_every_telemetry_flag_becomes_a_stored_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with operator_shell(tmp_path, capsys) as sh:
        sh.cp.enroll("kiosk-0", tags=["hw=rpi5"])
        artifact = sh.cp.upload(small_gguf(tmp_path, seed=4))
        sh.cp.publish([artifact["id"]], name="kiosk-assistant", version="1.1.0")
        created = sh.run(
            "rollout", "create", "--release", "kiosk-assistant@1.1.0", "--cohort", "hw=rpi5",
            "--stages", "10,100", "--max-p95-regression", "20%", "--max-tpot-regression",
            "0.3", "--max-vision-p95-regression", "50%", "--max-error-rate-increase", "2%",
            "--telemetry-min-sample", "4", "--telemetry-min-requests", "50", role="operator",
        ).data  # fmt: skip
        gates = created["plan"]["gate"]["gates"]
        sample = {"min_sample": 4, "min_observations": 50}
        for metric, limit in (
            ("chat_ttft", 0.2),
            ("chat_time_per_token", 0.3),
            ("vision", 0.5),
        ):
            assert {
                "type": "latency_regression",
                "metric": metric,
                "quantile": 0.95,
                "max_regression": limit,
                **sample,
            } in gates
        assert {"type": "error_rate_regression", "max_increase": 0.02, **sample} in gates
        bad = sh.run(
            "rollout", "create", "--release", "kiosk-assistant@1.1.0", "--cohort", "hw=rpi5",
            "--max-p95-regression=-5%", role="operator",
        )  # fmt: skip
        assert bad.code == 1 and "max_regression" in bad.err and "out of range" in bad.err
