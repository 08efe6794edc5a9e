"""Cross-check the director's targets against the image repository's signed targets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import BadUpdateError, UnsignedTargetError
from protocol import Assignment


@dataclass(frozen=True)
class SignedTarget:
    """A target as the verified image-repository targets metadata describes it."""

    path: str
    sha256: str
    length: int
    custom: Mapping[str, Any] = field(default_factory=dict)


def check_targets_signed(assignment: Assignment, signed: Mapping[str, SignedTarget | None]) -> None:
    """Raise unless EVERY assigned target is signed by the image repository identically.

    ``signed`` maps each assigned target path to what the verified targets metadata says
    about it (None: not listed). The director key is online; this check is what keeps a
    stolen director key alone from installing software the release managers never signed.
    """
    for target in assignment.targets:
        if target.path.split("/", 1)[0] != target.sha256:
            raise BadUpdateError(
                f"assigned target {target.name!r} has path {target.path!r} that does not"
                f" start with its sha256 {target.sha256}"
            )
        entry = signed.get(target.path)
        if entry is None:
            raise UnsignedTargetError(
                f"the director assigned target {target.name!r} ({target.path}) but the"
                " image repository never signed it; refusing the whole release"
            )
        mismatches = []
        if entry.sha256 != target.sha256:
            mismatches.append(f"sha256 {entry.sha256} != {target.sha256}")
        if entry.length != target.length:
            mismatches.append(f"length {entry.length} != {target.length}")
        for key in ("kind", "format"):
            if entry.custom.get(key) != getattr(target, key):
                mismatches.append(f"{key} {entry.custom.get(key)!r} != {getattr(target, key)!r}")
        if mismatches:
            raise UnsignedTargetError(
                f"the image repository signed target {target.path} differently from what the"
                f" director assigned ({'; '.join(mismatches)}); refusing the whole release"
            )
