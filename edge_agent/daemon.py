"""The agent process: recover the store, serve the current release at once, keep updating.

``run_agent`` composes the pieces: the release store (recovered first), the runtime's
model registry, the local API on 127.0.0.1 (uvicorn, main thread) and the update loop
(a background thread). SIGTERM/SIGINT stop the server, then the loop, then the models.

The agent never fails to start because its state cannot be written: a corrupt
``state.db`` is moved aside and rebuilt, and when the database cannot be written at all
(disk full, read-only filesystem) the verified release on disk is served read-only, said
so in ``GET /v1/status`` (``"store": "read-only: ..."``), and the store is opened again
every ``store_retry_seconds`` until updates can resume.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING

import httpx

from edge_agent.errors import StoreError
from edge_agent.release import InstalledRelease
from edge_agent.remote_config.agent import RemoteConfigAgent
from edge_agent.settings import AgentSettings
from edge_agent.store import (
    STATE_DB,
    DeviceIdentity,
    InstallStep,
    Recovery,
    ReleaseFiles,
    ReleaseStore,
    StateDB,
    load_api_token,
    load_device_key,
    load_identity,
    load_trusted_root,
)
from edge_agent.telemetry.agent import TelemetryAgent
from edge_agent.updates import (
    ArtifactDownloader,
    HealthProbe,
    ImageMetadataClient,
    PollSchedule,
    ReleaseActivator,
    StatusOutbox,
    TestOnlyPause,
    UpdateLoop,
    UpdateStatus,
)
from edge_agent.updates.downloader import Checkpoint
from edge_agent.uplink import ControlPlaneClient, new_http_client
from protocol import InstallState, paths
from protocol.http_limits import HttpLimits

if TYPE_CHECKING:
    from edge_agent.runtime import ModelRegistry

log = logging.getLogger("edge_agent")
# the local API serves a few local clients: fewer connections than the control plane
LOCAL_API_HTTP_LIMITS = HttpLimits(max_connections=512)

TUF_METADATA_DIR = "tuf"


def compose_update_loop(
    *,
    settings: AgentSettings,
    identity: DeviceIdentity,
    store: ReleaseStore,
    activator: ReleaseActivator,
    health: HealthProbe,
    http: httpx.Client,
    stop: threading.Event,
    clock: Callable[[], datetime] | None = None,
    rng: Callable[[], float] = random.random,
    checkpoint: Checkpoint | None = None,
    tuf_dir: str = TUF_METADATA_DIR,
) -> UpdateLoop:
    """Wire the update loop for an enrolled device (also used by the protocol tests and,
    over an offline bundle's transport with its own ``tuf_dir``, by ``install-bundle``)."""
    state_dir = store.state_dir
    server = identity.server_url.rstrip("/")
    outbox = StatusOutbox(store.db, device_id=identity.device_id, clock=clock)
    return UpdateLoop(
        device_id=identity.device_id,
        store=store,
        control_plane=ControlPlaneClient(
            http, device_id=identity.device_id, device_key=load_device_key(state_dir)
        ),
        image_metadata=ImageMetadataClient(
            metadata_dir=state_dir / tuf_dir,
            metadata_url=server + paths.REPO_METADATA,
            trusted_root=load_trusted_root(state_dir),
            http=http,
        ),
        downloader=ArtifactDownloader(
            http,
            targets_url=server + paths.REPO_TARGETS,
            store=store,
            chunk_bytes=settings.download_chunk_bytes,
            stop=stop,
            checkpoint=checkpoint,
            free_space_margin=settings.download_free_space_margin_bytes,
            delta=settings.delta_updates,
        ),
        activator=activator,
        health=health,
        outbox=outbox,
        schedule=PollSchedule(settings.poll_interval_seconds, settings.max_backoff_seconds),
        clock=clock,
        rng=rng,
        checkpoint=checkpoint,
        stop=stop,
        device_class=settings.device_class,
    )


def report_recovery(recovery: Recovery, outbox: StatusOutbox) -> None:
    """Log what recovery did and queue a report when it changed what the device serves."""
    for action in recovery.actions:
        log.warning("store recovery: %s", action)
    if recovery.fell_back_from is not None:
        release = recovery.release
        outbox.record(
            InstallState.ROLLED_BACK,
            assignment_version=release.assignment_version if release else None,
            release_id=release.release_id if release else None,
            detail=f"assignment {recovery.fell_back_from} failed verification at startup;"
            " serving the previous release",
            serving_release_id=release.release_id if release else None,
        )


@dataclass
class OpenedStore:
    """What startup could open: the store (None while it cannot be written), what to
    serve, what recovery did, and why the store is read-only (None when it is not)."""

    store: ReleaseStore | None
    release: InstalledRelease | None
    recovery: Recovery | None
    problem: str | None


def open_store(settings: AgentSettings) -> OpenedStore:
    """Open and recover the store. If that fails (the database cannot be written or even
    moved aside), find the verified release to serve read-only instead: this never raises
    for a full disk, a read-only filesystem or a corrupt database."""
    state_dir = settings.state_dir
    store: ReleaseStore | None = None
    try:
        store = ReleaseStore.open(state_dir)
        recovery = store.recover(free_space_margin=settings.download_free_space_margin_bytes)
        return OpenedStore(store, recovery.release, recovery, None)
    except (StoreError, OSError) as e:
        if store is not None:
            store.close()
        problem = str(e)
    unfinished = StateDB.peek_unfinished(state_dir / STATE_DB)
    unproven = (
        unfinished.release_dir
        if unfinished is not None
        and unfinished.step in (InstallStep.ACTIVATING, InstallStep.HEALTH_CHECK)
        else None
    )
    release = ReleaseFiles(state_dir).serveable_release(unproven=unproven)
    return OpenedStore(None, release, None, problem)


def serving_summary(release: InstalledRelease | None) -> dict[str, object] | None:
    """The release the models are served from right now. It differs from the update loop's
    installed release while a new one is in its health window (serving, not yet committed)."""
    if release is None:
        return None
    return {
        "release_id": release.release_id,
        "release_name": release.release_name,
        "release_version": release.release_version,
        "assignment_version": release.assignment_version,
    }


class _Updates:
    """The store and the update loop once the store can be written; what status shows."""

    def __init__(self, opened: OpenedStore) -> None:
        self.store = opened.store
        self.problem = opened.problem
        self.loop: UpdateLoop | None = None

    def store_condition(self) -> str:
        if self.store is None:
            return f"read-only: {self.problem}"
        if self.store.db.write_error is not None:
            return f"read-only: {self.store.db.write_error}"
        return "ok"

    def status(self, serving: InstalledRelease | None) -> dict[str, object]:
        if self.loop is not None:
            return self.loop.status().as_dict()
        return UpdateStatus(
            phase="store_read_only",
            release_id=serving.release_id if serving else None,
            release_name=serving.release_name if serving else None,
            release_version=serving.release_version if serving else None,
            assignment_version=serving.assignment_version if serving else None,
            last_error=self.problem,
        ).as_dict()


def run_agent(settings: AgentSettings) -> int:
    """Run until SIGTERM/SIGINT; return the process exit code."""
    import uvicorn

    from edge_agent.api import create_local_api
    from edge_agent.runtime import ModelRegistry
    from edge_agent.serving import ReleaseServing
    from edge_agent.updates.bundle import offline_kiosk_identity
    from protocol.http_server import server_config

    stop = threading.Event()
    servers: list[uvicorn.Server] = []

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        # also runs when uvicorn re-raises the signal that stopped it: shutdown goes on
        stop.set()
        for server in servers:
            server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)

    state_dir = settings.state_dir
    # a kiosk set up from an offline bundle serves before (or without) enrollment
    identity = offline_kiosk_identity(state_dir) or load_identity(state_dir)
    token = (
        settings.api_token.get_secret_value()
        if settings.api_token is not None
        else load_api_token(state_dir).get_secret_value()
    )
    opened = open_store(settings)
    registry = ModelRegistry(settings)
    serving = ReleaseServing(registry, settings)
    release = opened.release
    if opened.problem is not None:
        log.warning(
            "the store cannot be written (%s); serving the verified release on disk read-only"
            " and trying again every %g s",
            opened.problem,
            settings.store_retry_seconds,
        )
    if release is not None:
        registry.activate(release)  # at once: models load lazily, serving needs no network
        log.info(
            "serving release %s %s (assignment %d)",
            release.release_name,
            release.release_version,
            release.assignment_version,
        )
    else:
        log.info("no verified release installed yet; waiting for an assignment")
    http = new_http_client(identity.server_url)
    updates = _Updates(opened)
    remote = RemoteConfigAgent(settings, serving)
    telemetry = TelemetryAgent(
        settings,
        device_id=identity.device_id,
        layers=remote.live.telemetry_layers,
        release_id=lambda: registry.release.release_id if registry.release else None,
        models_loaded=lambda: sum(1 for m in registry.models() if m.loaded),
        checkpoint=TestOnlyPause(settings.test_pause_at, state_dir),
    )
    if opened.store is not None:  # the config in force applies before the API serves
        remote.restore(identity=identity, db=opened.store.db, http=http, loop=None)

    def start_updates(store: ReleaseStore, recovery: Recovery | None) -> UpdateLoop:
        loop = compose_update_loop(
            settings=settings,
            identity=identity,
            store=store,
            activator=serving,
            health=serving,
            http=http,
            stop=stop,
            checkpoint=TestOnlyPause(settings.test_pause_at, state_dir),
        )
        if recovery is not None:
            try:
                report_recovery(recovery, StatusOutbox(store.db, device_id=identity.device_id))
            except StoreError as e:
                log.warning("the recovery report was not queued: %s", e)
        return loop

    def reopen_store() -> ReleaseStore | None:
        """Wait until the store can be written again (None: the agent is stopping)."""
        while not stop.wait(settings.store_retry_seconds):
            again = open_store(settings)
            if again.store is None:
                updates.problem = again.problem
                continue
            if again.release != registry.release:
                if again.release is None:
                    registry.deactivate()
                else:
                    registry.activate(again.release)
            for action in again.recovery.actions if again.recovery else ():
                log.warning("store recovery: %s", action)
            log.info("the store can be written again; updates resume")
            return again.store
        return None

    def status() -> dict[str, object]:
        return {
            "device_id": identity.device_id,
            "serving": serving_summary(registry.release),
            "store": updates.store_condition(),
            "updates": updates.status(registry.release),
            "config": remote.status(),
            "telemetry": telemetry.status(),
        }

    app = create_local_api(
        registry,
        settings,
        api_token=token,
        status=status,
        extra_routers=[*serving.routers(), telemetry.router()],
        chat_grounding=serving.rag,
        generation_observer=telemetry.observer,
    )
    remote.install(app)
    telemetry.install(app)  # outermost: it counts the rate limiter's answers too

    if updates.store is not None:
        updates.loop = start_updates(updates.store, opened.recovery)

    def update_thread() -> None:
        if release is not None:
            _warm_or_roll_back(registry, updates.store)
        store, loop = updates.store, updates.loop
        if store is None or loop is None:  # read-only: wait until the store can be written
            store = reopen_store()
            if store is None:
                return
            loop = start_updates(store, None)
            updates.store, updates.loop = store, loop
        if remote.sync is None:
            remote.restore(identity=identity, db=store.db, http=http, loop=None)
        remote.attach_loop(loop)
        remote.start(identity=identity, stop=stop)
        uplink = ControlPlaneClient(
            http, device_id=identity.device_id, device_key=load_device_key(state_dir)
        )
        telemetry.start(store.db, send=uplink.send_telemetry, stop=stop)
        loop.run(stop)

    worker = threading.Thread(target=update_thread, name="update-loop", daemon=True)
    config = server_config(  # header, connection and idle limits: protocol.http_limits
        app,
        host=settings.api_host,
        port=settings.api_port,
        limits=LOCAL_API_HTTP_LIMITS,
        log_level="info",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    servers.append(server)
    if stop.is_set():
        server.should_exit = True
    worker.start()
    try:
        server.run()
    finally:
        log.info("shutting down: stopping the update loop")
        stop.set()
        worker.join(timeout=30)
        telemetry.close()
        remote.close()
        serving.close()
        http.close()
        if updates.store is not None:
            updates.store.close()
    log.info("stopped")
    return 0


def _warm_or_roll_back(registry: ModelRegistry, store: ReleaseStore | None) -> None:
    try:
        registry.warm()
    except Exception:
        log.exception("the current release's models failed to load; trying the previous one")
        if store is None:  # read-only: the pointers cannot be flipped
            return
        previous = store.roll_back()
        if previous is not None:
            registry.activate(previous)
