"""``--report-to-control-plane``: a suite run's numbers sent to the control plane, signed
by the device key, about the release the device serves (the control plane refuses a
report about any other release). Uses the agent's own device client and key files."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from device_tests.errors import DeviceTestError
from device_tests.runner import SuiteResult
from edge_agent.errors import AgentError as RuntimeAgentError
from edge_agent.store import load_device_key, load_identity
from edge_agent.updates.health import wire_figure
from edge_agent.uplink.client import ControlPlaneClient, new_http_client
from protocol import AcceptanceReport, AcceptanceReportAck, AcceptanceResult

__all__ = ["report_to_control_plane"]


def report_to_control_plane(
    result: SuiteResult, release_id: str | None, state_dir: Path
) -> AcceptanceReportAck:
    """Send ``result`` as the device whose enrolled state is in ``state_dir``."""
    if release_id is None:
        raise DeviceTestError("the target serves no release: there is nothing to report on")
    try:
        identity = load_identity(state_dir)
        key = load_device_key(state_dir)
        report = AcceptanceReport(
            report_id=uuid.uuid4().hex,
            device_id=identity.device_id,
            release_id=release_id,
            at=datetime.now(UTC),
            profile=result.profile,
            workload_version=result.workload_version,
            result=AcceptanceResult(
                device_class=result.device_class,
                passed=result.passed,
                figures=[wire_figure(f) for f in result.figures],
                duration_s=round(result.duration_s, 3),
                loadavg_1m=result.environment.loadavg_after[0],
                temperature_c=result.environment.temperature_c_after,
            ),
        )
        with new_http_client(identity.server_url) as http:
            client = ControlPlaneClient(http, device_id=identity.device_id, device_key=key)
            return client.send_acceptance(report)
    except (RuntimeAgentError, ValueError) as e:
        raise DeviceTestError(
            f"the results were not reported to the control plane: {e} (the JSON/JUnit files"
            " hold them; --device-state-dir must be the enrolled agent's state directory)"
        ) from e
