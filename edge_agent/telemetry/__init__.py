"""Telemetry on the device: what the agent measures, what of it may leave, and how.

- :mod:`~edge_agent.telemetry.metrics`: the in-memory counters (pure);
- :mod:`~edge_agent.telemetry.instrument`: the local API's middleware and generation
  observer that feed them; :mod:`~edge_agent.telemetry.prometheus`: ``GET /metrics``;
- :mod:`~edge_agent.telemetry.policy`: the telemetry policy in force (pure merge);
- :mod:`~edge_agent.telemetry.mechanisms`: the noise (OpenDP), behind a small Protocol;
- :mod:`~edge_agent.telemetry.ledger` and :mod:`~edge_agent.telemetry.report`: budget
  decisions and report building (pure);
- :mod:`~edge_agent.telemetry.store`: the epsilon ledger and outbox in the state DB;
- :mod:`~edge_agent.telemetry.reporter`: the periodic task; :mod:`~.agent` composes it.

Delivery to the control plane is :mod:`edge_agent.uplink.telemetry_sender`.
"""

from edge_agent.telemetry.metrics import AgentMetrics, MetricsSnapshot
from edge_agent.telemetry.policy import TelemetryPolicy, resolve_policy
from edge_agent.telemetry.store import OutboxLimits, TelemetryStore

__all__ = [
    "AgentMetrics",
    "MetricsSnapshot",
    "OutboxLimits",
    "TelemetryPolicy",
    "TelemetryStore",
    "resolve_policy",
]
