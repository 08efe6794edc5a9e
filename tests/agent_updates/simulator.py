"""An in-memory control plane for fast protocol tests: an httpx transport.

It signs real TUF metadata with ``control_plane.repository`` and real director envelopes
with ``protocol.sign_envelope``, checks real device signatures, serves targets with HTTP
Range support, and dedupes status and telemetry reports by ``report_id``. Switches let a
test play the attacker or the flaky network.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from control_plane.repository import ImageRepository, RepositoryLifetimes, RoleKeys, tuf_signer
from protocol import (
    ASSIGNMENT_PAYLOAD_TYPE,
    Assignment,
    DeviceAuthHeader,
    Ed25519KeyPair,
    EnrollRequest,
    EnrollResponse,
    ProtocolError,
    PublicKey,
    SignedEnvelope,
    StatusReport,
    StatusReportAck,
    TargetRef,
    generate_key_pair,
    paths,
    public_key_from_hex,
    sign_envelope,
    verify_device_request,
)
from protocol.chunking import CHUNKS_CUSTOM_KEY, chunk_bytes, chunk_manifest_path, encode_manifest
from protocol.telemetry import MAX_TELEMETRY_REPORT_BYTES, TelemetryAck, TelemetryReport

BASE_URL = "http://control-plane.test"
ROLES = ("root", "targets", "snapshot", "timestamp", "director")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Release:
    id: str
    name: str
    version: str
    targets: list[TargetRef]
    config: dict[str, object] = field(default_factory=dict)


class ControlPlaneSimulator:
    """The other side of the protocol, in memory."""

    def __init__(self, *, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)
        self.keys: dict[str, Ed25519KeyPair] = {r: generate_key_pair() for r in ROLES}
        self.repo, self.files = ImageRepository.create(
            RoleKeys(**{r: k.public for r, k in self.keys.items()}),
            root_signer=tuf_signer(self.keys["root"]),
            targets_signer=tuf_signer(self.keys["targets"]),
            snapshot_signer=tuf_signer(self.keys["snapshot"]),
            timestamp_signer=tuf_signer(self.keys["timestamp"]),
            now=self.now,
            lifetimes=RepositoryLifetimes(),
        )
        self.blobs: dict[str, bytes] = {}  # target path -> bytes served
        self.tokens: set[str] = set()
        self.devices: dict[str, PublicKey] = {}
        self.assignments: dict[str, SignedEnvelope] = {}
        self.versions: Counter[str] = Counter()
        self.reports: dict[str, StatusReport] = {}
        self.report_posts = 0
        self.telemetry: dict[str, TelemetryReport] = {}  # report id -> report, stored once
        self.telemetry_bodies: list[bytes] = []  # every telemetry body posted, repeats too
        self.drop_telemetry_acks = False  # store the report, then lose the answer
        self.target_requests: list[tuple[str, str | None]] = []
        self.online = True
        self.drop_status_acks = False  # store the report, then lose the answer
        self.cut_targets_after: int | None = None  # serve at most this many bytes per GET
        self.hide_content_length = False  # stream targets chunked, without Content-Length
        self.streamed_bytes = 0  # bytes the device pulled from target responses, in all
        self.pulled: list[int] = []  # bytes the device pulled, per target response
        self.before_each_chunk: Callable[[], None] = lambda: None  # runs as the device reads
        self.ignore_ranges = False  # answer every Range request with the whole target (200)
        self.tamper_ranges: Callable[[bytes], bytes] | None = None  # alters bounded ranges
        self.transport = httpx.MockTransport(self._handle)

    # --- operator side ------------------------------------------------------------------

    def root_sha256(self) -> str:
        return hashlib.sha256(self.files["1.root.json"]).hexdigest()

    def enrollment_token(self) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return token

    def publish(
        self,
        name: str,
        data: bytes,
        *,
        kind: str = "llm",
        fmt: str = "gguf",
        sign_in_repository: bool = True,
        path: str | None = None,
        chunks: bytes | None = None,
    ) -> TargetRef:
        """Store an artifact and (normally) sign it into the image repository.

        ``path``: the target path to sign and serve it under (default ``<sha256>/<name>``).
        ``chunks``: a chunk manifest to sign into its custom metadata and serve beside it
        (delta updates; :func:`manifest_of` makes the right one)."""
        sha = hashlib.sha256(data).hexdigest()
        path = path or f"{sha}/{name}.{fmt}"
        self.blobs[path] = data
        custom: dict[str, object] = {"kind": kind, "format": fmt}
        if chunks is not None:
            self.blobs[chunk_manifest_path(path)] = chunks
            custom[CHUNKS_CUSTOM_KEY] = {
                "path": chunk_manifest_path(path),
                "sha256": hashlib.sha256(chunks).hexdigest(),
                "length": len(chunks),
            }
        if sign_in_repository:
            self.files.update(
                self.repo.add_targets(
                    [self.repo.target_file(path, sha, len(data), custom)],
                    targets_signer=tuf_signer(self.keys["targets"]),
                    snapshot_signer=tuf_signer(self.keys["snapshot"]),
                    timestamp_signer=tuf_signer(self.keys["timestamp"]),
                    now=self.now,
                )
            )
        return TargetRef.model_validate(
            {
                "name": name,
                "path": path,
                "sha256": sha,
                "length": len(data),
                "kind": kind,
                "format": fmt,
            }
        )

    def sign_assignment(
        self,
        device_id: str,
        release: Release,
        *,
        version: int | None = None,
        expires_in: timedelta = timedelta(days=7),
        signer: Ed25519KeyPair | None = None,
    ) -> SignedEnvelope:
        if version is None:
            self.versions[device_id] += 1
            version = self.versions[device_id]
        issued = datetime.now(UTC).replace(microsecond=0)
        assignment = Assignment(
            device_id=device_id,
            version=version,
            release_id=release.id,
            release_name=release.name,
            release_version=release.version,
            targets=release.targets,
            config=release.config,
            issued_at=issued,
            expires_at=issued + expires_in,
        )
        return sign_envelope(
            ASSIGNMENT_PAYLOAD_TYPE,
            assignment.model_dump(mode="json"),
            [signer or self.keys["director"]],
        )

    def assign(self, device_id: str, release: Release, **kw: object) -> SignedEnvelope:
        envelope = self.sign_assignment(device_id, release, **kw)  # type: ignore[arg-type]
        self.assignments[device_id] = envelope
        return envelope

    def expire_timestamp(self) -> None:
        """Re-sign timestamp.json (newer version) with an expiry already in the past."""
        self.files.update(
            self.repo.refresh_timestamp(
                tuf_signer(self.keys["timestamp"]), datetime.now(UTC) - timedelta(days=3)
            )
        )

    # --- the HTTP side ------------------------------------------------------------------

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if not self.online:
            raise httpx.ConnectError("control plane is down", request=request)
        path = request.url.path
        if path.startswith(paths.REPO_METADATA + "/"):
            name = path.removeprefix(paths.REPO_METADATA + "/")
            if name not in self.files:
                return httpx.Response(404, json={"detail": f"no metadata {name}"})
            return httpx.Response(200, content=self.files[name])
        if path.startswith(paths.REPO_TARGETS + "/"):
            return self._target(request, path.removeprefix(paths.REPO_TARGETS + "/"))
        if path == paths.ENROLL and request.method == "POST":
            return self._enroll(request)
        if path == paths.DEVICE_ASSIGNMENT and request.method == "GET":
            device_id = self._authenticated(request)
            envelope = self.assignments.get(device_id)
            if envelope is None:
                return httpx.Response(204)
            return httpx.Response(200, content=envelope.model_dump_json().encode())
        if path == paths.DEVICE_STATUS and request.method == "POST":
            self._authenticated(request)
            report = StatusReport.model_validate_json(request.content)
            self.report_posts += 1
            duplicate = report.report_id in self.reports
            self.reports.setdefault(report.report_id, report)
            if self.drop_status_acks:
                raise httpx.ReadError("connection lost before the ack", request=request)
            ack = StatusReportAck(report_id=report.report_id, duplicate=duplicate)
            return httpx.Response(200, content=ack.model_dump_json().encode())
        if path == paths.DEVICE_TELEMETRY and request.method == "POST":
            return self._telemetry(request)
        return httpx.Response(404, json={"detail": "not found"})

    def _telemetry(self, request: httpx.Request) -> httpx.Response:
        if len(request.content) > MAX_TELEMETRY_REPORT_BYTES:
            return httpx.Response(413, json={"detail": "telemetry report too large"})
        device_id = self._authenticated(request)
        self.telemetry_bodies.append(request.content)
        report = TelemetryReport.model_validate_json(request.content)
        if report.device_id != device_id:
            return httpx.Response(422, json={"detail": "report of another device"})
        duplicate = report.report_id in self.telemetry
        self.telemetry.setdefault(report.report_id, report)
        if self.drop_telemetry_acks:
            raise httpx.ReadError("connection lost before the ack", request=request)
        ack = TelemetryAck(report_id=report.report_id, duplicate=duplicate)
        return httpx.Response(200, content=ack.model_dump_json().encode())

    def _target(self, request: httpx.Request, target_path: str) -> httpx.Response:
        data = self.blobs.get(target_path)
        range_header = request.headers.get("Range")
        self.target_requests.append((target_path, range_header))
        if data is None:
            return httpx.Response(404, json={"detail": "no such target"})
        start, end = 0, len(data)
        status = 200
        headers: dict[str, str] = {}
        if range_header is not None and not self.ignore_ranges:
            m = _RANGE.match(range_header)
            if m is None or int(m.group(1)) >= len(data):
                return httpx.Response(416, headers={"Content-Range": f"bytes */{len(data)}"})
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, len(data)) if m.group(2) else len(data)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = data[start:end]
        if m_bounded(range_header) and self.tamper_ranges is not None:
            body = self.tamper_ranges(body)
        if self.cut_targets_after is not None:
            body = body[: self.cut_targets_after]
        if not self.hide_content_length:
            headers["Content-Length"] = str(len(body))
        self.pulled.append(0)
        return httpx.Response(status, content=self._counted(body), headers=headers)

    def _counted(self, body: bytes) -> Iterator[bytes]:
        """The body in 8 KiB chunks, counting what the device actually reads."""
        for i in range(0, len(body), 8192):
            self.before_each_chunk()
            self.streamed_bytes += len(body[i : i + 8192])
            self.pulled[-1] += len(body[i : i + 8192])
            yield body[i : i + 8192]

    def _enroll(self, request: httpx.Request) -> httpx.Response:
        enroll = EnrollRequest.model_validate_json(request.content)
        if enroll.token not in self.tokens:
            return httpx.Response(401, json={"detail": "unknown or used enrollment token"})
        self.tokens.discard(enroll.token)
        device_id = f"dev-{secrets.token_hex(6)}"
        self.devices[device_id] = public_key_from_hex(enroll.device_public_key)
        return httpx.Response(
            201, content=EnrollResponse(device_id=device_id).model_dump_json().encode()
        )

    def _authenticated(self, request: httpx.Request) -> str:
        header = DeviceAuthHeader.parse(request.headers["Authorization"])
        key = self.devices[header.device_id]
        try:
            verify_device_request(
                header,
                key,
                request.method,
                request.url.raw_path.decode(),
                request.content,
                datetime.now(UTC).timestamp(),
            )
        except ProtocolError as e:
            raise AssertionError(f"device request did not verify: {e}") from e
        return header.device_id


def m_bounded(range_header: str | None) -> bool:
    """A range with an end: what a delta download asks for (a resume asks for the rest)."""
    m = _RANGE.match(range_header or "")
    return m is not None and bool(m.group(2))


def manifest_of(data: bytes) -> bytes:
    """The chunk manifest the control plane publishes for ``data``."""
    return encode_manifest(chunk_bytes(data))


def gguf_bytes(tag: str, size: int = 64 * 1024) -> bytes:
    """Deterministic fake model bytes (the agent never parses them in these tests)."""
    seed = hashlib.sha256(tag.encode()).digest()
    return b"GGUF" + (seed * (size // len(seed) + 1))[: size - 4]


def release_of(sim: ControlPlaneSimulator, tag: str, **kw: object) -> Release:
    target = sim.publish(f"model-{tag}", gguf_bytes(tag), **kw)  # type: ignore[arg-type]
    return Release(id=f"rel-{tag}", name="demo", version=tag, targets=[target])
