"""Every dashboard route, enumerated from the app, checked for who may use it: nobody
without a session, not a forged, altered or expired one, not a revoked token's; a viewer
may look and not act; an operator may act (audited as the API's action is)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from control_plane.dashboard import PREFIX
from control_plane.dashboard.session import SESSION_COOKIE
from control_plane.rollouts.core import Action
from tests.dashboard.conftest import SeededFleet, csrf_of, signed_in_client

# The only routes a browser may use before signing in.
PUBLIC = {
    ("GET", "/dashboard/login"),
    ("POST", "/dashboard/login"),
    ("GET", "/dashboard/static/dashboard.css"),
}
# What a signed-in reader may POST (it changes nothing of the fleet); every other POST
# route must refuse a reader with a valid form.
READER_MAY_POST = {"/dashboard/logout"}
MUTATING = {("POST", "/dashboard/rollouts/{rollout_id}/{action}")}


def served_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers opened (this
    FastAPI lists an included router as one opaque entry; the dashboard's routes are not
    in the OpenAPI schema)."""
    stack: list[Any] = list(app.routes)
    while stack:
        route = stack.pop()
        inner = getattr(route, "original_router", None)
        if inner is not None:
            stack.extend(inner.routes)
        elif isinstance(route, BaseRoute):
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                yield method, getattr(route, "path", "")


def dashboard_routes(seeded: SeededFleet) -> list[tuple[str, str]]:
    found = sorted(
        (method, path)
        for method, path in served_routes(seeded.cp.app)
        if path == PREFIX or path.startswith(PREFIX + "/")
    )
    # the enumeration sees the pages this test knows of, so it is not vacuous
    assert {("GET", "/dashboard"), ("GET", "/dashboard/rollouts/{rollout_id}")} <= set(found)
    assert set(found) >= PUBLIC and set(found) >= MUTATING
    return found


def concrete(path: str, seeded: SeededFleet) -> str:
    return path.replace("{rollout_id}", seeded.halted_rollout).replace("{action}", "abort")


def guarded(seeded: SeededFleet) -> Iterator[tuple[str, str]]:
    for method, path in dashboard_routes(seeded):
        if (method, path) not in PUBLIC:
            yield method, concrete(path, seeded)


def assert_refused(client: TestClient, method: str, url: str) -> None:
    r = client.request(method, url, follow_redirects=False, headers={"Origin": "http://testserver"})
    if method == "GET":
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login", (url, r)
    else:
        assert r.status_code == 401, (method, url, r.status_code, r.text)
    assert "kiosk-" not in r.text, "no fleet data for a stranger"


def test_no_session_reaches_no_guarded_route(seeded: SeededFleet) -> None:
    stranger = TestClient(seeded.cp.app)
    for method, url in guarded(seeded):
        assert_refused(stranger, method, url)


def test_forged_and_altered_cookies_are_refused(seeded_sqlite: SeededFleet) -> None:
    seeded = seeded_sqlite
    viewer = signed_in_client(seeded.cp, "viewer")
    good = viewer.cookies[SESSION_COOKIE]
    body, _, mac = good.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    admin_id = next(
        t
        for t in seeded.cp.client.get("/api/v1/tokens", headers=seeded.cp.auth()).json()
        if t["role"] == "admin"
    )["id"]
    payload["tid"] = admin_id  # claim the admin's token, keep the viewer's signature
    raised = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    for cookie in (
        f"{raised}.{mac}",
        f"{body}.{mac[:-2]}AA",
        "not-a-cookie",
        "x" * 5000,
    ):
        forger = TestClient(seeded.cp.app)
        forger.cookies.set(SESSION_COOKIE, cookie, path="/dashboard")
        for method, url in guarded(seeded):
            assert_refused(forger, method, url)


def test_a_revoked_token_ends_its_dashboard_session(seeded: SeededFleet) -> None:
    viewer = signed_in_client(seeded.cp, "viewer")
    assert viewer.get("/dashboard").status_code == 200
    token_id = next(
        t["id"]
        for t in seeded.cp.client.get("/api/v1/tokens", headers=seeded.cp.auth()).json()
        if t["role"] == "viewer"
    )
    r = seeded.cp.client.delete(f"/api/v1/tokens/{token_id}", headers=seeded.cp.auth())
    assert r.status_code == 200, r.text
    for method, url in guarded(seeded):
        assert_refused(viewer, method, url)


def test_an_expired_session_is_refused(seeded_sqlite: SeededFleet) -> None:
    seeded = seeded_sqlite
    viewer = signed_in_client(seeded.cp, "viewer")
    seeded.cp.clock.advance(hours=8, seconds=1)
    for method, url in guarded(seeded):
        assert_refused(viewer, method, url)


def test_a_viewer_sees_every_page_and_changes_nothing(seeded: SeededFleet) -> None:
    assert_reader_changes_nothing(seeded, "viewer")


def test_a_release_manager_may_look_but_not_act(seeded_sqlite: SeededFleet) -> None:
    assert_reader_changes_nothing(seeded_sqlite, "release-manager")


def assert_reader_changes_nothing(seeded: SeededFleet, role: str) -> None:
    client = signed_in_client(seeded.cp, role)
    for method, url in guarded(seeded):
        if method == "GET":
            r = client.get(url)
            assert r.status_code == 200, (url, r.text)
    page = client.get(f"/dashboard/rollouts/{seeded.halted_rollout}")
    assert 'action="/dashboard/rollouts/' not in page.text, "no action forms for a reader"
    csrf = csrf_of(page.text)
    audit_before = len(seeded.cp.audit())
    posts = [url for method, url in guarded(seeded) if method == "POST"]
    posts += [  # every action, not only the one guarded() names
        f"/dashboard/rollouts/{seeded.halted_rollout}/{action.value}" for action in Action
    ]
    for url in posts:
        if url in READER_MAY_POST:
            continue
        r = client.post(
            url,
            data={"csrf": csrf},
            headers={"Origin": "http://testserver"},
            follow_redirects=False,
        )
        assert r.status_code == 403, (url, r.text)
        assert "may not" in r.text
    assert seeded.fleet.show(seeded.halted_rollout)["state"] == "halted"
    assert len(seeded.cp.audit()) == audit_before


def test_an_operator_acts_through_the_rollout_service_and_is_audited(
    seeded: SeededFleet,
) -> None:
    operator = signed_in_client(seeded.cp, "operator")
    page = operator.get(f"/dashboard/rollouts/{seeded.halted_rollout}")
    assert f'action="/dashboard/rollouts/{seeded.halted_rollout}/abort"' in page.text
    r = operator.post(
        f"/dashboard/rollouts/{seeded.halted_rollout}/abort",
        data={"csrf": csrf_of(page.text)},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert seeded.fleet.show(seeded.halted_rollout)["state"] == "aborted"
    entry = seeded.cp.audit()[0]
    assert entry["action"] == "rollout.abort" and entry["target"] == seeded.halted_rollout
    assert entry["actor"].startswith("token:t-operator(")
