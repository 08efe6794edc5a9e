"""The application factory: everything is built from settings when called, not at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from control_plane.api import (
    config_routes,
    device_routes,
    operator_routes,
    repo_routes,
    rollout_routes,
)
from control_plane.api.errors import install_error_handlers
from control_plane.api.http_surface import install_http_surface
from control_plane.dashboard import install_dashboard
from control_plane.observability import install_metrics
from control_plane.services import Clock, ControlPlane, utc_now
from control_plane.settings import ControlPlaneSettings

__all__ = ["create_app"]


def create_app(settings: ControlPlaneSettings, *, clock: Clock = utc_now) -> FastAPI:
    """The control-plane ASGI app for an initialized data dir (see ``outpost-cp init``)."""
    control_plane = ControlPlane.build(settings, clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        workers = control_plane.workers()
        workers.start()
        try:
            yield
        finally:
            workers.stop()
            control_plane.close()

    app = FastAPI(
        title="Outpost control plane",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # the schema routes are added by install_http_surface
        openapi_url=None,
        redoc_url=None,
    )
    app.state.control_plane = control_plane
    install_error_handlers(app)
    install_http_surface(app, settings)
    install_metrics(app, control_plane)
    app.include_router(operator_routes.router)
    app.include_router(rollout_routes.router)
    app.include_router(device_routes.router)
    app.include_router(config_routes.router)
    app.include_router(repo_routes.router)
    install_dashboard(app, settings)
    return app
