"""TEST ONLY: freeze a control-plane replica at a named step of a rollout pass, inside its
locked transaction, so a test can SIGKILL it there.

Enabled by ``OUTPOST_CP_TEST_PAUSE_AT=<step>`` (settings.test_pause_at). At that step the
rollout worker writes ``<data_dir>/TEST-PAUSED-AT-<step>`` (holding the replica's pid)
and sleeps until the process is killed, keeping its transaction open and the rollout's
row locked. Never set it on a real control plane: its rollout worker stops there.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal, get_args

RolloutPauseStep = Literal["rollout-advanced"]
ROLLOUT_PAUSE_STEPS: tuple[str, ...] = get_args(RolloutPauseStep)

log = logging.getLogger(__name__)


def marker_path(data_dir: Path, step: str) -> Path:
    return data_dir / f"TEST-PAUSED-AT-{step}"


class TestOnlyPause:
    """A checkpoint callable: ``pause(step)`` blocks forever if ``step`` is the chosen one."""

    __test__ = False  # not a pytest class

    def __init__(self, step: str | None, data_dir: Path) -> None:
        if step is not None and step not in ROLLOUT_PAUSE_STEPS:
            raise ValueError(f"test pause step must be one of {ROLLOUT_PAUSE_STEPS}, not {step!r}")
        self._step = step
        self._data_dir = data_dir
        if step is not None:
            log.warning(
                "TEST-ONLY FAULT INJECTION ACTIVE: this control plane's rollout worker will"
                " freeze at %r, holding the rollout's row lock, until the process is killed",
                step,
            )

    def __call__(self, step: str) -> None:
        if step != self._step:
            return
        marker_path(self._data_dir, step).write_text(f"{os.getpid()}\n", encoding="utf-8")
        log.warning("TEST-ONLY: frozen at rollout step %r until killed", step)
        while True:
            time.sleep(3600)
