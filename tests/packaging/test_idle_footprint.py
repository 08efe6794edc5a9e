"""An agent with no model to serve stays small: the heavy runtimes load on first use.

The probe is a real ``python -m edge_agent run`` under ``-X importtime``, which names every
module the process imported, up to the moment it serves ``/healthz`` and a status request.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.packaging.idle_agent import (
    HEAVY_MODULES,
    enrolled_state_dir,
    imported_modules,
    start_agent,
)

pytestmark = pytest.mark.slow


def test_an_idle_agent_imports_no_model_runtime(tmp_path: Path) -> None:
    state = enrolled_state_dir(tmp_path / "state")
    log = tmp_path / "agent.log"
    agent = start_agent(state, stderr=log, python_flags=("-X", "importtime"))
    try:
        token = (state / "api-token").read_text().strip()
        status = httpx.get(
            f"http://127.0.0.1:{agent.port}/v1/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert status.status_code == 200, status.text
        assert status.json()["serving"] is None
    finally:
        agent.stop()
    imported = imported_modules(log.read_text(errors="replace"))
    assert "edge_agent" in imported and "uvicorn" in imported  # the probe saw the imports
    loaded = sorted(set(HEAVY_MODULES) & imported)
    assert loaded == [], f"an agent serving nothing imported {loaded}"
