"""Device request authentication: each request is signed with the device key.

Header: ``Authorization: Outpost-Device id=<device id>,ts=<unix seconds>,nonce=<hex>,sig=<hex>``.
The signature covers method, path (with query), timestamp, nonce and the body's sha256.

A request is fresh from ``MAX_PAST_SKEW_SECONDS`` before the server's clock to
``MAX_FUTURE_SKEW_SECONDS`` after it. Within that window the nonce makes it single-use:
the server remembers each (device, nonce) until :func:`nonce_expiry` and refuses the same
pair again, so a captured request cannot be replayed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from protocol.errors import EnvelopeFormatError, SignatureError, StaleRequestError
from protocol.keys import Ed25519KeyPair, PublicKey

SCHEME = "Outpost-Device"
# a request signed up to this long ago is still accepted (slow links, retries)
MAX_PAST_SKEW_SECONDS = 300
# a device clock may run ahead of the server's by at most this much
MAX_FUTURE_SKEW_SECONDS = 30
NONCE_HEX_CHARS = 32
_HEADER = re.compile(
    r"^Outpost-Device id=([A-Za-z0-9_-]{1,64}),ts=(\d{1,12}),nonce=([0-9a-f]{32}),"
    r"sig=([0-9a-f]{128})$"
)


@dataclass(frozen=True)
class DeviceAuthHeader:
    device_id: str
    timestamp: int
    nonce: str
    signature: bytes

    @classmethod
    def parse(cls, value: str) -> DeviceAuthHeader:
        m = _HEADER.match(value.strip())
        if m is None:
            raise EnvelopeFormatError(
                "Authorization header must be"
                " 'Outpost-Device id=<id>,ts=<unix>,nonce=<32 hex>,sig=<hex>'"
                " (an agent older than the nonce protocol must be upgraded)"
            )
        return cls(m.group(1), int(m.group(2)), m.group(3), bytes.fromhex(m.group(4)))


def _message(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return (
        f"outpost-device-request/v2\n{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}"
    ).encode()


def new_nonce() -> str:
    return secrets.token_hex(NONCE_HEX_CHARS // 2)


def sign_device_request(
    key: Ed25519KeyPair,
    device_id: str,
    method: str,
    path: str,
    body: bytes,
    now: float,
    *,
    nonce: str | None = None,
) -> str:
    """The Authorization header value for one request (a fresh nonce unless given)."""
    ts = int(now)
    nonce = new_nonce() if nonce is None else nonce
    if not re.fullmatch(r"[0-9a-f]{32}", nonce):
        raise ValueError("a request nonce is 32 lowercase hex characters")
    sig = key.private.sign(_message(method, path, ts, nonce, body))
    return f"{SCHEME} id={device_id},ts={ts},nonce={nonce},sig={sig.hex()}"


def nonce_expiry(header: DeviceAuthHeader) -> int:
    """Unix time after which this request is stale anyway: its nonce may be forgotten."""
    return header.timestamp + MAX_PAST_SKEW_SECONDS


def verify_device_request(
    header: DeviceAuthHeader,
    public_key: PublicKey,
    method: str,
    path: str,
    body: bytes,
    now: float,
) -> None:
    """Raise unless the header's signature is valid and fresh (the caller checks that
    the nonce was not seen before)."""
    age = now - header.timestamp
    if age > MAX_PAST_SKEW_SECONDS:
        raise StaleRequestError(
            f"request was signed {int(age)} s ago; requests older than"
            f" {MAX_PAST_SKEW_SECONDS} s are refused (check the device clock)"
        )
    if -age > MAX_FUTURE_SKEW_SECONDS:
        raise StaleRequestError(
            f"request timestamp is {int(-age)} s ahead of server time; at most"
            f" {MAX_FUTURE_SKEW_SECONDS} s ahead is accepted (check the device clock)"
        )
    try:
        public_key.verify(
            header.signature, _message(method, path, header.timestamp, header.nonce, body)
        )
    except InvalidSignature as e:
        raise SignatureError("device request signature does not verify") from e
