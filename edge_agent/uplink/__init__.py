"""Everything the device says to the control plane, and hears from it.

The HTTP client (signed device requests, bounded bodies, errors that say whose fault a
refusal was), enrollment (the first root pinned, the device key made), and the MQTT
session whose nudges wake the update and config checks. What is said is decided
elsewhere (:mod:`edge_agent.updates`, :mod:`edge_agent.remote_config`); this package
only carries it.
"""

from edge_agent.uplink.client import (
    ControlPlaneClient,
    RequestRejectedError,
    content_encoding,
    enroll_device,
    fetch_root_metadata,
    new_http_client,
)
from edge_agent.uplink.enrollment import RootPin, detect_hardware, enroll, trusted_first_root
from edge_agent.uplink.mqtt import NudgeSession

__all__ = [
    "ControlPlaneClient",
    "NudgeSession",
    "RequestRejectedError",
    "RootPin",
    "content_encoding",
    "detect_hardware",
    "enroll",
    "enroll_device",
    "fetch_root_metadata",
    "new_http_client",
    "trusted_first_root",
]
