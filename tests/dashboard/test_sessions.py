"""Signing in and out: what the cookies carry and how they are flagged, what a wrong
token gets, and CSRF: a form from another site, or without this session's token, changes
nothing."""

from __future__ import annotations

from typing import Protocol

import pytest
from fastapi.testclient import TestClient

from control_plane.dashboard.session import LOGIN_COOKIE, SESSION_COOKIE
from tests.control_plane.conftest import ControlPlaneUnderTest
from tests.dashboard.conftest import SeededFleet, csrf_of, sign_in, signed_in_client


class SetCookieHeaders(Protocol):
    def get_list(self, key: str, split_commas: bool = False) -> list[str]: ...


class Answer(Protocol):
    @property
    def headers(self) -> SetCookieHeaders: ...


def cookie_attributes(response: Answer) -> dict[str, dict[str, str]]:
    """Each Set-Cookie of a response: name -> its attributes (lower-case keys)."""
    out: dict[str, dict[str, str]] = {}
    for header in response.headers.get_list("set-cookie"):
        first, *attributes = [part.strip() for part in header.split(";")]
        name, _, value = first.partition("=")
        attrs = {"value": value}
        for attribute in attributes:
            key, _, val = attribute.partition("=")
            attrs[key.lower()] = val or "true"
        out[name] = attrs
    return out


def viewer_secret(cp: ControlPlaneUnderTest) -> str:
    return cp.auth("viewer")["Authorization"].removeprefix("Bearer ")


def test_session_cookie_is_httponly_strict_scoped_and_expires(cp: ControlPlaneUnderTest) -> None:
    client = TestClient(cp.app)
    login_page = client.get("/dashboard/login")
    login = cookie_attributes(login_page)[LOGIN_COOKIE]
    assert login["httponly"] == "true" and login["samesite"].lower() == "strict"
    r = sign_in(client, viewer_secret(cp))
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    session = cookie_attributes(r)[SESSION_COOKIE]
    assert session["httponly"] == "true"
    assert session["samesite"].lower() == "strict"
    assert session["path"] == "/dashboard"
    assert session["max-age"] == str(8 * 3600)
    assert "secure" not in session, "plain HTTP on loopback: a Secure cookie would be dropped"
    assert viewer_secret(cp) not in r.headers["set-cookie"], "the token is not in it"
    entry = cp.audit()[0]
    assert entry["action"] == "dashboard.sign_in" and entry["actor"].startswith("token:t-viewer(")


def test_over_tls_the_cookies_are_secure(cp: ControlPlaneUnderTest) -> None:
    client = TestClient(cp.app, base_url="https://testserver")
    assert cookie_attributes(client.get("/dashboard/login"))[LOGIN_COOKIE]["secure"] == "true"
    r = sign_in(client, viewer_secret(cp))
    assert r.status_code == 303, r.text
    assert cookie_attributes(r)[SESSION_COOKIE]["secure"] == "true"


@pytest.mark.parametrize(
    "token",
    ["ocp_not-a-token-at-all-0123456789", "", "x" * 257, "ocp_\u00e9t\u00e9"],
    ids=["unknown", "empty", "too-long", "not-ascii"],
)
def test_a_wrong_token_gets_the_form_again_and_no_session(
    cp: ControlPlaneUnderTest, token: str
) -> None:
    client = TestClient(cp.app)
    r = sign_in(client, token)
    assert r.status_code in (401, 422), r.text
    assert SESSION_COOKIE not in cookie_attributes(r)
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    assert token not in r.text or not token, "the page does not echo what was typed"


def test_sign_out_clears_the_cookie_and_is_audited(cp: ControlPlaneUnderTest) -> None:
    client = signed_in_client(cp, "viewer")
    page = client.get("/dashboard")
    r = client.post(
        "/dashboard/logout",
        data={"csrf": csrf_of(page.text)},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    cleared = cookie_attributes(r)[SESSION_COOKIE]
    assert cleared["max-age"] == "0" and cleared["value"] in ("", '""')
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    assert cp.audit()[0]["action"] == "dashboard.sign_out"


def test_csrf_forms_from_elsewhere_change_nothing(seeded_sqlite: SeededFleet) -> None:
    seeded = seeded_sqlite
    operator = signed_in_client(seeded.cp, "operator")
    rollout = seeded.halted_rollout
    csrf = csrf_of(operator.get(f"/dashboard/rollouts/{rollout}").text)
    other = signed_in_client(seeded.cp, "admin")
    others_csrf = csrf_of(other.get("/dashboard").text)
    own = {"Origin": "http://testserver"}
    attempts = {
        "no token": ({}, own),
        "wrong token": ({"csrf": "A" * 43}, own),
        "another session's token": ({"csrf": others_csrf}, own),
        "another site": ({"csrf": csrf}, {"Origin": "https://evil.example"}),
        "null origin": ({"csrf": csrf}, {"Origin": "null"}),
        "no origin, no referer": ({"csrf": csrf}, {}),
        "referer of another site": ({"csrf": csrf}, {"Referer": "https://evil.example/x"}),
    }
    audit_before = len(seeded.cp.audit())
    for what, (data, headers) in attempts.items():
        r = operator.post(
            f"/dashboard/rollouts/{rollout}/abort",
            data=data,
            headers=headers,
            follow_redirects=False,
        )
        assert r.status_code == 403, (what, r.status_code, r.text)
        assert "CSRF" in r.text or "not sent from the dashboard" in r.text, what
    assert seeded.fleet.show(rollout)["state"] == "halted"
    assert len(seeded.cp.audit()) == audit_before
    r = operator.post(
        f"/dashboard/rollouts/{rollout}/abort",
        data={"csrf": csrf},
        headers={"Referer": f"http://testserver/dashboard/rollouts/{rollout}"},
        follow_redirects=False,
    )
    assert r.status_code == 303, "a same-origin Referer stands in for a missing Origin"


def test_sign_in_needs_the_form_this_server_served(cp: ControlPlaneUnderTest) -> None:
    secret = viewer_secret(cp)
    client = TestClient(cp.app)
    page = client.get("/dashboard/login")
    csrf = csrf_of(page.text)
    for what, data, headers, cookies in (
        ("another site", {"csrf": csrf}, {"Origin": "https://evil.example"}, True),
        ("no form cookie", {"csrf": csrf}, {"Origin": "http://testserver"}, False),
        ("wrong form token", {"csrf": "A" * 43}, {"Origin": "http://testserver"}, True),
    ):
        browser = TestClient(cp.app)
        if cookies:
            browser.cookies.set(LOGIN_COOKIE, client.cookies[LOGIN_COOKIE], path="/dashboard")
        r = browser.post(
            "/dashboard/login",
            data={"token": secret, **data},
            headers=headers,
            follow_redirects=False,
        )
        assert r.status_code == 403, (what, r.text)
        assert SESSION_COOKIE not in cookie_attributes(r), what
