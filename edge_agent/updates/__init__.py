"""The agent's update path: TUF metadata, director assignments, downloads, the loop.

Adapters over HTTP (``httpx``, through :mod:`edge_agent.uplink`) and python-tuf's
ngclient feed values to the pure trust checks in :mod:`edge_agent.trust`; verified bytes
go into :mod:`edge_agent.store`.
"""

from edge_agent.updates.downloader import ArtifactDownloader
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
    "CycleOutcome",
    "CycleResult",
    "HealthProbe",
    "HealthVerdict",
    "HttpxFetcher",
    "ImageMetadataClient",
    "PollSchedule",
    "ReleaseActivator",
    "SmokeCheck",
    "SmokeKind",
    "SmokeResult",
    "StatusOutbox",
    "TestOnlyPause",
    "UpdateLoop",
    "UpdateStatus",
    "VerifiedImageMetadata",
    "judge",
    "marker_path",
    "smoke_checks",
]
