"""Per-device assignments (pure: values in, values out, ``now`` passed in)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from protocol.envelope import SignedEnvelope, sign_envelope
from protocol.keys import Ed25519KeyPair
from protocol.messages import ASSIGNMENT_PAYLOAD_TYPE, Assignment, TargetRef


@dataclass(frozen=True)
class ReleaseFacts:
    """What the director needs to know about a release."""

    id: str
    name: str
    version: str
    targets: tuple[TargetRef, ...]
    config: Mapping[str, Any] = field(default_factory=dict)


def next_version(previous: int | None) -> int:
    """Assignment versions start at 1 and only ever go up, per device."""
    return 1 if previous is None else previous + 1


def build_assignment(
    *, device_id: str, version: int, release: ReleaseFacts, now: datetime, ttl: timedelta
) -> Assignment:
    issued = now.replace(microsecond=0)
    return Assignment(
        device_id=device_id,
        version=version,
        release_id=release.id,
        release_name=release.name,
        release_version=release.version,
        targets=list(release.targets),
        config=dict(release.config),
        issued_at=issued,
        expires_at=issued + ttl,
    )


def sign_assignment(assignment: Assignment, director: Ed25519KeyPair) -> SignedEnvelope:
    return sign_envelope(ASSIGNMENT_PAYLOAD_TYPE, assignment.model_dump(mode="json"), [director])


def needs_reissue(*, issued_at: datetime, expires_at: datetime, now: datetime) -> bool:
    """Past half its lifetime: re-sign, so an online device never holds an expired one."""
    return now >= issued_at + (expires_at - issued_at) / 2
