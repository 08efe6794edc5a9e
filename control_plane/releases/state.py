"""The life of a release: stored first, published once its targets are signed."""

from __future__ import annotations

from enum import StrEnum


class ReleaseState(StrEnum):
    PUBLISHED = "published"  # its targets are signed; it may be assigned
    PENDING_SIGNATURE = "pending-signature"  # awaits the offline targets key
