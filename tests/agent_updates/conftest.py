"""A device under test: the real agent update path against the in-memory control plane."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_agent.daemon import compose_update_loop
from edge_agent.release import InstalledRelease
from edge_agent.settings import AgentSettings
from edge_agent.store import DeviceIdentity, ReleaseStore, sha256_file
from edge_agent.updates import CycleOutcome, SmokeCheck, SmokeResult, UpdateLoop
from edge_agent.uplink import RootPin, enroll, new_http_client
from protocol import HardwareFacts
from tests.agent_updates.simulator import BASE_URL, ControlPlaneSimulator

HARDWARE = HardwareFacts(arch="x86_64", os="linux", cpu_count=2, ram_mb=4096)


class RecordingActivator:
    """Stands in for the runtime; refuses to be handed bytes that are not verified."""

    def __init__(self) -> None:
        self.activated: list[InstalledRelease] = []
        self.fail_with: Exception | None = None
        self.deactivated = False

    def activate(self, release: InstalledRelease) -> None:
        for artifact in release.artifacts:
            assert artifact.path.parent.name == "sha256", "only store blobs may be loaded"
            assert sha256_file(artifact.path) == artifact.sha256, "unverified bytes loaded"
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        self.activated.append(release)
        self.deactivated = False

    def deactivate(self) -> None:
        self.deactivated = True

    @property
    def serving(self) -> InstalledRelease | None:
        if self.deactivated:
            return None
        return self.activated[-1] if self.activated else None


class ScriptedHealth:
    """Stands in for the runtime's smoke requests: answers what a test scripts, per kind.

    Smoke requests go to whatever the activator serves, as on a real device."""

    def __init__(self, activator: RecordingActivator) -> None:
        self.activator = activator
        self.asked: list[tuple[str, SmokeCheck]] = []  # (release version, check)
        self.elapsed_ms: dict[str, float] = {}  # kind -> how long its request takes
        self.errors: dict[str, str] = {}  # kind -> the error its request fails with
        self.die_with: BaseException | None = None  # raised inside the window, once
        self.during: Callable[[], None] = lambda: None  # runs inside each smoke request

    def smoke(self, release: InstalledRelease, check: SmokeCheck) -> SmokeResult:
        serving = self.activator.serving
        assert serving == release, "smoke requests must reach the release being checked"
        self.asked.append((release.release_version, check))
        self.during()
        if self.die_with is not None:
            error, self.die_with = self.die_with, None
            raise error
        return SmokeResult(
            check, self.elapsed_ms.get(check.kind, 5.0), self.errors.get(check.kind, "")
        )


@dataclass
class Device:
    sim: ControlPlaneSimulator
    state_dir: Path
    identity: DeviceIdentity
    store: ReleaseStore
    loop: UpdateLoop
    activator: RecordingActivator
    health: ScriptedHealth
    stop: threading.Event = field(default_factory=threading.Event)

    def cycle(self) -> CycleOutcome:
        outcome = self.loop.run_once()
        self.loop.deliver_reports()
        return outcome

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    def serving_version(self) -> str | None:
        release = self.activator.serving
        return None if release is None else release.release_version

    def assert_store_holds_only_verified_releases(self) -> None:
        """Blobs are exactly those of current/previous and hash right; no partial left."""
        current, previous = self.store.pointers()
        wanted: set[str] = set()
        for name in (current, previous):
            if name is not None:
                release = self.store.verify_release(name)
                wanted |= {a.sha256 for a in release.artifacts}
        assert {p.name for p in self.store.blobs_dir.iterdir()} == wanted
        assert list(self.store.downloads_dir.iterdir()) == []
        assert {p.name for p in self.store.releases_dir.iterdir()} == {
            n for n in (current, previous) if n is not None
        }


def open_device(sim: ControlPlaneSimulator, state_dir: Path, identity: DeviceIdentity) -> Device:
    store = ReleaseStore.open(state_dir)
    activator = RecordingActivator()
    health = ScriptedHealth(activator)
    recovery = store.recover()
    if recovery.release is not None:
        activator.activate(recovery.release)
    stop = threading.Event()
    loop = compose_update_loop(
        settings=AgentSettings(state_dir=state_dir, download_chunk_bytes=4096),
        identity=identity,
        store=store,
        activator=activator,
        health=health,
        http=new_http_client(BASE_URL, transport=sim.transport),
        stop=stop,
        rng=lambda: 0.5,
    )
    return Device(sim, state_dir, identity, store, loop, activator, health, stop)


def enroll_device(sim: ControlPlaneSimulator, state_dir: Path) -> Device:
    identity = enroll(
        new_http_client(BASE_URL, transport=sim.transport),
        state_dir=state_dir,
        server_url=BASE_URL,
        token=sim.enrollment_token(),
        pin=RootPin(sha256=sim.root_sha256()),
        name="kiosk-1",
        tags=["lobby"],
        hardware=HARDWARE,
    )
    return open_device(sim, state_dir, identity)


def restart(device: Device) -> Device:
    device.store.close()
    return open_device(device.sim, device.state_dir, device.identity)


@pytest.fixture
def sim() -> ControlPlaneSimulator:
    return ControlPlaneSimulator()


@pytest.fixture
def device(sim: ControlPlaneSimulator, tmp_path: Path) -> Iterator[Device]:
    d = enroll_device(sim, tmp_path / "state")
    yield d
    d.store.close()
