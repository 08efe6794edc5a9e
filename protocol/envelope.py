"""A signed envelope (DSSE-style pre-authentication encoding, Ed25519).

The signature covers the payload type and the exact payload bytes, so a payload
signed as one message type can never be accepted as another.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field

from protocol.canonical import canonical_json
from protocol.errors import EnvelopeFormatError, SignatureError
from protocol.keys import Ed25519KeyPair, PublicKey

_PAE_PREFIX = b"OUTPOST-DSSEv1"


def pre_auth_encoding(payload_type: str, payload: bytes) -> bytes:
    """The exact bytes that are signed for ``payload`` of ``payload_type``."""
    ptype = payload_type.encode("utf-8")
    return b" ".join(
        [_PAE_PREFIX, str(len(ptype)).encode(), ptype, str(len(payload)).encode(), payload]
    )


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keyid: str = Field(min_length=64, max_length=64)
    sig: str = Field(min_length=128, max_length=128, description="hex Ed25519 signature")


class SignedEnvelope(BaseModel):
    """A payload (base64 of canonical JSON) with one or more signatures."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    payload_type: str
    payload: str
    signatures: list[Signature] = Field(min_length=1, max_length=16)

    def payload_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise EnvelopeFormatError("envelope payload is not valid base64") from e


def sign_envelope(
    payload_type: str, payload: Mapping[str, Any], signers: list[Ed25519KeyPair]
) -> SignedEnvelope:
    """Sign ``payload`` (canonical JSON) with every key in ``signers``."""
    body = canonical_json(dict(payload))
    pae = pre_auth_encoding(payload_type, body)
    sigs = [Signature(keyid=s.key_id, sig=s.private.sign(pae).hex()) for s in signers]
    return SignedEnvelope(
        payload_type=payload_type,
        payload=base64.b64encode(body).decode("ascii"),
        signatures=sigs,
    )


def verify_envelope(
    envelope: SignedEnvelope,
    *,
    payload_type: str,
    trusted_keys: Mapping[str, PublicKey],
    threshold: int = 1,
) -> dict[str, Any]:
    """Check type and signatures; return the decoded payload.

    Raises :class:`SignatureError` unless at least ``threshold`` distinct trusted
    keys made valid signatures, and :class:`EnvelopeFormatError` for malformed data.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    if envelope.payload_type != payload_type:
        raise EnvelopeFormatError(
            f"expected payload type {payload_type!r}, got {envelope.payload_type!r}"
        )
    body = envelope.payload_bytes()
    pae = pre_auth_encoding(payload_type, body)
    good: set[str] = set()
    for signature in envelope.signatures:
        key = trusted_keys.get(signature.keyid)
        if key is None:
            continue
        try:
            key.verify(bytes.fromhex(signature.sig), pae)
        except (InvalidSignature, ValueError):
            continue
        good.add(signature.keyid)
    if len(good) < threshold:
        raise SignatureError(
            f"envelope has {len(good)} valid signature(s) by trusted keys, needs {threshold}"
        )
    try:
        decoded = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnvelopeFormatError("envelope payload is not JSON") from e
    if not isinstance(decoded, dict):
        raise EnvelopeFormatError("envelope payload must be a JSON object")
    return decoded
