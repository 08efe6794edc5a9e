"""Request-scoped dependencies: the service parts, the operator, the device."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from control_plane.access.roles import Permission
from control_plane.access.tokens import Principal, authenticate_api_token
from control_plane.errors import AuthenticationError, InvalidRequestError
from control_plane.fleet.devices import public_key_of
from control_plane.fleet.request_nonces import remember_nonce
from control_plane.services import ControlPlane
from protocol.device_auth import DeviceAuthHeader, nonce_expiry, verify_device_request
from protocol.errors import ProtocolError
from protocol.keys import public_key_from_hex

MAX_DEVICE_BODY_BYTES = 64 * 1024


def get_control_plane(request: Request) -> ControlPlane:
    control_plane: ControlPlane = request.app.state.control_plane
    return control_plane


CP = Annotated[ControlPlane, Depends(get_control_plane)]


def _bearer_secret(request: Request) -> str:
    value = request.headers.get("authorization", "")
    scheme, _, secret = value.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError("missing 'Authorization: Bearer <API token>' header")
    return secret.strip()


def _requires(permission: Permission) -> Any:
    def dependency(request: Request, cp: CP) -> Principal:
        secret = _bearer_secret(request)
        with cp.db.transaction() as session:
            principal = authenticate_api_token(session, secret)
        principal.require(permission)
        return principal

    return Depends(dependency)


Reader = Annotated[Principal, _requires(Permission.READ)]
Enroller = Annotated[Principal, _requires(Permission.ENROLL)]
Assigner = Annotated[Principal, _requires(Permission.ASSIGN)]
Publisher = Annotated[Principal, _requires(Permission.PUBLISH)]
Admin = Annotated[Principal, _requires(Permission.ADMINISTER)]


async def read_bounded_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidRequestError(f"request body exceeds {limit} bytes")
    return bytes(body)


async def authenticate_device(request: Request, cp: CP) -> tuple[str, bytes]:
    """Check the device-signed Authorization header (signature, freshness, a nonce not
    seen before); return (device id, raw body)."""
    value = request.headers.get("authorization")
    if not value:
        raise AuthenticationError("missing 'Authorization: Outpost-Device ...' header")
    try:
        header = DeviceAuthHeader.parse(value)
    except ProtocolError as e:
        raise AuthenticationError(str(e)) from e
    body = await read_bounded_body(request, MAX_DEVICE_BODY_BYTES)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")

    def check() -> None:
        with cp.db.transaction() as session:
            public_hex = public_key_of(session, header.device_id)
        if public_hex is None:
            raise AuthenticationError(f"device {header.device_id!r} is not enrolled here")
        try:
            verify_device_request(
                header,
                public_key_from_hex(public_hex),
                request.method,
                path,
                body,
                cp.clock().timestamp(),
            )
        except ProtocolError as e:
            raise AuthenticationError(f"device request rejected: {e}") from e
        remember_nonce(cp.db, header.device_id, header.nonce, nonce_expiry(header))

    await run_in_threadpool(check)
    return header.device_id, body
