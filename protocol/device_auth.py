"""Device request authentication: each request is signed with the device key.

Header: ``Authorization: Outpost-Device id=<device id>,ts=<unix seconds>,sig=<hex>``.
The signature covers method, path (with query), timestamp and the body's sha256.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from protocol.errors import EnvelopeFormatError, SignatureError, StaleRequestError
from protocol.keys import Ed25519KeyPair, PublicKey

SCHEME = "Outpost-Device"
MAX_CLOCK_SKEW_SECONDS = 300
_HEADER = re.compile(r"^Outpost-Device id=([A-Za-z0-9_-]{1,64}),ts=(\d{1,12}),sig=([0-9a-f]{128})$")


@dataclass(frozen=True)
class DeviceAuthHeader:
    device_id: str
    timestamp: int
    signature: bytes

    @classmethod
    def parse(cls, value: str) -> DeviceAuthHeader:
        m = _HEADER.match(value.strip())
        if m is None:
            raise EnvelopeFormatError(
                "Authorization header must be 'Outpost-Device id=<id>,ts=<unix>,sig=<hex>'"
            )
        return cls(m.group(1), int(m.group(2)), bytes.fromhex(m.group(3)))


def _message(method: str, path: str, timestamp: int, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"outpost-device-request/v1\n{method.upper()}\n{path}\n{timestamp}\n{digest}".encode()


def sign_device_request(
    key: Ed25519KeyPair, device_id: str, method: str, path: str, body: bytes, now: float
) -> str:
    """The Authorization header value for one request."""
    ts = int(now)
    sig = key.private.sign(_message(method, path, ts, body))
    return f"{SCHEME} id={device_id},ts={ts},sig={sig.hex()}"


def verify_device_request(
    header: DeviceAuthHeader,
    public_key: PublicKey,
    method: str,
    path: str,
    body: bytes,
    now: float,
) -> None:
    """Raise unless the header's signature is valid and fresh."""
    if abs(now - header.timestamp) > MAX_CLOCK_SKEW_SECONDS:
        raise StaleRequestError(
            f"request timestamp is {int(now - header.timestamp)} s away from server time;"
            f" allowed skew is {MAX_CLOCK_SKEW_SECONDS} s (check the device clock)"
        )
    try:
        public_key.verify(header.signature, _message(method, path, header.timestamp, body))
    except InvalidSignature as e:
        raise SignatureError("device request signature does not verify") from e
