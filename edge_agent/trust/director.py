"""Verify the director's per-device assignment against keys anchored in the TUF root."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

from pydantic import BaseModel, ValidationError

from edge_agent.errors import (
    BadUpdateError,
    ExpiredUpdateError,
    RollbackAttackError,
    UntrustedSignatureError,
    WrongDeviceError,
)
from protocol import (
    ASSIGNMENT_PAYLOAD_TYPE,
    DIRECTOR_ROOT_FIELD,
    PROTOCOL_VERSION,
    Assignment,
    EnvelopeFormatError,
    PublicKey,
    SignatureError,
    SignedEnvelope,
    key_id,
    public_key_from_hex,
    verify_envelope,
)


@dataclass(frozen=True)
class DirectorTrust:
    """The director keys a verified TUF root names, and how many of them must sign.

    Keys are indexed by the envelope key id (sha256 of the raw public key), recomputed
    from the public key itself, so a mislabelled entry in the root cannot alias a key.
    """

    keys: Mapping[str, PublicKey]
    threshold: int

    @classmethod
    def from_root_signed(cls, root_signed: Mapping[str, Any]) -> DirectorTrust:
        """Read the director field of a verified root's ``signed`` part."""
        return cls.from_root_field(root_signed.get(DIRECTOR_ROOT_FIELD))

    @classmethod
    def from_root_field(cls, field: object) -> DirectorTrust:
        """Parse the value of :data:`protocol.DIRECTOR_ROOT_FIELD`."""
        if not isinstance(field, Mapping):
            raise UntrustedSignatureError(
                f"the trusted root has no {DIRECTOR_ROOT_FIELD!r} field, so it trusts no"
                " director; no assignment can be accepted until the root is rotated"
            )
        threshold = field.get("threshold")
        entries = field.get("keys")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise UntrustedSignatureError("the trusted root's director threshold is not >= 1")
        if not isinstance(entries, Mapping):
            raise UntrustedSignatureError("the trusted root's director field lists no keys")
        keys: dict[str, PublicKey] = {}
        for entry in entries.values():
            if not isinstance(entry, Mapping) or entry.get("keytype") != "ed25519":
                continue
            public = entry.get("public")
            if not isinstance(public, str):
                continue
            try:
                key = public_key_from_hex(public)
            except EnvelopeFormatError:
                continue
            keys[key_id(key)] = key
        if len(keys) < threshold:
            raise UntrustedSignatureError(
                f"the trusted root names {len(keys)} usable director key(s) but requires"
                f" {threshold}; no assignment can be accepted"
            )
        return cls(keys=keys, threshold=threshold)


@dataclass(frozen=True)
class AssignmentVerdict:
    """A verified assignment, and whether it asks for anything new."""

    assignment: Assignment
    is_new: bool


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def verify_assignment(
    envelope: SignedEnvelope,
    *,
    director: DirectorTrust,
    device_id: str,
    installed_version: int | None,
    highest_accepted_version: int | None,
    now: datetime,
) -> AssignmentVerdict:
    """Check signature, device, version and expiry of an assignment, in that order.

    ``installed_version`` is the assignment version the device serves;
    ``highest_accepted_version`` the highest one that ever passed these checks. A lower
    version than either is a rollback; the installed version again is "nothing new"
    (and is not subject to expiry: an expired assignment never stops serving).
    """
    assignment = open_director_document(
        envelope,
        director=director,
        device_id=device_id,
        payload_type=ASSIGNMENT_PAYLOAD_TYPE,
        model=Assignment,
        what="assignment",
        document="assignment",
        keeping="release",
    )
    floor = max(v for v in (installed_version, highest_accepted_version, 0) if v is not None)
    if assignment.version < floor:
        raise RollbackAttackError(
            f"assignment version {assignment.version} is older than version {floor} already"
            " accepted; a replayed assignment is refused"
        )
    if assignment.version == installed_version:
        return AssignmentVerdict(assignment=assignment, is_new=False)
    if _aware(assignment.expires_at) <= _aware(now):
        raise ExpiredUpdateError(
            f"assignment version {assignment.version} expired at"
            f" {assignment.expires_at.isoformat()}: no new install until the control plane"
            " re-signs it; the device keeps serving its current release"
        )
    return AssignmentVerdict(assignment=assignment, is_new=True)


class DirectorDocument(Protocol):
    """What every director-signed per-device document carries (assignment, config)."""

    protocol_version: int
    device_id: str


D = TypeVar("D", bound=BaseModel)


def open_director_document(
    envelope: SignedEnvelope,
    *,
    director: DirectorTrust,
    device_id: str,
    payload_type: str,
    model: type[D],
    what: str,
    document: str,
    keeping: str,
) -> D:
    """The checks every director document gets first, in this order: signature by the
    director keys the trusted root names, the payload parsed as ``model``, its protocol
    version, and its binding to this device. ``what`` names it in messages ("assignment"),
    ``document`` its kind ("config document"), ``keeping`` what stays in force ("release").
    Raises a :class:`BadUpdateError` subclass that says why."""
    try:
        payload = verify_envelope(
            envelope,
            payload_type=payload_type,
            trusted_keys=director.keys,
            threshold=director.threshold,
        )
    except SignatureError as e:
        raise UntrustedSignatureError(
            f"the {what} is not signed by the director keys the trusted root names ({e});"
            f" refusing it and keeping the current {keeping}"
        ) from e
    except EnvelopeFormatError as e:
        raise BadUpdateError(f"the {what} envelope is malformed: {e}") from e
    try:
        parsed = model.model_validate(payload)
    except ValidationError as e:
        raise BadUpdateError(
            f"the signed {what} is not a valid protocol v{PROTOCOL_VERSION} {document}:"
            f" {e.error_count()} field error(s)"
        ) from e
    bound = cast(DirectorDocument, parsed)
    if bound.protocol_version != PROTOCOL_VERSION:
        raise BadUpdateError(
            f"the {what} speaks protocol v{bound.protocol_version}; this agent"
            f" speaks v{PROTOCOL_VERSION}: upgrade the agent"
        )
    if bound.device_id != device_id:
        raise WrongDeviceError(
            f"the {what} is for device {bound.device_id!r}, not this device"
            f" ({device_id!r}); refusing it"
        )
    return parsed
