"""The agent process: recover the store, serve the current release at once, keep updating.

``run_agent`` composes the pieces: the release store (recovered first), the runtime's
model registry, the local API on 127.0.0.1 (uvicorn, main thread) and the update loop
(a background thread). SIGTERM/SIGINT stop the server, then the loop, then the models.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING

import httpx

from edge_agent.settings import AgentSettings
from edge_agent.store import (
    DeviceIdentity,
    Recovery,
    ReleaseStore,
    load_api_token,
    load_device_key,
    load_identity,
    load_trusted_root,
)
from edge_agent.updates import (
    ArtifactDownloader,
    ControlPlaneClient,
    HealthProbe,
    ImageMetadataClient,
    PollSchedule,
    ReleaseActivator,
    StatusOutbox,
    TestOnlyPause,
    UpdateLoop,
    new_http_client,
)
from edge_agent.updates.downloader import Checkpoint
from protocol import InstallState, paths

if TYPE_CHECKING:
    from edge_agent.runtime import ModelRegistry

log = logging.getLogger("edge_agent")

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
) -> UpdateLoop:
    """Wire the update loop for an enrolled device (also used by the protocol tests)."""
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
            metadata_dir=state_dir / TUF_METADATA_DIR,
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
        ),
        activator=activator,
        health=health,
        outbox=outbox,
        schedule=PollSchedule(settings.poll_interval_seconds, settings.max_backoff_seconds),
        clock=clock,
        rng=rng,
        checkpoint=checkpoint,
        stop=stop,
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


def run_agent(settings: AgentSettings) -> int:
    """Run until SIGTERM/SIGINT; return the process exit code."""
    import uvicorn

    from edge_agent.api import create_local_api
    from edge_agent.runtime import ModelRegistry
    from edge_agent.serving import ReleaseServing

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
    identity = load_identity(state_dir)
    token = (
        settings.api_token.get_secret_value()
        if settings.api_token is not None
        else load_api_token(state_dir).get_secret_value()
    )
    store = ReleaseStore.open(state_dir)
    recovery = store.recover()
    registry = ModelRegistry(settings)
    serving = ReleaseServing(registry, settings)
    release = recovery.release
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
    report_recovery(recovery, StatusOutbox(store.db, device_id=identity.device_id))

    def status() -> dict[str, object]:
        return {"device_id": identity.device_id, "updates": loop.status().as_dict()}

    app = create_local_api(
        registry,
        settings,
        api_token=token,
        status=status,
        extra_routers=serving.routers(),
        chat_grounding=serving.rag,
    )

    def update_thread() -> None:
        if release is not None:
            _warm_or_roll_back(registry, store)
        loop.run(stop)

    worker = threading.Thread(target=update_thread, name="update-loop", daemon=True)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
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
        serving.close()
        http.close()
        store.close()
    log.info("stopped")
    return 0


def _warm_or_roll_back(registry: ModelRegistry, store: ReleaseStore) -> None:
    try:
        registry.warm()
    except Exception:
        log.exception("the current release's models failed to load; trying the previous one")
        previous = store.roll_back()
        if previous is not None:
            registry.activate(previous)
