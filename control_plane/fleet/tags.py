"""Device tags: ``key=value`` strings that cohorts select on (``hw=rpi5``, ``store=porto``).

A device has one value per key: adding ``store=lisbon`` replaces ``store=porto``. The
rule is :class:`TagEdit` (pure, checked once on construction); :func:`retag_device`
applies one to a stored device, audited as ``device.tag``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, cast, select, update
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.errors import InvalidRequestError, NotFoundError
from control_plane.fleet.devices import DeviceView, device_views
from control_plane.storage.database import ConcurrentUpdateError, Database, retrying
from control_plane.storage.models import Device

MAX_TAGS = 32
MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 128
_CHARSET = re.compile(r"^[A-Za-z0-9_.-]+$")
_CHARSET_TEXT = "letters, digits, '_', '.' and '-'"


class InvalidTagError(InvalidRequestError):
    """A tag edit names a malformed tag, a key twice, or leaves too many tags."""

    error_type = "invalid_tag"

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name


def tag_key(tag: str) -> str:
    """``"hw=rpi5"`` -> ``"hw"``; a bare tag (from enrollment, e.g. ``"lobby"``) is its key."""
    return tag.partition("=")[0]


def _check_part(field_name: str, tag: str, part: str, what: str, limit: int) -> None:
    if not part:
        raise InvalidTagError(field_name, f"{tag!r} has an empty {what}; write key=value")
    if len(part) > limit:
        raise InvalidTagError(field_name, f"the {what} of {tag!r} is longer than {limit}")
    if not _CHARSET.match(part):
        raise InvalidTagError(field_name, f"the {what} of {tag!r} may only hold {_CHARSET_TEXT}")


def _parse_tag(field_name: str, tag: str, *, value_required: bool) -> tuple[str, str | None]:
    key, sep, value = tag.partition("=")
    if not sep and value_required:
        raise InvalidTagError(field_name, f"{tag!r} is not key=value")
    _check_part(field_name, tag, key, "key", MAX_KEY_LENGTH)
    if not sep:
        return key, None
    _check_part(field_name, tag, value, "value", MAX_VALUE_LENGTH)
    return key, value


@dataclass(frozen=True)
class TagEdit:
    """Tags to add (``key=value``; each replaces the key's current value) and to remove
    (``key=value``: that exact tag; ``key``: the key whatever its value)."""

    add: tuple[str, ...]
    remove: tuple[str, ...]

    @classmethod
    def parse(cls, *, add: Sequence[str], remove: Sequence[str]) -> TagEdit:
        added_keys: dict[str, int] = {}
        for i, tag in enumerate(add):
            key, _ = _parse_tag(f"add[{i}]", tag, value_required=True)
            if key in added_keys:
                raise InvalidTagError(
                    f"add[{i}]",
                    f"key {key!r} is also in add[{added_keys[key]}]; a device has one value"
                    " per key",
                )
            added_keys[key] = i
        for i, tag in enumerate(remove):
            _parse_tag(f"remove[{i}]", tag, value_required=False)
            if tag in add:
                raise InvalidTagError(f"remove[{i}]", f"{tag!r} is also in add; pick one")
        if not add and not remove:
            raise InvalidTagError("add", "nothing to change: give tags to add or remove")
        return cls(add=tuple(add), remove=tuple(remove))

    def apply(self, current: Sequence[str]) -> list[str]:
        """The tags after this edit (sorted); raise if more than ``MAX_TAGS`` would remain."""
        exact = {t for t in self.remove if "=" in t}
        keys = {t for t in self.remove if "=" not in t} | {tag_key(t) for t in self.add}
        kept = [t for t in current if t not in exact and tag_key(t) not in keys]
        after = sorted(set(kept) | set(self.add))
        if len(after) > MAX_TAGS:
            raise InvalidTagError(
                "add", f"a device carries at most {MAX_TAGS} tags; this edit leaves {len(after)}"
            )
        return after


def retag_device(
    db: Database,
    device_id: str,
    *,
    add: Sequence[str],
    remove: Sequence[str],
    actor: str,
    now: datetime,
) -> DeviceView:
    """Apply a tag edit to a device (audited as ``device.tag`` with before and after when
    it changes anything); answer the device as it is afterwards."""
    edit = TagEdit.parse(add=add, remove=remove)

    def work(session: Session) -> DeviceView:
        # The row lock serializes edits on PostgreSQL (SQLite ignores it; there the
        # compare-and-swap below catches a concurrent edit).
        stored = session.scalars(
            select(cast(Device.tags, Text)).where(Device.id == device_id).with_for_update()
        ).first()
        if stored is None:
            raise NotFoundError(f"no device with id {device_id!r}")
        before: list[str] = json.loads(stored)
        after = edit.apply(before)
        if after != before:
            # Compare-and-swap on the stored text: after a concurrent edit this matches no
            # row, and ``retrying`` runs the edit again on the tags that edit left.
            swapped = session.execute(
                update(Device)
                .where(Device.id == device_id, cast(Device.tags, Text) == stored)
                .values(tags=after)
                .execution_options(synchronize_session=False)
            )
            if swapped.rowcount != 1:  # type: ignore[attr-defined]
                raise ConcurrentUpdateError(device_id)
            audit.record(
                session,
                actor=actor,
                action="device.tag",
                target=device_id,
                now=now,
                details={"before": before, "after": after},
            )
        (view,) = device_views(session, device_id)
        return view

    return retrying(db, work)


def enrollment_tags(token_tags: Sequence[str], device_tags: Sequence[str]) -> list[str]:
    """The tags a device enrolls with: its own (checked like any tag, one value per key)
    under the enrollment token's, which win on a shared key - a device cannot move itself
    out of, or into, the cohort its operator chose."""
    by_key: dict[str, str] = {}
    for i, tag in enumerate(device_tags):
        key, _ = _parse_tag(f"tags[{i}]", tag, value_required=False)
        if key in by_key and by_key[key] != tag:
            raise InvalidTagError(f"tags[{i}]", f"key {key!r} appears twice; one value per key")
        by_key[key] = tag
    for tag in token_tags:
        by_key[tag_key(tag)] = tag
    if len(by_key) > MAX_TAGS:
        raise InvalidTagError("tags", f"a device carries at most {MAX_TAGS} tags")
    return sorted(by_key.values())
