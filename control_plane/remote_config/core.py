"""The remote-config rules (pure: values in, values out, ``now`` passed in).

A scope is ``fleet``, ``tag:<key>=<value>`` or ``device:<id>``. A change to a scope is a
JSON merge patch (RFC 7386, ``null`` removes a key) applied to that scope's layer; the
result must be a valid :class:`protocol.remote_config.RemoteConfig` on its own, and so is
every merge of valid layers. A device's effective config is
:func:`protocol.remote_config.effective_config` over the layers that match it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from control_plane.errors import InvalidRequestError
from protocol.envelope import SignedEnvelope, sign_envelope
from protocol.keys import Ed25519KeyPair
from protocol.remote_config import (
    CONFIG_PAYLOAD_TYPE,
    ConfigDocument,
    ConfigProblem,
    config_digest,
    config_problems,
    effective_config,
    merge_patch,
)

ScopeKind = Literal["fleet", "tag", "device"]
_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,64}=[A-Za-z0-9_.-]{1,128}$")  # as device tags
_DEVICE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_PATCH_DEPTH = 4


class ConfigValidationError(InvalidRequestError):
    """A config change does not fit the schema; ``problems`` name each pointer and rule."""

    error_type = "invalid_config"

    def __init__(self, message: str, problems: Sequence[ConfigProblem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True, order=True)
class Scope:
    """Where a layer applies: the whole fleet, the devices with one tag, or one device."""

    kind: ScopeKind
    key: str = ""

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, _, key = text.strip().partition(":")
        if kind == "fleet" and not key:
            return cls("fleet")
        if kind == "tag" and _TAG.match(key):
            return cls("tag", key)
        if kind == "device" and _DEVICE.match(key):
            return cls("device", key)
        raise ConfigValidationError(
            f"scope {text!r} is not one of 'fleet', 'tag:<key>=<value>' or 'device:<device id>'"
        )

    @classmethod
    def stored(cls, kind: str, key: str) -> Scope:
        """A scope as a layer row holds it (kind and key apart), checked like typed text."""
        return cls.parse(kind if kind == "fleet" else f"{kind}:{key}")

    def __str__(self) -> str:
        return self.kind if self.kind == "fleet" else f"{self.kind}:{self.key}"

    def matches(self, device_id: str, tags: Sequence[str]) -> bool:
        if self.kind == "fleet":
            return True
        if self.kind == "tag":
            return self.key in tags
        return self.key == device_id


def _depth(value: Any) -> int:
    if isinstance(value, Mapping):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def apply_change(scope: Scope, layer: Mapping[str, Any], patch: Any) -> dict[str, Any]:
    """The layer after ``patch``; raises :class:`ConfigValidationError` naming each
    JSON pointer and the rule it breaks (the layer is then unchanged)."""
    if not isinstance(patch, Mapping):
        raise ConfigValidationError(
            f"a config change for {scope} must be a JSON object (a merge patch)",
            [ConfigProblem("", "must be an object")],
        )
    if _depth(patch) > MAX_PATCH_DEPTH:
        raise ConfigValidationError(
            f"a config change nests deeper than {MAX_PATCH_DEPTH} levels; no setting does",
            [ConfigProblem("", f"nesting deeper than {MAX_PATCH_DEPTH}")],
        )
    result = merge_patch(layer, patch)
    problems = config_problems(result)
    if problems:
        listed = "; ".join(str(p) for p in problems[:10])
        raise ConfigValidationError(
            f"config for {scope} refused, nothing changed: {listed} (the schema:"
            " docs/remote-config.schema.json)",
            problems,
        )
    return dict(result)


@dataclass(frozen=True)
class Layers:
    """The current layers of the fleet (each scope's newest version), and the patches of
    the config rollouts that have reached each device (oldest rollout first).

    Merge order: fleet < tag layers (sorted) < rollout patches < device layer, so a
    rollout patch reaches what a tag layer sets, and a device's own layer still wins."""

    fleet: Mapping[str, Any]
    tags: Mapping[str, Mapping[str, Any]]
    devices: Mapping[str, Mapping[str, Any]]
    rollouts: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)

    def layer(self, scope: Scope) -> Mapping[str, Any]:
        """The newest settings of one scope's layer (empty when it has none)."""
        if scope.kind == "fleet":
            return self.fleet
        source = self.tags if scope.kind == "tag" else self.devices
        return source.get(scope.key, {})

    def effective(
        self, device_id: str, tags: Sequence[str], *, extra: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """The device's effective config; ``extra`` patches go after its rollout patches
        (what the device would get if one more rollout reached it)."""
        matching = {tag: self.tags[tag] for tag in tags if tag in self.tags}
        result = effective_config(self.fleet, matching, None)
        for patch in [*self.rollouts.get(device_id, ()), *extra]:
            result = merge_patch(result, patch)
        device = self.devices.get(device_id)
        return merge_patch(result, device) if device else result


def needs_issue(
    *,
    issued_digest: str | None,
    issued_at: datetime | None,
    expires_at: datetime | None,
    effective_digest: str,
    now: datetime,
) -> bool:
    """A new signed version is due when the effective config changed, or the issued one
    is past half its lifetime (so an online device never holds an expired one). A device
    that never had a config gets one only once some layer applies to it."""
    if issued_digest is None or issued_at is None or expires_at is None:
        return effective_digest != config_digest({})
    if issued_digest != effective_digest:
        return True
    return now >= issued_at + (expires_at - issued_at) / 2


def build_document(
    *, device_id: str, version: int, settings: Mapping[str, Any], now: datetime, ttl: timedelta
) -> ConfigDocument:
    issued = now.replace(microsecond=0)
    return ConfigDocument(
        device_id=device_id,
        version=version,
        settings=dict(settings),
        digest=config_digest(settings),
        issued_at=issued,
        expires_at=issued + ttl,
    )


def sign_document(document: ConfigDocument, director: Ed25519KeyPair) -> SignedEnvelope:
    return sign_envelope(CONFIG_PAYLOAD_TYPE, document.model_dump(mode="json"), [director])
