"""TEST ONLY: freeze the agent at a named install step (or ``telemetry-charged``: a
report's epsilon charged, the report not yet queued) so a test can SIGKILL it there.

Enabled by ``OUTPOST_AGENT_TEST_PAUSE_AT=<step>`` (settings.test_pause_at). At that step
the agent writes ``<state_dir>/TEST-PAUSED-AT-<step>`` and sleeps until killed. Never set
it on a real device: the agent stops installing at that step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal, get_args

PauseStep = Literal[
    "download",
    "delta-manifest",  # a delta's signed chunk manifest fetched and checked
    "delta-copy",  # the first chunk copied from a local blob into the partial file
    "delta-fetch",  # the first range of missing chunks written into the partial file
    "verified",
    "activate",
    "health",
    "telemetry-charged",
]
PAUSE_STEPS: tuple[str, ...] = get_args(PauseStep)

log = logging.getLogger(__name__)


def marker_path(state_dir: Path, step: str) -> Path:
    return state_dir / f"TEST-PAUSED-AT-{step}"


class TestOnlyPause:
    """A checkpoint callable: ``pause(step)`` blocks forever if ``step`` is the chosen one."""

    __test__ = False  # not a pytest class

    def __init__(self, step: str | None, state_dir: Path) -> None:
        if step is not None and step not in PAUSE_STEPS:
            raise ValueError(f"test pause step must be one of {PAUSE_STEPS}, not {step!r}")
        self._step = step
        self._state_dir = state_dir
        if step is not None:
            log.warning("TEST-ONLY FAULT INJECTION ACTIVE: the agent will freeze at %r", step)

    def __call__(self, step: str) -> None:
        if step != self._step:
            return
        marker_path(self._state_dir, step).write_text(f"{step}\n", encoding="utf-8")
        log.warning("TEST-ONLY: frozen at install step %r until killed", step)
        while True:
            time.sleep(3600)
