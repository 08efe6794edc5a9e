"""What an installed, verified release looks like to the runtime and the API."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InstalledArtifact:
    """One verified artifact on disk (its bytes matched the signed hash)."""

    name: str
    kind: str  # protocol.messages.ArtifactKind
    format: str  # protocol.messages.ArtifactFormat
    sha256: str
    length: int
    path: Path


@dataclass(frozen=True)
class InstalledRelease:
    """A release the store has verified and activated, as one unit."""

    release_id: str
    release_name: str
    release_version: str
    assignment_version: int
    artifacts: tuple[InstalledArtifact, ...]
    config: Mapping[str, Any] = field(default_factory=dict)

    def artifacts_of_kind(self, kind: str) -> tuple[InstalledArtifact, ...]:
        return tuple(a for a in self.artifacts if a.kind == kind)
