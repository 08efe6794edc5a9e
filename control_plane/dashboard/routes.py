"""The dashboard's pages and forms (thin: read the session, call the dashboard service,
render a template).

Every route here is a :class:`DashboardRoute`, which adds the security headers and turns
errors into HTML pages: an unauthenticated page view goes to the sign-in page, anything
else gets the error's status and message.
"""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool

from control_plane.access.roles import Permission, permissions_of
from control_plane.access.tokens import Principal
from control_plane.api.errors import describe_validation_errors
from control_plane.dashboard import service
from control_plane.dashboard.session import (
    LOGIN_COOKIE,
    LOGIN_FORM_LIFETIME,
    SESSION_COOKIE,
    DashboardSession,
    SessionSigner,
    fresh_id,
    same_origin,
)
from control_plane.errors import (
    AuthenticationError,
    ControlPlaneError,
    InvalidRequestError,
    PermissionDeniedError,
)
from control_plane.rollouts.core import Action
from control_plane.services import ControlPlane

PREFIX = "/dashboard"
LOGIN_PATH = f"{PREFIX}/login"
HERE = Path(__file__).parent
STYLESHEET = HERE / "static" / "dashboard.css"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _forget(response: Response, name: str) -> None:
    response.delete_cookie(name, path=PREFIX, httponly=True, samesite="strict")


def _error_page(request: Request, exc: ControlPlaneError) -> Response:
    if isinstance(exc, AuthenticationError) and request.method in ("GET", "HEAD"):
        response: Response = RedirectResponse(LOGIN_PATH, status_code=303)
        _forget(response, SESSION_COOKIE)
        return response
    html = _templates.get_template("error.html").render(
        status=exc.http_status, message=str(exc), signed_in=None, csrf=""
    )
    return HTMLResponse(html, status_code=exc.http_status)


class DashboardRoute(APIRoute):
    """Adds the security headers to every answer, and answers errors with HTML."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except ControlPlaneError as exc:
                response = _error_page(request, exc)
            except RequestValidationError as exc:
                wrong = InvalidRequestError(describe_validation_errors(exc.errors()))
                response = _error_page(request, wrong)
            response.headers.update(SECURITY_HEADERS)
            if request.url.path != f"{PREFIX}/static/dashboard.css":
                response.headers["Cache-Control"] = "no-store"
            return response

        return guarded


@dataclass(frozen=True)
class SignedIn:
    principal: Principal
    session: DashboardSession

    def may(self, permission: Permission) -> bool:
        return permission in permissions_of(self.principal.role)


def _cp(request: Request) -> ControlPlane:
    cp: ControlPlane = request.app.state.control_plane
    return cp


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _check_origin(request: Request) -> None:
    if not same_origin(
        request.headers.get("origin"), request.headers.get("referer"), _own_origin(request)
    ):
        raise PermissionDeniedError(
            "this form was not sent from the dashboard's own pages (Origin/Referer is"
            " another site or missing); open the dashboard and submit it from there"
        )


def create_router(signer: SessionSigner) -> APIRouter:
    """The dashboard under ``/dashboard``; ``signer`` holds the session key."""
    router = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)

    def signed_in(request: Request) -> SignedIn:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise AuthenticationError("not signed in to the dashboard")
        cp = _cp(request)
        session = signer.open(cookie, cp.clock())
        principal = service.principal_of(cp, session)
        principal.require(Permission.READ)
        return SignedIn(principal, session)

    Viewer = Annotated[SignedIn, Depends(signed_in)]

    def render(
        request: Request, user: SignedIn | None, template: str, **context: Any
    ) -> HTMLResponse:
        html = _templates.get_template(template).render(
            signed_in=user,
            csrf="" if user is None else signer.csrf_token(user.session.session_id),
            page=template.removesuffix(".html"),
            may_operate=user is not None and user.may(Permission.ASSIGN),
            **context,
        )
        return HTMLResponse(html)

    def set_cookie(request: Request, response: Response, name: str, value: str, age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def login_page(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
        nonce = signer.login_nonce(_cp(request).clock(), fresh_id())
        response = render(
            request, None, "login.html", error=error, login_csrf=signer.login_csrf_token(nonce)
        )
        response.status_code = status
        set_cookie(request, response, LOGIN_COOKIE, nonce, int(LOGIN_FORM_LIFETIME.total_seconds()))
        return response

    @router.get("/login")
    def show_login(request: Request) -> HTMLResponse:
        return login_page(request)

    @router.post("/login")
    def do_login(
        request: Request,
        token: Annotated[str, Form(max_length=service.MAX_TOKEN_CHARS)] = "",
        csrf: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        _check_origin(request)
        cp = _cp(request)
        now = cp.clock()
        signer.check_login(request.cookies.get(LOGIN_COOKIE, ""), csrf, now)
        try:
            _principal, session = service.sign_in(cp, token, now)
        except AuthenticationError as e:
            return login_page(request, error=str(e), status=401)
        response = RedirectResponse(PREFIX, status_code=303)
        lifetime = int((session.expires_at - now).total_seconds())
        set_cookie(request, response, SESSION_COOKIE, signer.seal(session), lifetime)
        _forget(response, LOGIN_COOKIE)
        return response

    @router.post("/logout")
    def do_logout(
        request: Request, user: Viewer, csrf: Annotated[str, Form(max_length=200)] = ""
    ) -> Response:
        _check_origin(request)
        signer.check_csrf(user.session.session_id, csrf)
        cp = _cp(request)
        service.sign_out(cp, user.principal, cp.clock())
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        _forget(response, SESSION_COOKIE)
        return response

    @router.get("")
    def fleet(request: Request, user: Viewer) -> HTMLResponse:
        cp = _cp(request)
        return render(request, user, "fleet.html", fleet=service.fleet_overview(cp, cp.clock()))

    @router.get("/releases")
    def release_distribution(request: Request, user: Viewer) -> HTMLResponse:
        cp = _cp(request)
        return render(
            request,
            user,
            "releases.html",
            fleet=service.fleet_overview(cp, cp.clock()),
            releases=service.release_list(cp),
        )

    @router.get("/rollouts")
    def rollouts(request: Request, user: Viewer) -> HTMLResponse:
        return render(request, user, "rollouts.html", rollouts=service.rollout_pages(_cp(request)))

    @router.get("/rollouts/{rollout_id}")
    def rollout(request: Request, user: Viewer, rollout_id: str) -> HTMLResponse:
        page = service.rollout_detail(_cp(request), rollout_id)
        return render(request, user, "rollout.html", rollout=page)

    @router.post("/rollouts/{rollout_id}/{action}")
    async def rollout_action(
        request: Request,
        user: Viewer,
        rollout_id: str,
        action: Action,
        csrf: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        """Pause, resume, approve or abort (operator), through the rollout service that
        the API uses (audited as ``rollout.<action>``)."""
        _check_origin(request)
        signer.check_csrf(user.session.session_id, csrf)
        user.principal.require(Permission.ASSIGN)
        cp = _cp(request)
        await run_in_threadpool(
            cp.rollouts.act, rollout_id, action, actor=user.principal.actor, now=cp.clock()
        )
        return RedirectResponse(f"{PREFIX}/rollouts/{rollout_id}", status_code=303)

    @router.get("/telemetry")
    def telemetry(request: Request, user: Viewer) -> HTMLResponse:
        cp = _cp(request)
        return render(request, user, "telemetry.html", telemetry=service.telemetry(cp, cp.clock()))

    @router.get("/static/dashboard.css")
    def stylesheet() -> FileResponse:
        return FileResponse(STYLESHEET, media_type="text/css")

    return router
