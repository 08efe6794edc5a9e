"""The control plane's /metrics: token-protected, parses with the Prometheus client's own
parser, follows the naming conventions, and never labels a series with a device."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.control_plane.conftest import ControlPlaneUnderTest, make_control_plane, small_gguf
from tests.telemetry_cp.conftest import Reporter, telemetry_of

SCRAPE_TOKEN = "s" * 40


def _families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
    ]


def test_metrics_need_a_token_that_may_read(tcp: ControlPlaneUnderTest) -> None:
    r = tcp.client.get("/metrics")
    assert r.status_code == 401
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    r = tcp.client.get("/metrics", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401
    r = tcp.client.get("/metrics", headers=tcp.auth("viewer"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")


def test_a_dedicated_scrape_token_works_and_a_short_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        make_control_plane(tmp_path / "weak", metrics_token="short")
    cp = make_control_plane(tmp_path / "ok", metrics_token=SCRAPE_TOKEN, workers_enabled=False)
    with cp.client:
        ok = cp.client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
        assert ok.status_code == 200
        wrong = cp.client.get("/metrics", headers={"Authorization": f"Bearer {'t' * 40}"})
        assert wrong.status_code == 401


def test_metrics_parse_follow_conventions_and_carry_no_device_labels(
    tcp: ControlPlaneUnderTest, reporter: Reporter, tmp_path: Path
) -> None:
    release = tcp.publish([tcp.upload(small_gguf(tmp_path))["id"]], version="1.0.0")
    tcp.assign(reporter.id, release["id"])
    latencies = {"chat_ttft_seconds": [0.4] * 400}
    for _ in range(3):
        assert (
            reporter.send(reporter.build(release_id=release["id"], latencies=latencies)).status_code
            == 200
        )
    assert reporter.send_bytes(b"{}").status_code == 422
    telemetry_of(tcp).aggregate_pending(tcp.clock())
    tcp.client.get(f"/api/v1/devices/{reporter.id}", headers=tcp.auth("viewer"))
    text = tcp.client.get("/metrics", headers=tcp.auth("viewer")).text
    families = _families(text)
    samples = _samples(text)
    for name in (
        "outpost_cp_http_requests",
        "outpost_cp_http_request_duration_seconds",
        "outpost_cp_devices",
        "outpost_cp_rollouts",
        "outpost_cp_telemetry_reports",
        "outpost_cp_fleet_latency_p95_seconds",
    ):
        assert name in families, name
    assert families["outpost_cp_http_requests"].type == "counter"
    # no label value anywhere names a device (the device id appears in a request path)
    device_ids = {reporter.id}
    for name, labels, _value in samples:
        assert not device_ids & set(labels.values()), (name, labels)
        assert "device" not in labels and "device_id" not in labels
    routes = {labels["route"] for name, labels, _ in samples if "route" in labels}
    assert "/api/v1/devices/{device_id}" in routes
    # buckets past the client library's default 10 s
    les = {
        labels["le"]
        for name, labels, _ in samples
        if name == "outpost_cp_http_request_duration_seconds_bucket"
    }
    assert {"30.0", "60.0", "120.0"} <= les
    stored = [
        v
        for n, labels, v in samples
        if n == "outpost_cp_telemetry_reports_total" and labels["outcome"] == "stored"
    ]
    invalid = [
        v
        for n, labels, v in samples
        if n == "outpost_cp_telemetry_reports_total" and labels["outcome"] == "invalid"
    ]
    assert stored == [3.0] and invalid == [1.0]
    p95 = [(labels, v) for n, labels, v in samples if n == "outpost_cp_fleet_latency_p95_seconds"]
    assert [(lab["metric"], lab["release"], lab["device_class"]) for lab, _ in p95] == [
        ("chat_ttft", "assistant@1.0.0", "rpi5")
    ]
    assert 0.3 < p95[0][1] <= 0.5  # all 1,200 requests took 0.4 s: the (0.3, 0.5] bucket
    devices = [(labels, v) for n, labels, v in samples if n == "outpost_cp_devices"]
    assert ({"release": "none", "device_class": "rpi5", "presence": "online"}, 1.0) in devices
    tcp.clock.advance(hours=3)  # the last hour holds no telemetry: no latency series
    later = _families(tcp.client.get("/metrics", headers=tcp.auth("viewer")).text)
    assert later["outpost_cp_fleet_latency_p95_seconds"].samples == []
