"""The application factory: everything is built from settings when called, not at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import FastAPI

from control_plane.artifacts.blob_store import BlobStore
from control_plane.director.service import Director
from control_plane.keyring import Keyring, OnlineKeySource
from control_plane.metadata_store import MetadataStore
from control_plane.settings import ControlPlaneSettings
from control_plane.storage.database import Database

Clock = Callable[[], datetime]
log = logging.getLogger("control_plane")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ControlPlane:
    """The running service's parts, handed to routes through ``app.state``."""

    settings: ControlPlaneSettings
    db: Database
    keyring: Keyring
    online_keys: OnlineKeySource
    metadata: MetadataStore
    director: Director
    blobs: BlobStore
    clock: Clock

    @classmethod
    def build(cls, settings: ControlPlaneSettings, clock: Clock = utc_now) -> ControlPlane:
        keyring = Keyring(
            offline_dir=settings.resolved_offline_keys_dir, online_dir=settings.online_keys_dir
        )
        online = OnlineKeySource(keyring)
        online.current()  # fail at start, not on the first signature, if keys are missing
        db = Database.from_url(settings.resolved_database_url)
        blobs = BlobStore(settings.blobs_dir)
        blobs.prepare()
        return cls(
            settings=settings,
            db=db,
            keyring=keyring,
            online_keys=online,
            metadata=MetadataStore(db, settings.lifetimes, online),
            director=Director(db, online, settings.assignment_ttl),
            blobs=blobs,
            clock=clock,
        )


def create_app(settings: ControlPlaneSettings, *, clock: Clock = utc_now) -> FastAPI:
    """The control-plane ASGI app for an initialized data dir (see ``outpost-cp init``)."""
    from control_plane.api import device_routes, operator_routes, repo_routes
    from control_plane.api.errors import install_error_handlers

    control_plane = ControlPlane.build(settings, clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        control_plane.db.dispose()

    app = FastAPI(
        title="Outpost control plane",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.control_plane = control_plane
    install_error_handlers(app)
    app.include_router(operator_routes.router)
    app.include_router(device_routes.router)
    app.include_router(repo_routes.router)
    return app
