"""The agent's update path: TUF metadata, director assignments, downloads, the loop.

Adapters over HTTP (``httpx``) and python-tuf's ngclient feed values to the pure trust
checks in :mod:`edge_agent.trust`; verified bytes go into :mod:`edge_agent.store`.
"""

from edge_agent.updates.control_plane_client import (
    ControlPlaneClient,
    RequestRejectedError,
    enroll_device,
    fetch_root_metadata,
    new_http_client,
)
from edge_agent.updates.downloader import ArtifactDownloader
from edge_agent.updates.enrollment import RootPin, detect_hardware, enroll, trusted_first_root
from edge_agent.updates.fault_injection import PAUSE_STEPS, TestOnlyPause, marker_path
from edge_agent.updates.health import (
    Acceptance,
    HealthVerdict,
    SmokeCheck,
    SmokeKind,
    SmokeResult,
    judge,
    smoke_checks,
)
from edge_agent.updates.outbox import StatusOutbox
from edge_agent.updates.schedule import PollSchedule
from edge_agent.updates.tuf_client import HttpxFetcher, ImageMetadataClient, VerifiedImageMetadata
from edge_agent.updates.update_loop import (
    MAX_ACTIVATION_ATTEMPTS,
    CycleOutcome,
    CycleResult,
    HealthProbe,
    ReleaseActivator,
    UpdateLoop,
    UpdateStatus,
)

__all__ = [
    "MAX_ACTIVATION_ATTEMPTS",
    "PAUSE_STEPS",
    "Acceptance",
    "ArtifactDownloader",
    "ControlPlaneClient",
    "CycleOutcome",
    "CycleResult",
    "HealthProbe",
    "HealthVerdict",
    "HttpxFetcher",
    "ImageMetadataClient",
    "PollSchedule",
    "ReleaseActivator",
    "RequestRejectedError",
    "RootPin",
    "SmokeCheck",
    "SmokeKind",
    "SmokeResult",
    "StatusOutbox",
    "TestOnlyPause",
    "UpdateLoop",
    "UpdateStatus",
    "VerifiedImageMetadata",
    "detect_hardware",
    "enroll",
    "enroll_device",
    "fetch_root_metadata",
    "judge",
    "marker_path",
    "new_http_client",
    "smoke_checks",
    "trusted_first_root",
]
