"""Ed25519 keys: generation, files (mode 0600), key ids."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from protocol.errors import EnvelopeFormatError

PublicKey = Ed25519PublicKey


def public_key_hex(public_key: Ed25519PublicKey) -> str:
    """Raw 32-byte public key as lowercase hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Stable key id: sha256 of the raw public key bytes, hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_key_from_hex(value: str) -> Ed25519PublicKey:
    """Parse a raw Ed25519 public key given as 64 hex characters."""
    try:
        raw = bytes.fromhex(value)
    except ValueError as e:
        raise EnvelopeFormatError("public key is not hex") from e
    if len(raw) != 32:
        raise EnvelopeFormatError(f"public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class Ed25519KeyPair:
    """A private key with its derived public key and key id."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    @property
    def public_hex(self) -> str:
        return public_key_hex(self.public)


def generate_key_pair() -> Ed25519KeyPair:
    """A fresh Ed25519 key pair."""
    return Ed25519KeyPair(Ed25519PrivateKey.generate())


def write_private_key(pair: Ed25519KeyPair, path: Path) -> None:
    """Write a private key as PKCS#8 PEM, created with mode 0600, atomically."""
    pem = pair.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_private_key(path: Path) -> Ed25519KeyPair:
    """Read a PKCS#8 PEM Ed25519 private key written by :func:`write_private_key`."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise EnvelopeFormatError(f"{path} does not hold an Ed25519 private key")
    return Ed25519KeyPair(key)
