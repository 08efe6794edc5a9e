"""A corrupt state database (issue 8, row 6): the agent keeps serving the release whose
blobs verify, moves the bad database aside and rebuilds it; every runbook an error message
names exists."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from edge_agent.errors import StateDatabaseCorruptError
from edge_agent.store import ReleaseStore, StateDB
from edge_agent.updates import CycleResult
from tests.agent_updates.conftest import Device, open_device
from tests.agent_updates.simulator import release_of

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = re.compile(r"docs/runbooks/[A-Za-z0-9_.-]+\.md")


def corrupt_after_first_page(db: Path) -> None:
    """Overwrite everything after the first page with garbage (the header stays valid)."""
    size = db.stat().st_size
    assert size > 4096, "the database has more than one page"
    with db.open("r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))


def test_a_corrupt_state_db_is_moved_aside_and_the_verified_release_still_serves(
    device: Device,
) -> None:
    sim = device.sim
    sim.assign(device.device_id, release_of(sim, "a"))
    assert device.cycle().result is CycleResult.INSTALLED
    device.store.close()  # checkpoints the WAL into state.db
    db = device.state_dir / "state.db"
    corrupt_after_first_page(db)
    with pytest.raises(StateDatabaseCorruptError):
        StateDB(db).close()

    restarted = open_device(sim, device.state_dir, device.identity)

    assert restarted.serving_version() == "a"
    aside = list(device.state_dir.glob("state.db.corrupt-*"))
    assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))], aside
    recovery_db = StateDB(db)  # the new database is sound
    recovery_db.close()
    # the rebuilt store works: the same assignment is up to date, a new one installs
    assert restarted.cycle().result is CycleResult.UP_TO_DATE
    sim.assign(device.device_id, release_of(sim, "b"))
    assert restarted.cycle().result is CycleResult.INSTALLED
    assert restarted.serving_version() == "b"
    restarted.store.close()


def test_the_recovery_says_what_happened_and_names_the_runbook(device: Device) -> None:
    sim = device.sim
    sim.assign(device.device_id, release_of(sim, "a"))
    device.cycle()
    device.store.close()
    corrupt_after_first_page(device.state_dir / "state.db")

    store = ReleaseStore.open(device.state_dir)
    recovery = store.recover()
    store.close()
    assert recovery.release is not None and recovery.release.release_version == "a"
    (note,) = [a for a in recovery.actions if "moved it aside" in a]
    assert "corrupt" in note and "docs/runbooks/agent-store-recovery.md" in note


def test_every_runbook_named_in_the_code_exists() -> None:
    named: dict[str, list[str]] = {}
    for package in ("edge_agent", "control_plane", "protocol", "simulator", "converters"):
        for source in (REPO / package).rglob("*.py"):
            for ref in RUNBOOK.findall(source.read_text(encoding="utf-8")):
                named.setdefault(ref, []).append(str(source.relative_to(REPO)))
    assert "docs/runbooks/agent-store-recovery.md" in named, "the store names its runbook"
    missing = {ref: where for ref, where in named.items() if not (REPO / ref).is_file()}
    assert missing == {}, f"error messages name runbooks that do not exist: {missing}"
