"""The HTTP surface against a hostile client (issue 8): one named test per attack.

Sockets, headers and timeouts are tested against real uvicorn servers on loopback built
by the same ``protocol.http_server.server_config`` that ``outpost-cp serve`` and the agent
use; request semantics (limits, refusals) through the app.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from control_plane.app import create_app
from control_plane.artifacts.collector import collect_orphan_blobs
from control_plane.fleet.request_nonces import prune_expired_nonces
from control_plane.storage.models import RequestNonce
from protocol import paths
from protocol.device_auth import MAX_FUTURE_SKEW_SECONDS, sign_device_request
from protocol.http_limits import HttpLimits
from protocol.http_server import server_config
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    FakeDevice,
    make_control_plane,
    reset_postgres,
    small_gguf,
)

MIB = 1 << 20
FAST = HttpLimits(
    header_timeout_seconds=0.5,
    body_idle_timeout_seconds=0.5,
    keep_alive_seconds=1,
    max_connections=1024,
)


class LimitedServer:
    """``app`` under uvicorn as the real servers run it (``server_config``), on loopback."""

    def __init__(self, app: FastAPI, limits: HttpLimits) -> None:
        config = server_config(
            app, host="127.0.0.1", port=0, limits=limits, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def __enter__(self) -> LimitedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def healthz_seconds(self) -> float:
        t0 = time.monotonic()
        r = httpx.get(f"{self.url}/healthz", timeout=10)
        assert r.status_code == 200, r.text
        return time.monotonic() - t0


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes (b"" on a reset)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def is_closed(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.fixture
def live(cp: ControlPlaneUnderTest) -> Iterator[LimitedServer]:
    with LimitedServer(cp.app, FAST) as server:
        yield server


# --- row 2: oversized and endless headers -------------------------------------------------


def endless_header(server: LimitedServer, total: int) -> tuple[int, bytes, float]:
    """Send one header line of up to ``total`` bytes; return (bytes sent, reply, seconds)."""
    t0 = time.monotonic()
    sent = 0
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        chunk = b"a" * MIB
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_until_closed(sock, 5)
    return sent, reply, time.monotonic() - t0


def test_an_endless_128_mib_header_is_cut_off_and_healthz_keeps_answering(
    live: LimitedServer,
) -> None:
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            latencies.append(live.healthz_seconds())
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        sent, reply, seconds = endless_header(live, 128 * MIB)
    finally:
        stop.set()
        prober.join()
    assert sent < 16 * MIB, f"the server read {sent >> 20} MiB of one header"
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert seconds < 5
    assert latencies and max(latencies) < 1.0, f"/healthz took up to {max(latencies):.1f} s"


def test_a_header_over_the_cap_gets_431(live: LimitedServer) -> None:
    with live.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (80 * 1024))
        reply = read_until_closed(sock, 5)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert b"65536 bytes" in reply


def test_a_body_is_not_counted_as_header(live: LimitedServer, cp: ControlPlaneUnderTest) -> None:
    """Headers and a large body in one write: only the headers count against the cap."""
    body = json.dumps({"name": "x" * (512 * 1024), "role": "viewer"}).encode()
    head = (
        f"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {cp.admin_token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with live.connect() as sock:
        sock.sendall(head + body)
        reply = sock.recv(200)
    assert reply.startswith(b"HTTP/1.1 422"), reply  # the name is too long: the app answered


def test_agent_local_api_refuses_a_64_mib_header(tmp_path: Path) -> None:
    from edge_agent.api import create_local_api
    from edge_agent.daemon import LOCAL_API_HTTP_LIMITS
    from edge_agent.runtime import ModelRegistry
    from edge_agent.settings import AgentSettings

    settings = AgentSettings(state_dir=tmp_path / "agent")
    app = create_local_api(ModelRegistry(settings, loaders={}), settings, api_token="t" * 24)
    with LimitedServer(app, LOCAL_API_HTTP_LIMITS) as agent:
        sent, reply, seconds = endless_header(agent, 64 * MIB)
        assert sent < 16 * MIB and seconds < 5
        assert reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply[:100]
        assert agent.healthz_seconds() < 1.0


def test_agent_local_api_refuses_a_big_body_before_authentication(tmp_path: Path) -> None:
    from edge_agent.api import create_local_api
    from edge_agent.daemon import LOCAL_API_HTTP_LIMITS
    from edge_agent.runtime import ModelRegistry
    from edge_agent.settings import AgentSettings

    settings = AgentSettings(state_dir=tmp_path / "agent")
    app = create_local_api(ModelRegistry(settings, loaders={}), settings, api_token="t" * 24)
    with LimitedServer(app, LOCAL_API_HTTP_LIMITS) as agent, agent.connect() as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 268435456\r\n\r\n"
        )
        reply = read_until_closed(sock, 5)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}  # the agent's error shape
    assert str(settings.max_request_bytes) in error["message"]


def test_headers_sent_slowly_are_cut_at_the_deadline(live: LimitedServer) -> None:
    with live.connect() as sock:
        t0 = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):  # a byte every 0.2 s: each arrives in time, the whole never does
            time.sleep(0.2)
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
        reply = read_until_closed(sock, 5)
        assert time.monotonic() - t0 < 3
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]


# --- row 3: bodies capped before authentication and parsing ------------------------------


def test_a_declared_256_mib_body_without_a_token_is_refused_before_it_is_sent(
    live: LimitedServer,
) -> None:
    with live.connect() as sock:
        sock.sendall(
            b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 268435456\r\n\r\n"
        )
        reply = read_until_closed(sock, 5)  # not one body byte was sent
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"connection: close" in head.lower()
    message = json.loads(body)["error"]["message"]
    assert "1048576 bytes" in message and "/api/v1/tokens" in message


def test_a_streamed_256_mib_body_without_a_token_is_cut_off_without_growing_memory(
    live: LimitedServer,
) -> None:
    """Chunked (no Content-Length): counted as it arrives, 413 once past 1 MiB. The server
    runs in this process: its peak RSS growth is measured while the body streams."""
    me = psutil.Process()
    before = me.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, me.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"name": "'
        chunk = b"a" * MIB
        while sent < 256 * MIB:
            sent += len(chunk)
            yield chunk

    try:
        r = httpx.post(
            f"{live.url}/api/v1/tokens",
            content=body(),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        status: int | None = r.status_code
    except httpx.HTTPError:  # the server closed while the client was still sending
        status = None
    finally:
        done.set()
        sampler.join()
    growth = (peak - before) / MIB
    assert status in (413, None)
    assert growth < 64, f"RSS grew {growth:.0f} MiB for a refused body"
    assert sent < 64 * MIB, f"the server kept reading: {sent >> 20} MiB sent"


def test_enrollment_and_device_bodies_are_capped_at_64_kib(cp: ControlPlaneUnderTest) -> None:
    big = b'{"token": "' + b"a" * (70 * 1024) + b'"}'
    for path in (paths.ENROLL, paths.DEVICE_STATUS):
        r = cp.client.post(path, content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413, (path, r.text)
        assert "65536 bytes" in r.json()["error"]["message"]


def test_artifact_uploads_keep_their_larger_limit(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    data = small_gguf(tmp_path, values=600_000)  # 2.3 MiB: over the 1 MiB default
    assert len(data) > 2 * MIB
    assert cp.upload(data)["length"] == len(data)


# --- row 7: idle and half-open connections, the connection cap -----------------------------


def test_idle_and_half_open_connections_are_closed(live: LimitedServer) -> None:
    idle = [live.connect() for _ in range(20)]
    half = [live.connect() for _ in range(20)]
    for sock in half:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
    kept_alive = live.connect()
    kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept_alive.recv(4096).startswith(b"HTTP/1.1 200")
    time.sleep(FAST.header_timeout_seconds + FAST.keep_alive_seconds + 0.5)
    try:
        for sock in [*idle, *half, kept_alive]:
            assert is_closed(sock, 1.0), "a connection was still open after its timeout"
    finally:
        for sock in [*idle, *half, kept_alive]:
            sock.close()


def test_a_body_that_stops_arriving_is_cut_off(live: LimitedServer) -> None:
    with live.connect() as sock:
        sock.sendall(
            b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"name": '
        )
        t0 = time.monotonic()
        assert is_closed(sock, 5.0)
        assert time.monotonic() - t0 < FAST.body_idle_timeout_seconds + 2


def test_connections_over_the_cap_get_503_and_service_recovers(
    cp: ControlPlaneUnderTest,
) -> None:
    limits = HttpLimits(header_timeout_seconds=1.0, keep_alive_seconds=1, max_connections=16)
    with LimitedServer(cp.app, limits) as server:
        held = [server.connect() for _ in range(16)]
        time.sleep(0.2)
        with server.connect() as extra:
            reply = read_until_closed(extra, 5)
        assert reply.startswith(b"HTTP/1.1 503"), reply[:100]
        assert b"retry-after: 1" in reply.lower()
        time.sleep(limits.header_timeout_seconds + 0.5)  # the held ones are cut off
        assert server.healthz_seconds() < 1.0
        for sock in held:
            sock.close()


def nofile_limit(unit: str) -> int:
    found = re.search(r"^LimitNOFILE=(\d+)$", unit, re.M)
    assert found is not None, "the unit sets no LimitNOFILE"
    return int(found.group(1))


def test_both_service_units_raise_the_open_file_limit() -> None:
    units = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
    cp_unit = (units / "outpost-control-plane.service").read_text()
    agent_unit = (units / "outpost-agent.service").read_text()
    cp_limit, agent_limit = (nofile_limit(unit) for unit in (cp_unit, agent_unit))
    from control_plane.settings import ControlPlaneSettings
    from edge_agent.daemon import LOCAL_API_HTTP_LIMITS

    assert cp_limit >= ControlPlaneSettings().http_max_connections + 1024
    assert agent_limit >= LOCAL_API_HTTP_LIMITS.max_connections + 1024


# --- row 8: integers out of range are 4xx that name the parameter --------------------------


def test_audit_before_id_beyond_int64_is_refused_naming_parameter_and_range(
    cp: ControlPlaneUnderTest,
) -> None:
    r = cp.client.get("/api/v1/audit", params={"before_id": 2**63}, headers=cp.auth())
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "before_id" in message and str(2**63 - 1) in message


def test_a_status_report_with_assignment_version_2_70_is_refused(
    cp: ControlPlaneUnderTest,
) -> None:
    device = cp.enroll()
    r = device.report(assignment_version=2**70)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "assignment_version" in message and str(2**63 - 1) in message


# --- row 9: reports must match what the director issued ------------------------------------


def _view(cp: ControlPlaneUnderTest, device: FakeDevice) -> dict[str, Any]:
    r = cp.client.get(f"/api/v1/devices/{device.id}", headers=cp.auth("viewer"))
    assert r.status_code == 200
    view: dict[str, Any] = r.json()
    return view


def test_a_report_about_a_release_never_assigned_is_refused_and_changes_nothing(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    device = cp.enroll()
    assigned = cp.publish([cp.upload(small_gguf(tmp_path, seed=1))["id"]], version="1.0.0")
    other = cp.publish([cp.upload(small_gguf(tmp_path, seed=2))["id"]], version="6.6.6")
    cp.assign(device.id, assigned["id"])
    before = _view(cp, device)

    for forged in (
        {"release_id": other["id"], "assignment_version": 2**40},  # a version never issued
        {"release_id": other["id"], "assignment_version": 1},  # v1 names another release
        {"release_id": other["id"]},  # no version at all
    ):
        r = device.report(state="active", **forged)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["type"] == "status_report_refused"
        assert (
            "never" in r.json()["error"]["message"]
            or "names release" in r.json()["error"]["message"]
        )
        assert _view(cp, device) == before, "a refused report changed the operator's view"

    genuine = device.report(state="active", release_id=assigned["id"], assignment_version=1)
    assert genuine.status_code == 200, genuine.text
    after = _view(cp, device)
    assert after["installed_release"]["version"] == "1.0.0"
    assert after["installed_assignment_version"] == 1
    assert after["last_status"]["state"] == "active"


# --- row 11: schema, route order, leftovers of a killed process ------------------------------


def test_api_schema_is_off_by_default(cp: ControlPlaneUnderTest) -> None:
    for path in ("/openapi.json", "/docs"):
        r = cp.client.get(path, headers=cp.auth())
        assert r.status_code == 404
        assert "OUTPOST_CP_API_DOCS" in r.json()["error"]["message"]


def test_api_schema_when_enabled_needs_an_operator_token(tmp_path: Path) -> None:
    cp = make_control_plane(tmp_path, api_docs=True)
    with cp.client:
        for path in ("/openapi.json", "/docs"):
            assert cp.client.get(path).status_code == 401
            r = cp.client.get(path, headers=cp.auth("viewer"))
            assert r.status_code == 200, r.text
        assert "/api/v1/audit" in cp.client.get("/openapi.json", headers=cp.auth()).json()["paths"]


def test_get_devices_enroll_is_405_not_a_device_lookup(cp: ControlPlaneUnderTest) -> None:
    for method in ("GET", "DELETE"):
        r = cp.client.request(method, paths.ENROLL, headers=cp.auth())
        assert r.status_code == 405, r.text
        assert r.headers["allow"] == "POST"
        assert "POST /api/v1/devices/enroll" in r.json()["error"]["message"]


def test_an_orphaned_blob_is_collected_after_the_grace_period(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    """A kill between committing the blob and writing its row leaves a blob no row names."""
    control_plane = cp.app.state.control_plane
    kept = cp.upload(small_gguf(tmp_path, seed=1))
    upload = control_plane.blobs.start_upload(MIB)
    upload.write(b"bytes of an upload whose row was never written")
    orphan = upload.commit(upload.finish())
    # the grace runs from the blob's mtime (real time), not from the fixture's manual clock,
    # which was read when the fixture started (seconds earlier on a loaded machine)
    now = datetime.fromtimestamp(orphan.stat().st_mtime, UTC)
    assert collect_orphan_blobs(control_plane.db, control_plane.blobs, now, grace_seconds=600) == []
    assert orphan.exists(), "inside the grace period an upload may be about to write its row"
    later = now + timedelta(seconds=601)
    removed = collect_orphan_blobs(control_plane.db, control_plane.blobs, later, grace_seconds=600)
    assert removed == [orphan]
    assert not orphan.exists()
    assert control_plane.blobs.path(kept["sha256"]).exists()


@pytest.mark.slow
def test_upload_temp_file_of_a_killed_control_plane_is_removed_at_startup(
    tmp_path: Path,
) -> None:
    cp = make_control_plane(tmp_path)  # initialized data dir
    data_dir = cp.settings.data_dir
    tmp_dir = cp.settings.blobs_dir / "tmp"
    cp.app.state.control_plane.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = Path(sys.executable).parent / "outpost-cp"

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(cli), "serve", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.kill()
        raise RuntimeError("outpost-cp serve did not start")

    proc = serve()
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            (
                "POST /api/v1/artifacts?name=m&kind=llm&format=gguf HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {cp.admin_token}\r\n"
                "Content-Length: 10000000\r\n\r\n"
            ).encode()
            + b"GGUF"
            + b"\0" * (2 * MIB)
        )
        deadline = time.monotonic() + 10
        while not list(tmp_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        leftovers = list(tmp_dir.iterdir())
        assert leftovers, "the upload never reached the temp folder"
        os.kill(proc.pid, signal.SIGKILL)  # mid-upload
        proc.wait(10)
        sock.close()
        assert all(p.exists() for p in leftovers)
        proc = serve()
        assert not any(p.exists() for p in leftovers), "the killed upload's temp file stayed"
    finally:
        proc.kill()
        proc.wait(10)


# --- row 12: signed device requests are single-use ------------------------------------------


def _poll(cp: ControlPlaneUnderTest, client: TestClient, authorization: str) -> httpx.Response:
    return client.get(paths.DEVICE_ASSIGNMENT, headers={"Authorization": authorization})


def test_a_replayed_device_request_is_refused(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll()
    captured = device.signed_headers("GET", paths.DEVICE_ASSIGNMENT)["Authorization"]
    assert _poll(cp, cp.client, captured).status_code == 204
    replay = _poll(cp, cp.client, captured)
    assert replay.status_code == 401
    assert replay.json()["error"]["type"] == "request_replayed"
    assert device.get_assignment().status_code == 204, "a freshly signed request still works"


def test_a_request_without_a_nonce_is_refused(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll()
    header = device.signed_headers("GET", paths.DEVICE_ASSIGNMENT)["Authorization"]
    without = re.sub(r",nonce=[0-9a-f]{32}", "", header)
    r = _poll(cp, cp.client, without)
    assert r.status_code == 401 and "nonce" in r.json()["error"]["message"]


def test_future_timestamps_beyond_the_skew_window_are_refused(
    cp: ControlPlaneUnderTest,
) -> None:
    device = cp.enroll()
    now = cp.clock().timestamp()

    def signed_at(ts: float) -> str:
        return sign_device_request(device.key, device.id, "GET", paths.DEVICE_ASSIGNMENT, b"", ts)

    assert _poll(cp, cp.client, signed_at(now + MAX_FUTURE_SKEW_SECONDS - 5)).status_code == 204
    ahead = _poll(cp, cp.client, signed_at(now + 60))
    assert ahead.status_code == 401 and "ahead" in ahead.json()["error"]["message"]
    assert _poll(cp, cp.client, signed_at(now - 290)).status_code == 204, "slow links still ok"


def test_expired_nonces_are_pruned_and_live_ones_kept(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll()
    assert device.get_assignment().status_code == 204
    db = cp.app.state.control_plane.db

    def count() -> int:
        with db.transaction() as session:
            return int(session.scalar(select(func.count()).select_from(RequestNonce)) or 0)

    assert count() == 1
    assert prune_expired_nonces(db, cp.clock() + timedelta(seconds=200)) == 0
    assert count() == 1, "a request still inside its window keeps its nonce"
    assert prune_expired_nonces(db, cp.clock() + timedelta(seconds=400)) == 1
    assert count() == 0


@pytest.mark.postgres
def test_a_request_replayed_to_another_replica_is_refused(
    tmp_path: Path, postgres_url: str
) -> None:
    reset_postgres(postgres_url)
    first = make_control_plane(tmp_path, postgres_url)
    second_app = create_app(first.settings, clock=first.clock)  # another replica, same db
    with first.client, TestClient(second_app) as second:
        device = first.enroll()
        captured = device.signed_headers("GET", paths.DEVICE_ASSIGNMENT)["Authorization"]
        assert _poll(first, first.client, captured).status_code == 204
        replay = _poll(first, second, captured)
        assert replay.status_code == 401, replay.text
        assert replay.json()["error"]["type"] == "request_replayed"
        fresh = device.signed_headers("GET", paths.DEVICE_ASSIGNMENT)["Authorization"]
        assert _poll(first, second, fresh).status_code == 204


def test_reports_still_deliver_once_each(cp: ControlPlaneUnderTest) -> None:
    """The nonce guards the request, ``report_id`` the report: a re-sent report (new
    request, same report) is a duplicate, not a replay."""
    device = cp.enroll()
    report_id = uuid.uuid4().hex
    assert device.report(report_id=report_id, state="downloading").json()["duplicate"] is False
    assert device.report(report_id=report_id, state="downloading").json()["duplicate"] is True
