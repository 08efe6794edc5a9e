"""Fuzz the control plane's OpenAPI schema: every operation, as an operator and as a device.

The real app (SQLite, its workers running) is served by uvicorn on loopback. Operator
routes get the admin token (the role matrix is tested on its own); device routes get a
real signature from an enrolled device over the exact bytes sent, and its own device id in
the body; the enrollment route gets a real one-time token three times in four. Path
parameters name real objects three times in four, so the fuzz reaches the services and
not only the 404s.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import strategies as st

from protocol import paths
from protocol.device_auth import sign_device_request
from protocol.keys import generate_key_pair
from protocol.messages import ARTIFACT_FORMATS, ARTIFACT_KINDS, StatusReport
from protocol.remote_config import ConfigReport
from protocol.telemetry import TelemetryReport
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    FakeDevice,
    make_control_plane,
    small_gguf,
)
from tests.fuzz.harness import (
    FuzzReport,
    KnownIssue,
    document_body,
    fuzz,
    json_body,
    load_schema,
    model_schema,
)
from tests.live_server import serving

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("OUTPOST_FUZZ_EXAMPLES", "60"))
SEED = int(os.environ.get("OUTPOST_FUZZ_SEED", "0"))
DEVICE_PREFIX = "/api/v1/device/"
# Three times in four (and first when shrinking): name a real object, not a random one.
MOSTLY = st.sampled_from([True, True, True, False])


# Found by this fuzz and fixed (each known issue gets a KnownIssue here and an xfail test).
KNOWN: list[KnownIssue] = []


class Bearer(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


class DeviceSignature(requests.auth.AuthBase):
    """Signs the prepared request (method, path with query, body bytes) as the device."""

    def __init__(self, device: FakeDevice) -> None:
        self.device = device

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        assert r.method is not None
        r.headers["Authorization"] = sign_device_request(
            self.device.key,
            self.device.id,
            r.method,
            r.path_url,
            body,
            self.device.cp.clock().timestamp(),
        )
        return r


class World:
    """A control plane with one of each object, so generated ids can name real ones."""

    def __init__(self, cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
        self.cp = cp
        self.device = cp.enroll("fuzz-kiosk", tags=["fuzz"])
        artifact = cp.upload(small_gguf(tmp_path), name="fuzz-model")
        self.release = cp.publish([artifact["id"]], name="fuzz", version="1.0.0")
        cp.assign(self.device.id, self.release["id"])
        self.real_ids: dict[str, list[str]] = {
            "device_id": [self.device.id],
            "artifact_id": [artifact["id"]],
            "release_ref": [self.release["id"], "fuzz@1.0.0"],
            "sha256": [artifact["sha256"]],
            "scope": ["fleet", "tag:fuzz", f"device:{self.device.id}"],
        }
        # query parameters the services check beyond the schema (the artifact upload)
        self.real_query: dict[str, st.SearchStrategy[str]] = {
            "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True),
            "kind": st.sampled_from(ARTIFACT_KINDS),
            "format": st.sampled_from(ARTIFACT_FORMATS),
        }

    def prepare(
        self, case: Any, draw: Callable[[st.SearchStrategy[Any]], Any]
    ) -> requests.auth.AuthBase:
        for name, values in self.real_ids.items():
            if case.path_parameters and name in case.path_parameters and draw(MOSTLY):
                case.path_parameters[name] = draw(st.sampled_from(values))
        for name, valid in self.real_query.items():
            if case.query and name in case.query and draw(MOSTLY):
                case.query[name] = draw(valid)
        body = json_body(case)
        if case.path == paths.ENROLL:
            if body is not None and draw(MOSTLY):
                body["token"] = self.cp.enrollment_token()
                body["device_public_key"] = generate_key_pair().public_hex
            return Bearer("not-a-token")  # enrollment's credential is the one-time token
        if case.path.startswith(DEVICE_PREFIX):
            if body is not None and "device_id" in body:
                body["device_id"] = self.device.id  # another device's id: tests/control_plane
            return DeviceSignature(self.device)
        return Bearer(self.cp.admin_token)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    tmp_path = tmp_path_factory.mktemp("fuzz-cp")
    cp = make_control_plane(tmp_path)
    with cp.client, serving(cp.app) as url:
        yield World(cp, tmp_path), url


def control_plane_spec(cp: ControlPlaneUnderTest) -> dict[str, Any]:
    """The served schema, plus the bodies of the routes that read them raw: the device
    reports (signed over their bytes) and the artifact upload (streamed to disk)."""
    spec: dict[str, Any] = copy.deepcopy(cp.app.openapi())
    for path, model in (
        (paths.DEVICE_STATUS, StatusReport),
        (paths.DEVICE_CONFIG_STATUS, ConfigReport),
        (paths.DEVICE_TELEMETRY, TelemetryReport),
    ):
        document_body(spec, "post", path, "application/json", model_schema(spec, model))
    upload = {"type": "string", "format": "binary", "maxLength": 4096}
    document_body(spec, "post", "/api/v1/artifacts", "application/octet-stream", upload)
    return spec


@pytest.mark.slow  # about a minute: not in the quick loop (make unit), always in make test
def test_fuzz_every_operation_no_5xx_and_answers_match_the_schema(
    world: tuple[World, str],
) -> None:
    w, url = world
    schema = load_schema(control_plane_spec(w.cp), url)
    report: FuzzReport = fuzz(
        schema, base_url=url, prepare=w.prepare, examples=EXAMPLES, known=KNOWN, fuzz_seed=SEED
    )
    print(report.summary(), report.table(), sep="\n")
    assert report.operations >= 30, report.summary()  # the whole API, not a subset
    assert not report.unreached(), report.table()
    assert not report.findings, report.failure_message()


def test_a_config_report_whose_version_is_past_int64_is_refused_with_a_4xx(
    tmp_path: Path,
) -> None:
    cp = make_control_plane(tmp_path)
    with cp.client:
        device = cp.enroll()
        report = {
            "report_id": uuid.uuid4().hex,
            "device_id": device.id,
            "config_version": 2**70,
            "state": "applied",
            "at": cp.clock().isoformat(),
        }
        body = json.dumps(report).encode()
        path = paths.DEVICE_CONFIG_STATUS
        headers = {**device.signed_headers("POST", path, body), "Content-Type": "application/json"}
        r = cp.client.post(path, content=body, headers=headers)
    assert 400 <= r.status_code < 500, r.text
