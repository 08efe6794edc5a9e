"""kill -9 between charging a report's epsilon and queuing it: a real process, frozen at
the fault-injection point inside the transaction, then SIGKILLed. Afterwards the ledger
and the outbox still agree: every queued report's charge is in the ledger, and the
killed report left neither a charge nor a report (nothing of it left the process)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.store.state_db import StateDB
from edge_agent.telemetry.store import CHARGED_CHECKPOINT, TelemetryStore
from edge_agent.updates.fault_injection import marker_path
from protocol.telemetry import TelemetryReport
from tests.agent_telemetry.helpers import Clock, make_reporter

REPO = Path(__file__).resolve().parents[2]

# queue two reports normally, then freeze inside the third one's transaction
_CHILD = """
import sys
from pathlib import Path
from edge_agent.store.state_db import StateDB
from edge_agent.telemetry.mechanisms import OpenDPDiscreteLaplace
from edge_agent.updates.fault_injection import TestOnlyPause
from tests.agent_telemetry.helpers import Clock, make_reporter

state_dir = Path(sys.argv[1])
pause = TestOnlyPause("telemetry-charged", state_dir)
calls = []

def checkpoint(step):
    calls.append(step)
    if len(calls) > 2:
        pause(step)

db = StateDB(state_dir / "state.db")
clock = Clock()
reporter = make_reporter(db, clock, checkpoint=checkpoint)
reporter._mechanism = OpenDPDiscreteLaplace()
for _ in range(3):
    clock.advance(hours=1)
    reporter.close_period()
"""


def _ledger_and_outbox(path: Path) -> tuple[dict[str, float], list[TelemetryReport]]:
    with sqlite3.connect(path) as c:
        ledger = dict(c.execute("SELECT report_id, epsilon FROM telemetry_ledger").fetchall())
        bodies = [r[0] for r in c.execute("SELECT body FROM telemetry_outbox ORDER BY seq")]
    return ledger, [TelemetryReport.model_validate(json.loads(b)) for b in bodies]


@pytest.mark.slow
def test_kill_9_between_charge_and_enqueue_loses_no_charge(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    marker = marker_path(tmp_path, CHARGED_CHECKPOINT)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            output = child.stdout.read().decode() if child.stdout else ""
            raise AssertionError(f"the child never reached the checkpoint:\n{output}")
        time.sleep(0.05)
    # frozen with the third report charged inside its open transaction
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    if child.stdout:
        child.stdout.close()

    ledger, queued = _ledger_and_outbox(tmp_path / "state.db")
    assert len(queued) == 2  # the killed report was never queued ...
    assert ledger == {r.report_id: r.privacy.epsilon_charged for r in queued}  # ... nor charged
    assert all(e > 0 for e in ledger.values())

    # the next run goes on from the same ledger: its report is charged on top
    db = StateDB(tmp_path / "state.db")
    clock = Clock()
    clock.advance(hours=5)
    reporter = make_reporter(db, clock)
    after = reporter.close_period()
    assert after is not None
    assert after.report.sequence == 3
    assert after.report.privacy.lifetime_spent == pytest.approx(
        sum(ledger.values()) + after.report.privacy.epsilon_charged
    )
    assert len(TelemetryStore(db).ledger_entries()) == 3
    db.close()
