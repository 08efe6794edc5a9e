"""HTTP client for the control plane's device endpoints (device-signed requests)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
from pydantic import ValidationError

from edge_agent.errors import BadUpdateError, ConfigError, TransportError
from protocol import (
    AcceptanceReport,
    AcceptanceReportAck,
    Ed25519KeyPair,
    EnrollRequest,
    EnrollResponse,
    SignedEnvelope,
    StatusReport,
    StatusReportAck,
    paths,
    sign_device_request,
)
from protocol.telemetry import TelemetryAck

MAX_MESSAGE_BYTES = 1 << 20
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)


class RequestRejectedError(TransportError):
    """The control plane answered 4xx: retrying the same request will not help."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def new_http_client(base_url: str, *, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """The one HTTP client the agent uses for its control plane (timeouts set)."""
    return httpx.Client(
        base_url=base_url,
        timeout=DEFAULT_TIMEOUT,
        transport=transport,
        headers={"User-Agent": "outpost-agent/1", "Accept-Encoding": "identity"},
        follow_redirects=False,
    )


def _detail(body: bytes) -> str:
    try:
        value = json.loads(body)
        detail = value.get("detail", value) if isinstance(value, dict) else value
        return str(detail)[:300]
    except ValueError:
        return body[:300].decode("utf-8", "replace")


def content_encoding(response: httpx.Response) -> str | None:
    """The response's Content-Encoding unless identity. The agent never inflates a body:
    a few KiB of gzip inflate to gigabytes in memory before any length bound applies."""
    value = response.headers.get("Content-Encoding", "").strip().lower()
    return None if value in ("", "identity") else value


def _send(http: httpx.Client, request: httpx.Request) -> tuple[httpx.Response, bytes]:
    """Send and read a bounded body; connection failures and 5xx become TransportError."""
    try:
        response = http.send(request, stream=True)
        try:
            encoding = content_encoding(response)
            if encoding is not None:
                raise BadUpdateError(
                    f"{request.method} {request.url.path} answered a {encoding!r}-encoded"
                    " body; the agent only accepts identity encoding; refused"
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_MESSAGE_BYTES:
                    raise BadUpdateError(
                        f"{request.method} {request.url.path} answered more than"
                        f" {MAX_MESSAGE_BYTES} bytes; refused"
                    )
        finally:
            response.close()
    except httpx.HTTPError as e:
        raise TransportError(
            f"control plane at {request.url.scheme}://{request.url.netloc.decode()} is not"
            f" reachable ({type(e).__name__}); will retry with backoff"
        ) from e
    if response.status_code >= 500:
        raise TransportError(
            f"{request.method} {request.url.path} failed with HTTP {response.status_code}:"
            f" {_detail(bytes(body))}"
        )
    if response.status_code >= 400:
        raise RequestRejectedError(
            f"{request.method} {request.url.path} was rejected with HTTP"
            f" {response.status_code}: {_detail(bytes(body))}",
            response.status_code,
        )
    return response, bytes(body)


class ControlPlaneClient:
    """The device's authenticated calls: poll its assignment, report install status."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        device_id: str,
        device_key: Ed25519KeyPair,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._device_id = device_id
        self._key = device_key
        self._clock = clock

    def _signed(self, method: str, path: str, body: bytes = b"") -> tuple[httpx.Response, bytes]:
        headers = {"Content-Type": "application/json"} if body else {}
        request = self._http.build_request(method, path, content=body, headers=headers)
        signed_path = request.url.raw_path.decode("ascii")
        request.headers["Authorization"] = sign_device_request(
            self._key, self._device_id, method, signed_path, body, self._clock()
        )
        return _send(self._http, request)

    def fetch_assignment(self) -> SignedEnvelope | None:
        """The director's current envelope for this device, or None if none is assigned."""
        response, body = self._signed("GET", paths.DEVICE_ASSIGNMENT)
        if response.status_code == 204 or not body:
            return None
        try:
            return SignedEnvelope.model_validate_json(body)
        except ValidationError as e:
            raise BadUpdateError(
                "the control plane's assignment is not a signed envelope; refused"
            ) from e

    def send_status(self, report: StatusReport) -> StatusReportAck:
        """Deliver one status report (the server dedupes by ``report_id``)."""
        body = report.model_dump_json().encode()
        _, answer = self._signed("POST", paths.DEVICE_STATUS, body)
        try:
            return StatusReportAck.model_validate_json(answer)
        except ValidationError as e:
            raise TransportError("the control plane's status acknowledgement is malformed") from e

    def send_acceptance(self, report: AcceptanceReport) -> AcceptanceReportAck:
        """Deliver the numbers of an acceptance-suite run (the server dedupes by id)."""
        _, answer = self._signed("POST", paths.DEVICE_ACCEPTANCE, report.model_dump_json().encode())
        try:
            return AcceptanceReportAck.model_validate_json(answer)
        except ValidationError as e:
            raise TransportError(
                "the control plane's acceptance acknowledgement is malformed"
            ) from e

    def send_telemetry(self, body: bytes) -> TelemetryAck:
        """Deliver one telemetry report, the bytes as queued (the server dedupes by
        ``report_id`` and answers a repeat as a duplicate)."""
        _, answer = self._signed("POST", paths.DEVICE_TELEMETRY, body)
        try:
            return TelemetryAck.model_validate_json(answer)
        except ValidationError as e:
            raise TransportError(
                "the control plane's telemetry acknowledgement is malformed"
            ) from e


def enroll_device(http: httpx.Client, request: EnrollRequest) -> EnrollResponse:
    """POST the enrollment; a rejected token becomes a :class:`ConfigError`."""
    try:
        _, body = _send(
            http,
            http.build_request(
                "POST",
                paths.ENROLL,
                # ``installed`` only when a bundle put a release here, so that a control
                # plane from before bundles (which refuses unknown fields) still enrolls it
                content=request.model_dump_json(
                    exclude={"installed"} if request.installed is None else None
                ).encode(),
                headers={"Content-Type": "application/json"},
            ),
        )
    except RequestRejectedError as e:
        raise ConfigError(f"enrollment refused: {e}") from e
    try:
        return EnrollResponse.model_validate_json(body)
    except ValidationError as e:
        raise TransportError("the control plane's enrollment answer is malformed") from e


def fetch_root_metadata(http: httpx.Client, version: int = 1) -> bytes:
    """Download ``<version>.root.json`` (untrusted bytes: the caller checks its pin)."""
    _, body = _send(http, http.build_request("GET", f"{paths.REPO_METADATA}/{version}.root.json"))
    return body
