"""MQTT nudges: tell a device "check now" when its assignment or effective config
changes. A nudge carries no authority (protocol.nudges); losing one only delays a
device to its next poll, so publishing is best effort and never fails a request."""

from control_plane.nudges.publisher import (
    MqttNudgePublisher,
    NudgePublisher,
    NullNudgePublisher,
    nudge_after_commit,
)

__all__ = ["MqttNudgePublisher", "NudgePublisher", "NullNudgePublisher", "nudge_after_commit"]
