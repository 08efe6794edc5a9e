"""Ingest of device telemetry: exactly once by report id, bounded, rate-limited per
device, signed, and every refusal says what was wrong."""

from __future__ import annotations

import json

from control_plane.telemetry.service import IngestOutcome
from tests.control_plane.conftest import ControlPlaneUnderTest
from tests.telemetry_cp.conftest import Reporter, telemetry_of


def _stored(cp: ControlPlaneUnderTest) -> int:
    return telemetry_of(cp).summary().reports_stored


def test_a_report_is_stored_once_and_a_repeat_answers_duplicate(
    tcp: ControlPlaneUnderTest, reporter: Reporter
) -> None:
    report = reporter.build(latencies={"chat_ttft_seconds": [0.2] * 30})
    first = reporter.send(report)
    assert first.status_code == 200, first.text
    assert first.json() == {"report_id": report.report_id, "duplicate": False}
    again = reporter.send(report)  # the same bytes re-signed: a retry after a lost answer
    assert again.status_code == 200, again.text
    assert again.json() == {"report_id": report.report_id, "duplicate": True}
    assert _stored(tcp) == 1
    counts = telemetry_of(tcp).counts
    assert counts[IngestOutcome.STORED] == 1
    assert counts[IngestOutcome.DUPLICATE] == 1


def test_malformed_json_is_refused_with_a_message(
    tcp: ControlPlaneUnderTest, reporter: Reporter
) -> None:
    r = reporter.send_bytes(b"{not json")
    assert r.status_code == 422
    assert "telemetry report is not valid JSON" in r.json()["error"]["message"]
    assert _stored(tcp) == 0


def test_a_report_with_wrong_histogram_length_names_the_field(
    tcp: ControlPlaneUnderTest, reporter: Reporter
) -> None:
    body = json.loads(reporter.build().model_dump_json())
    body["usage"]["chat_ttft_seconds"]["values"] = [1, 2, 3]
    r = reporter.send_bytes(json.dumps(body).encode())
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "chat_ttft_seconds" in message and "carries 3 values" in message
    assert _stored(tcp) == 0
    assert telemetry_of(tcp).counts[IngestOutcome.INVALID] == 1


def test_an_oversized_body_is_refused_before_authentication(
    tcp: ControlPlaneUnderTest, reporter: Reporter
) -> None:
    body = b'{"pad": "' + b"x" * (70 * 1024) + b'"}'
    r = tcp.client.post(
        "/api/v1/device/telemetry", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert _stored(tcp) == 0


def test_a_wrong_signature_is_refused(tcp: ControlPlaneUnderTest, reporter: Reporter) -> None:
    other = tcp.enroll("kiosk-other", tags=["hw=rpi5"])
    report = reporter.build()
    body = report.model_dump_json().encode()
    headers = reporter.device.signed_headers("POST", "/api/v1/device/telemetry", body)
    tampered = body.replace(b'"rss_bytes":209715200', b'"rss_bytes":1')
    assert tampered != body
    r = tcp.client.post(
        "/api/v1/device/telemetry",
        content=tampered,
        headers={**headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 401
    assert "signature" in r.json()["error"]["message"]
    # signed correctly, but by another device than the one the report is about
    r = reporter.send_bytes(body, signer=other)
    assert r.status_code == 403
    assert "may only report about itself" in r.json()["error"]["message"]
    assert _stored(tcp) == 0


def test_a_device_over_its_rate_gets_429_and_nothing_is_lost(
    tcp: ControlPlaneUnderTest, reporter: Reporter
) -> None:
    # the fixture allows 5 reports per 10 minutes
    for _ in range(5):
        assert reporter.send(reporter.build()).status_code == 200
    refused = reporter.build()
    r = reporter.send(refused)
    assert r.status_code == 429, r.text
    assert "limit is 5" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "telemetry_rate_limited"
    # another device is not limited by this one's rate
    neighbour = Reporter(tcp.enroll("kiosk-n", tags=["hw=rpi5"]))
    assert neighbour.send(neighbour.build()).status_code == 200
    tcp.clock.advance(minutes=11)
    assert reporter.send(refused).json() == {"report_id": refused.report_id, "duplicate": False}
    assert _stored(tcp) == 7


def test_a_report_from_the_future_is_refused(
    tcp: ControlPlaneUnderTest, reporter: Reporter
) -> None:
    tcp.clock.advance(hours=2)
    report = reporter.build()
    tcp.clock.advance(hours=-2)
    r = reporter.send(report)
    assert r.status_code == 422
    assert "ahead of the control plane's clock" in r.json()["error"]["message"]
    assert _stored(tcp) == 0


def test_a_period_without_a_utc_offset_is_taken_as_utc(
    tcp: ControlPlaneUnderTest, reporter: Reporter
) -> None:
    body = json.loads(reporter.build().model_dump_json())
    for key in ("period_start", "period_end"):
        body[key] = body[key].replace("Z", "").split("+")[0]
    r = reporter.send_bytes(json.dumps(body).encode())
    assert r.status_code == 200, r.text
    assert _stored(tcp) == 1
