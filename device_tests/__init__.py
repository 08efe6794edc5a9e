"""Per-device acceptance suite: device profiles with p95 latency, throughput and memory
thresholds, a runner that measures them against an agent under MLPerf-style single-stream
rules, and reporters (table, JSON, JUnit XML). See docs/device-tests.md.

The measurement rules and the thresholds' schema live in the agent
(:mod:`edge_agent.updates.acceptance`): its health window runs a bounded suite with them.
``agent_client`` is the HTTP adapter; ``cli`` is ``python -m device_tests``.
"""

from device_tests.errors import DeviceTestError
from device_tests.profile import Profile, load_profile
from edge_agent.updates.acceptance import (
    FigureResult,
    Measurement,
    QueryRules,
    Status,
    Thresholds,
)

__all__ = [
    "DeviceTestError",
    "FigureResult",
    "Measurement",
    "Profile",
    "QueryRules",
    "Status",
    "Thresholds",
    "load_profile",
]
