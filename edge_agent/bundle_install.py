"""``outpost-agent install-bundle``: verify an offline bundle and install its release
through the update loop, with the runtime's health window, then exit (the service serves
it on its next start). Run it while the agent service is stopped: the store has one
writer. See :mod:`edge_agent.updates.bundle` for what is checked and docs/packaging.md."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.daemon import compose_update_loop, open_store
from edge_agent.errors import BadUpdateError, StoreUnwritableError
from edge_agent.settings import AgentSettings
from edge_agent.store import DeviceIdentity
from edge_agent.updates.bundle import (
    BUNDLE_TUF_DIR,
    BUNDLE_URL,
    RUNBOOK,
    binding_for,
    prepare_state_dir,
    unpack,
    verify_bundle,
    work_dir,
)
from edge_agent.updates.update_loop import CycleResult
from edge_agent.uplink.enrollment import RootPin


@dataclass(frozen=True)
class BundleInstall:
    """What ``install-bundle`` did: ``installed`` False when the release already served."""

    release: str
    assignment_version: int
    bound_to: str
    expires_at: datetime
    installed: bool

    def as_json(self) -> dict[str, object]:
        return {
            "release": self.release,
            "assignment_version": self.assignment_version,
            "bound_to": self.bound_to,
            "expires_at": self.expires_at.isoformat(),
            "installed": self.installed,
        }


def install_bundle(
    settings: AgentSettings,
    bundle: Path,
    *,
    device_class: str | None,
    pin: RootPin,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BundleInstall:
    """Install ``bundle``; raise a :class:`BadUpdateError` (nothing changed) if refused."""
    from edge_agent.runtime import ModelRegistry
    from edge_agent.serving import ReleaseServing

    state_dir = settings.state_dir
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    binding = binding_for(state_dir, device_class)
    work = work_dir(state_dir)
    try:
        free = shutil.disk_usage(state_dir).free - settings.download_free_space_margin_bytes
        root = unpack(bundle, work, free_bytes=max(free, 0))
        verified = verify_bundle(root, state_dir=state_dir, binding=binding, pin=pin, now=clock())
        try:
            prepare_state_dir(state_dir, root=verified.trusted_root, binding=binding)
            opened = open_store(settings)
            if opened.store is None:
                raise StoreUnwritableError(f"the store cannot be written: {opened.problem}")
            registry = ModelRegistry(settings)
            serving = ReleaseServing(registry, settings)
            try:
                if opened.release is not None:
                    registry.activate(opened.release)
                loop = compose_update_loop(
                    settings=settings,
                    identity=DeviceIdentity(
                        device_id=binding, server_url=BUNDLE_URL, name="bundle"
                    ),
                    store=opened.store,
                    activator=serving,
                    health=serving,
                    http=verified.http,
                    stop=threading.Event(),
                    clock=clock,
                    tuf_dir=BUNDLE_TUF_DIR,
                )
                outcome = loop.run_once()
            finally:
                serving.close()
                opened.store.close()
        finally:
            verified.http.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = verified.manifest
    if outcome.result not in (CycleResult.INSTALLED, CycleResult.UP_TO_DATE):
        raise BadUpdateError(
            f"bundle refused: {outcome.detail or outcome.result.value}; the device keeps"
            f" serving what it had (see {RUNBOOK})"
        )
    return BundleInstall(
        release=f"{manifest.release_name}@{manifest.release_version}",
        assignment_version=manifest.assignment_version,
        bound_to=binding,
        expires_at=manifest.expires_at,
        installed=outcome.result is CycleResult.INSTALLED,
    )
