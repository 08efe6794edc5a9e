"""What the dashboard asks of the control plane: sign-in, the signed-in principal, and
the reads behind each page, through the same services as the API."""

from __future__ import annotations

from datetime import datetime, timedelta

from control_plane import audit
from control_plane.access.roles import Role
from control_plane.access.tokens import Principal, authenticate_api_token
from control_plane.dashboard.fleet_view import FleetOverview, overview
from control_plane.dashboard.rollout_view import RolloutPage, rollout_page
from control_plane.dashboard.session import DashboardSession, fresh_id
from control_plane.dashboard.telemetry_view import PLOTTED, TelemetryPage, telemetry_page
from control_plane.errors import AuthenticationError
from control_plane.fleet import devices as fleet_devices
from control_plane.releases import service as releases
from control_plane.services import ControlPlane
from control_plane.storage.models import ApiToken, Release

MAX_TOKEN_CHARS = 256
TELEMETRY_WINDOW = timedelta(hours=24)
ROLLOUTS_LISTED = 100


def sign_in(cp: ControlPlane, secret: str, now: datetime) -> tuple[Principal, DashboardSession]:
    """Check an API token (as the API does) and open a dashboard session for it; the
    sign-in is audited as ``dashboard.sign_in``."""
    secret = secret.strip()
    if not secret or len(secret) > MAX_TOKEN_CHARS or not secret.isascii():
        raise AuthenticationError("that is not an API token; paste the token 'outpost-cp' gave")
    with cp.db.transaction() as session:
        principal = authenticate_api_token(session, secret)
        started = DashboardSession.start(principal.token_id, now, fresh_id())
        audit.record(
            session,
            actor=principal.actor,
            action="dashboard.sign_in",
            target=principal.token_id,
            now=now,
            details={"expires_at": started.expires_at.isoformat()},
        )
    return principal, started


def sign_out(cp: ControlPlane, principal: Principal, now: datetime) -> None:
    with cp.db.transaction() as session:
        audit.record(
            session,
            actor=principal.actor,
            action="dashboard.sign_out",
            target=principal.token_id,
            now=now,
        )


def principal_of(cp: ControlPlane, dashboard_session: DashboardSession) -> Principal:
    """The API token behind a session, checked again on every request: a revoked token
    ends its sessions at once, and a role change applies at once."""
    with cp.db.transaction() as session:
        row = session.get(ApiToken, dashboard_session.token_id)
        if row is None:
            raise AuthenticationError("the API token of this session is gone; sign in again")
        if row.revoked_at is not None:
            raise AuthenticationError("the API token of this session was revoked; sign in again")
        return Principal(token_id=row.id, name=row.name, role=Role(row.role))


def fleet_overview(cp: ControlPlane, now: datetime) -> FleetOverview:
    return overview(fleet_devices.list_devices(cp.db), now)


def release_list(cp: ControlPlane) -> list[Release]:
    return releases.list_releases(cp.db)


def rollout_pages(cp: ControlPlane) -> list[RolloutPage]:
    return [rollout_page(v) for v in cp.rollouts.views(limit=ROLLOUTS_LISTED)]


def rollout_detail(cp: ControlPlane, rollout_id: str) -> RolloutPage:
    return rollout_page(cp.rollouts.view(rollout_id))


def telemetry(cp: ControlPlane, now: datetime) -> TelemetryPage:
    """The last :data:`TELEMETRY_WINDOW` of estimates, from the telemetry service."""
    since = now - TELEMETRY_WINDOW
    return telemetry_page(
        latency={m: cp.telemetry.latency_series(m, since=since, until=now) for m in PLOTTED},
        errors=cp.telemetry.error_rates(since=since, until=now),
        budget=cp.telemetry.privacy_budget(since=since, until=now),
        release_names={r.id: f"{r.name}@{r.version}" for r in release_list(cp)},
    )
