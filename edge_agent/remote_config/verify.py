"""Verify the director's signed config document (pure: values in, ``now`` passed in).

The same checks as an assignment, in the same order: signature by the director keys the
trusted TUF root names, protocol version, device binding, monotonic version, expiry;
then the settings are checked against the schema and their digest, on the device,
whatever the control plane claims to have checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from edge_agent.errors import (
    BadUpdateError,
    ExpiredUpdateError,
    RollbackAttackError,
)
from edge_agent.trust import DirectorTrust, open_director_document
from protocol import SignedEnvelope
from protocol.remote_config import (
    CONFIG_PAYLOAD_TYPE,
    ConfigDocument,
    RemoteConfig,
    config_digest,
    config_problems,
)

__all__ = ["ConfigVerdict", "InvalidRemoteConfigError", "verify_config_document"]


class InvalidRemoteConfigError(BadUpdateError):
    """A signed config does not fit this agent's schema (unknown key, bad value)."""


@dataclass(frozen=True)
class ConfigVerdict:
    """A verified config document; ``is_new``: a version above the one applied."""

    document: ConfigDocument
    config: RemoteConfig | None  # checked only when new
    is_new: bool


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def verify_config_document(
    envelope: SignedEnvelope,
    *,
    director: DirectorTrust,
    device_id: str,
    applied_version: int | None,
    highest_accepted_version: int | None,
    now: datetime,
) -> ConfigVerdict:
    """Check a config envelope; raise a :class:`BadUpdateError` subclass that says why.

    A version below ``highest_accepted_version`` (or the applied one) is a replay; that
    version again is "nothing new" and not subject to expiry (an expired config
    stops new changes, never the one in force).
    """
    document = open_director_document(
        envelope,
        director=director,
        device_id=device_id,
        payload_type=CONFIG_PAYLOAD_TYPE,
        model=ConfigDocument,
        what="config",
        document="config document",
        keeping="config",
    )
    floor = max(v for v in (applied_version, highest_accepted_version, 0) if v is not None)
    if document.version < floor:
        raise RollbackAttackError(
            f"config version {document.version} is older than version {floor} already"
            " accepted; a replayed config is refused"
        )
    is_new = document.version > floor
    if is_new and _aware(document.expires_at) <= _aware(now):
        raise ExpiredUpdateError(
            f"config version {document.version} expired at {document.expires_at.isoformat()}:"
            " no config change until the control plane re-signs it; the current config"
            " stays in force"
        )
    if is_new:
        problems = config_problems(document.settings)
        if problems:
            listed = "; ".join(str(p) for p in problems[:10])
            raise InvalidRemoteConfigError(
                f"config version {document.version} does not fit this agent's schema: {listed};"
                " refusing it and keeping the current config"
            )
        if config_digest(document.settings) != document.digest:
            raise BadUpdateError(
                f"config version {document.version}'s settings do not match its signed digest"
            )
    config = RemoteConfig.model_validate(document.settings) if is_new else None
    return ConfigVerdict(document=document, config=config, is_new=is_new)
