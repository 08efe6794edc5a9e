"""What the dashboard's fleet pages show, computed from the fleet's views (pure: ``now``
is passed in)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from control_plane.fleet.devices import DeviceView
from control_plane.rollouts.core import tag_dict

# A device polls every 30 s by default (the agent's poll_interval_seconds); one that has
# not been heard from for ten polls is stale.
ONLINE_WINDOW = timedelta(minutes=5)
DEVICE_CLASS_TAG = "hw"
UNCLASSIFIED = "unclassified"
MAX_DEVICE_ROWS = 500


class Presence(StrEnum):
    ONLINE = "online"
    STALE = "stale"
    NEVER = "never seen"


def presence_of(last_seen_at: datetime | None, now: datetime) -> Presence:
    if last_seen_at is None:
        return Presence.NEVER
    return Presence.ONLINE if now - last_seen_at <= ONLINE_WINDOW else Presence.STALE


def device_class_of(tags: Sequence[str]) -> str:
    """A device's class: its ``hw=`` tag (the tag cohorts and the simulator use)."""
    return tag_dict(tags).get(DEVICE_CLASS_TAG) or UNCLASSIFIED


def ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "never"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


@dataclass(frozen=True)
class DeviceRow:
    id: str
    name: str
    device_class: str
    presence: Presence
    last_seen: str
    last_seen_at: datetime | None
    release: str
    tags: tuple[str, ...]
    last_status: str


@dataclass(frozen=True)
class ReleaseShare:
    release: str
    devices: int
    share: float


@dataclass(frozen=True)
class FleetOverview:
    rows: list[DeviceRow]
    total: int
    by_presence: dict[Presence, int]
    by_class: dict[str, int]
    releases: list[ReleaseShare]

    @property
    def truncated(self) -> bool:
        return len(self.rows) < self.total


def release_label(view: DeviceView) -> str:
    release = view.installed_release
    return "none" if release is None else f"{release.name}@{release.version}"


def overview(views: Sequence[DeviceView], now: datetime) -> FleetOverview:
    """Rows for the first :data:`MAX_DEVICE_ROWS` devices (stale ones first, then by
    name) and counts over the whole fleet."""
    rows = [
        DeviceRow(
            id=v.device.id,
            name=v.device.name,
            device_class=device_class_of(v.device.tags),
            presence=presence_of(v.device.last_seen_at, now),
            last_seen=ago(v.device.last_seen_at, now),
            last_seen_at=v.device.last_seen_at,
            release=release_label(v),
            tags=tuple(v.device.tags),
            last_status="" if v.last_status is None else v.last_status.state,
        )
        for v in views
    ]
    order = {Presence.STALE: 0, Presence.NEVER: 1, Presence.ONLINE: 2}
    rows.sort(key=lambda r: (order[r.presence], r.name, r.id))
    return FleetOverview(
        rows=rows[:MAX_DEVICE_ROWS],
        total=len(rows),
        by_presence={p: sum(r.presence is p for r in rows) for p in Presence},
        by_class=dict(sorted(Counter(r.device_class for r in rows).items())),
        releases=release_distribution(rows),
    )


def release_distribution(rows: Sequence[DeviceRow]) -> list[ReleaseShare]:
    """Devices per installed release, most devices first."""
    counts = Counter(r.release for r in rows)
    total = max(1, len(rows))
    return [
        ReleaseShare(release=name, devices=n, share=n / total)
        for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
