"""MQTT nudges: "check now", and nothing more.

A nudge carries no authority: on receiving one the agent polls the control plane over
HTTP and verifies what it gets exactly as it does on a timer. So a forged, replayed or
lost nudge can at worst cause one extra poll, or one poll later than it could have been.
Each device reads only its own topic; only the control plane may publish.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["NUDGE_TOPIC_PREFIX", "Nudge", "NudgeReason", "nudge_topic"]

NUDGE_TOPIC_PREFIX = "outpost/nudge"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

NudgeReason = Literal["assignment", "config"]


def nudge_topic(device_id: str) -> str:
    """The one topic a device subscribes to (MQTT wildcards cannot appear in it)."""
    if not _DEVICE_ID.match(device_id):
        raise ValueError(f"device id {device_id!r} cannot name an MQTT topic")
    return f"{NUDGE_TOPIC_PREFIX}/{device_id}"


class Nudge(BaseModel):
    """The payload of a nudge: why (a hint for logs only)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: NudgeReason
    version: int | None = Field(default=None, ge=1)
