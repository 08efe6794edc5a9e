"""A typed client for the operator HTTP API (``/api/v1``): what ``outpost-cp`` speaks.

Each method is one request (``assign`` with a ``name@version`` is two) and answers the
API's JSON unchanged, so ``--json`` can print it as is. Errors say whose fault it is:
:class:`ApiRefusedError` when the control plane answered with an error (its own message,
HTTP status and error type), :class:`ControlPlaneUnreachableError` when no answer came.
Endpoints without a method here can be called with :meth:`OperatorClient.request`.

    with OperatorClient(server="http://127.0.0.1:8700", token=token) as client:
        release = client.resolve_release("assistant@1.0.0")
        client.assign("dev_...", release["id"])
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import httpx

from control_plane.errors import ControlPlaneError

__all__ = [
    "DEFAULT_SERVER",
    "ApiRefusedError",
    "ControlPlaneUnreachableError",
    "Json",
    "OperatorClient",
    "OperatorClientError",
    "Progress",
    "Uploaded",
]

DEFAULT_SERVER = "http://127.0.0.1:8700"
UPLOAD_CHUNK_BYTES = 1 << 20

Json = dict[str, Any]
Progress = Callable[[int, int], None]
"""Called with (bytes sent so far, total bytes) as an upload streams."""


class OperatorClientError(ControlPlaneError):
    """Root of the operator client's errors."""


class ApiRefusedError(OperatorClientError):
    """The control plane answered with an error: the request, the token or the state
    of the fleet is at fault, and the message (the API's own) says which."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status} {error_type})")
        self.status = status
        self.error_type = error_type
        self.message = message


class ControlPlaneUnreachableError(OperatorClientError):
    """No answer from the control plane (wrong URL, server down, network failure)."""


@dataclass(frozen=True)
class Uploaded:
    """An upload's answer: ``created`` is False when the same bytes were stored before."""

    artifact: Json
    created: bool


def _segment(value: str) -> str:
    """``value`` as one URL path segment (``/`` and ``?`` cannot smuggle in a path)."""
    return quote(value, safe="@")


def _refusal(response: httpx.Response) -> ApiRefusedError:
    try:
        error = response.json()["error"]
        return ApiRefusedError(response.status_code, str(error["type"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiRefusedError(
            response.status_code,
            "unexpected_answer",
            f"{response.request.url} did not answer like an Outpost control plane:"
            f" {response.text[:200]!r}",
        )


def _chunks(handle: IO[bytes], total: int, progress: Progress | None) -> Iterator[bytes]:
    sent = 0
    if progress is not None:
        progress(0, total)
    while chunk := handle.read(UPLOAD_CHUNK_BYTES):
        yield chunk
        sent += len(chunk)
        if progress is not None:
            progress(sent, total)


class OperatorClient:
    """The operator API over HTTP, authenticated with one API token."""

    def __init__(
        self,
        *,
        server: str,
        token: str,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=f"{self.server}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """One request to ``/api/v1{path}``; answers a 2xx response, raises otherwise."""
        try:
            response = self._http.request(
                method,
                path,
                json=json_body,
                params=params,
                content=content,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as e:
            raise ControlPlaneUnreachableError(
                f"no answer from the control plane at {self.server}: {e}"
                " (check --server / OUTPOST_CP_URL)"
            ) from e
        if not response.is_success:
            raise _refusal(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # --- API tokens (admin) -----------------------------------------------------------

    def create_token(self, *, name: str, role: str) -> Json:
        """A new API token; its secret (``token``) is in this answer only."""
        result: Json = self._json("POST", "/tokens", json_body={"name": name, "role": role})
        return result

    def list_tokens(self) -> list[Json]:
        result: list[Json] = self._json("GET", "/tokens")
        return result

    def revoke_token(self, token_id: str) -> Json:
        result: Json = self._json("DELETE", f"/tokens/{_segment(token_id)}")
        return result

    # --- enrollment and devices -----------------------------------------------------

    def create_enrollment_token(
        self, *, tags: Sequence[str] = (), expires_in_seconds: int = 3600
    ) -> Json:
        body = {"tags": list(tags), "expires_in_seconds": expires_in_seconds}
        result: Json = self._json("POST", "/enrollment-tokens", json_body=body)
        return result

    def list_devices(
        self, *, having_tags: Sequence[str] = (), cohort: str | None = None
    ) -> list[Json]:
        """Every device, those a cohort selector matches (the server applies it, as a
        rollout would), and of those the ones carrying all of ``having_tags``."""
        params = None if cohort is None else {"cohort": cohort}
        devices: list[Json] = self._json("GET", "/devices", params=params)
        wanted = set(having_tags)
        return [d for d in devices if wanted <= set(d.get("tags", []))]

    def get_device(self, device_id: str) -> Json:
        result: Json = self._json("GET", f"/devices/{_segment(device_id)}")
        return result

    def tag_device(
        self, device_id: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> Json:
        """Add ``key=value`` tags (replacing that key's value) and remove tags
        (``key=value``, or ``key`` for any value); answers the updated device."""
        result: Json = self._json(
            "PATCH",
            f"/devices/{_segment(device_id)}/tags",
            json_body={"add": list(add), "remove": list(remove)},
        )
        return result

    def assign(self, device_id: str, release: str) -> Json:
        """Sign the device's next assignment, naming ``release`` (an id or
        ``name@version``); answers the assignment."""
        release_id = self.resolve_release(release)["id"] if "@" in release else release
        result: Json = self._json(
            "POST",
            f"/devices/{_segment(device_id)}/assignment",
            json_body={"release_id": release_id},
        )
        return result

    # --- artifacts and releases -----------------------------------------------------

    def upload_artifact(
        self,
        path: Path,
        *,
        name: str,
        kind: str,
        format: str,
        runtime: str | None = None,
        quantization: str | None = None,
        custom: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> Uploaded:
        """Stream the file at ``path`` as a new artifact, ``UPLOAD_CHUNK_BYTES`` at a time
        (never the whole file in memory), calling ``progress`` as it goes."""
        params: dict[str, str | int] = {"name": name, "kind": kind, "format": format}
        if runtime is not None:
            params["runtime"] = runtime
        if quantization is not None:
            params["quantization"] = quantization
        with path.open("rb") as handle:
            total = os.fstat(handle.fileno()).st_size
            headers = {
                "Content-Type": "application/octet-stream",
                # Declared, so the server refuses an oversized file before any byte.
                "Content-Length": str(total),
            }
            if custom is not None:
                headers["X-Outpost-Custom"] = json.dumps(dict(custom))
            response = self.request(
                "POST",
                "/artifacts",
                params=params,
                content=_chunks(handle, total, progress),
                headers=headers,
                # The server hashes and checks the file before it answers.
                timeout=httpx.Timeout(60.0, read=900.0),
            )
        return Uploaded(artifact=response.json(), created=response.status_code == 201)

    def list_artifacts(self) -> list[Json]:
        result: list[Json] = self._json("GET", "/artifacts")
        return result

    def get_artifact(self, artifact_id: str) -> Json:
        result: Json = self._json("GET", f"/artifacts/{_segment(artifact_id)}")
        return result

    def create_release(
        self,
        *,
        name: str,
        version: str,
        artifact_ids: Sequence[str],
        config: Mapping[str, Any] | None = None,
    ) -> Json:
        body = {
            "name": name,
            "version": version,
            "artifacts": list(artifact_ids),
            "config": dict(config or {}),
        }
        result: Json = self._json("POST", "/releases", json_body=body)
        return result

    def list_releases(self, *, name: str | None = None) -> list[Json]:
        params = {"name": name} if name is not None else None
        result: list[Json] = self._json("GET", "/releases", params=params)
        return result

    def resolve_release(self, ref: str) -> Json:
        """The release that ``ref`` names: an id (``rel_...``) or ``name@version``.
        Raises :class:`ApiRefusedError` (404) when there is none."""
        result: Json = self._json("GET", f"/releases/{_segment(ref)}")
        return result

    def qualification(self, ref: str, device_class: str) -> Json:
        """What devices of ``device_class`` reported from their acceptance checks of the
        release ``ref`` (id or ``name@version``), and whether that qualifies it."""
        result: Json = self._json(
            "GET",
            f"/releases/{_segment(ref)}/qualification",
            params={"device_class": device_class},
        )
        return result

    # --- audit (admin) --------------------------------------------------------------

    def audit(self, *, limit: int = 100, before_id: int | None = None) -> list[Json]:
        """Audit entries, newest first; page with ``before_id``."""
        params: dict[str, str | int] = {"limit": limit}
        if before_id is not None:
            params["before_id"] = before_id
        result: list[Json] = self._json("GET", "/audit", params=params)
        return result
