"""The fleet dashboard: server-rendered pages behind the API's tokens and roles.

Pages: the fleet (online, stale, last seen, release, device class), the release
distribution, rollouts with their stages and gate decisions, and telemetry (latency
plots, error rates, privacy budget). Sessions are signed cookies (``session``); the
pages read through ``service``; ``routes`` is thin.
"""

from __future__ import annotations

from fastapi import FastAPI

from control_plane.dashboard.routes import PREFIX, create_router
from control_plane.dashboard.session import SessionSigner, load_or_create_key
from control_plane.settings import ControlPlaneSettings

__all__ = ["PREFIX", "install_dashboard"]

KEY_FILE = "dashboard-session.key"


def install_dashboard(app: FastAPI, settings: ControlPlaneSettings) -> None:
    """Serve the dashboard under ``/dashboard``, signing sessions with the key in
    ``<data_dir>/dashboard-session.key`` (made on first start)."""
    signer = SessionSigner(load_or_create_key(settings.data_dir / KEY_FILE))
    app.include_router(create_router(signer))
