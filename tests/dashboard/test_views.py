"""The dashboard's pure parts: the session signer, presence, gate flattening and the SVG
plots (values in, values or markup out)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from control_plane.dashboard.fleet_view import MAX_DEVICE_ROWS, Presence, overview, presence_of
from control_plane.dashboard.plots import Point, Series, line_chart
from control_plane.dashboard.rollout_view import allowed_actions, gate_rows
from control_plane.dashboard.session import DashboardSession, SessionSigner, same_origin
from control_plane.errors import AuthenticationError, PermissionDeniedError
from control_plane.fleet.devices import DeviceView
from control_plane.rollouts.core import Action, RolloutState
from control_plane.storage.models import Device

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))


def test_a_sealed_session_opens_until_it_expires_and_only_under_its_key() -> None:
    signer = SessionSigner(KEY)
    session = DashboardSession.start("tok_1", NOW, "session-1")
    cookie = signer.seal(session)
    assert signer.open(cookie, NOW + timedelta(hours=7)) == session
    with pytest.raises(AuthenticationError, match="expired"):
        signer.open(cookie, NOW + timedelta(hours=8))
    with pytest.raises(AuthenticationError, match="not signed by this server"):
        SessionSigner(bytes(32)).open(cookie, NOW)
    body, _, mac = cookie.partition(".")
    for altered in (f"{body}x.{mac}", f"{body}.{mac[::-1]}", "", ".", "a.b.c"):
        with pytest.raises(AuthenticationError):
            signer.open(altered, NOW)


def test_csrf_tokens_belong_to_one_session() -> None:
    signer = SessionSigner(KEY)
    token = signer.csrf_token("session-a")
    signer.check_csrf("session-a", token)
    for session, given in (("session-b", token), ("session-a", ""), ("session-a", token[:-1])):
        with pytest.raises(PermissionDeniedError, match="CSRF"):
            signer.check_csrf(session, given)


def test_a_login_form_expires() -> None:
    signer = SessionSigner(KEY)
    nonce = signer.login_nonce(NOW, "nonce-1")
    signer.check_login(nonce, signer.login_csrf_token(nonce), NOW + timedelta(minutes=29))
    with pytest.raises(PermissionDeniedError, match="expired"):
        signer.check_login(nonce, signer.login_csrf_token(nonce), NOW + timedelta(minutes=30))
    forged = nonce.rsplit(".", 2)[0] + ".9999999999." + nonce.rsplit(".", 1)[1]
    with pytest.raises(PermissionDeniedError):
        signer.check_login(forged, signer.login_csrf_token(forged), NOW)


@pytest.mark.parametrize(
    ("origin", "referer", "same"),
    [
        ("http://cp:8700", None, True),
        ("http://cp:8700.evil", None, False),
        ("https://cp:8700", None, False),
        ("null", "http://cp:8700/dashboard", True),
        (None, "http://cp:8700/dashboard/rollouts", True),
        (None, "http://cp:8700.evil/dashboard", False),
        (None, None, False),
    ],
)
def test_same_origin(origin: str | None, referer: str | None, same: bool) -> None:
    assert same_origin(origin, referer, "http://cp:8700") is same


def test_presence_uses_the_five_minute_window() -> None:
    assert presence_of(None, NOW) is Presence.NEVER
    assert presence_of(NOW - timedelta(minutes=5), NOW) is Presence.ONLINE
    assert presence_of(NOW - timedelta(minutes=5, seconds=1), NOW) is Presence.STALE


def test_composite_gate_decisions_flatten_with_their_numbers() -> None:
    stored = {
        "gate": "all_of",
        "verdict": "halt",
        "reason": "3 of 6 failed",
        "numbers": {
            "gates": [
                {
                    "gate": "failure_rate",
                    "verdict": "halt",
                    "reason": "3 of 6 failed",
                    "numbers": {"rate": 0.5, "max_rate": 0.05, "decided": 6},
                },
                {"gate": "max_failures", "verdict": "pass", "reason": "ok", "numbers": {}},
            ]
        },
    }
    rows = gate_rows(stored)
    assert [(r.gate, r.verdict, r.depth) for r in rows] == [
        ("all_of", "halt", 0),
        ("failure_rate", "halt", 1),
        ("max_failures", "pass", 1),
    ]
    assert rows[1].numbers == (("rate", "0.5"), ("max_rate", "0.05"), ("decided", "6"))


def test_the_actions_offered_are_the_engines() -> None:
    assert allowed_actions(RolloutState.HALTED) == (Action.ABORT,)
    assert allowed_actions(RolloutState.PAUSED) == (Action.RESUME, Action.ABORT)
    assert allowed_actions(RolloutState.COMPLETED) == ()


def test_plots_draw_every_series_and_escape_labels() -> None:
    hours = [NOW + timedelta(hours=i) for i in range(4)]
    fast = Series(
        "assistant@1.0 on rpi5",
        [Point(h, 0.2, 0.4 + i / 10, 0.35, 0.5 + i / 10) for i, h in enumerate(hours)],
    )
    hostile = Series('<script>x()</script>" onload="x()', [Point(hours[0], 1.0, 2.0, 1.5, 2.5)])
    svg = str(line_chart("time to first token", [fast, hostile]))
    assert svg.count('<polyline class="line p95') == 2 and svg.count("<polygon") == 2
    assert "<script>" not in svg and "&lt;script&gt;" in svg and 'onload="' not in svg
    p95 = re.search(r'class="line p95 series-0" points="([^"]+)"', svg)
    assert p95 is not None
    ys = [float(xy.split(",")[1]) for xy in p95.group(1).split()]
    assert ys == sorted(ys, reverse=True), "a rising p95 is drawn rising (SVG y grows down)"
    assert "2.75 s" in svg, "the axis reaches past the highest interval bound"


def test_a_plot_without_samples_says_so() -> None:
    svg = str(line_chart("vision", []))
    assert "no samples yet" in svg and "<polyline" not in svg


def test_an_interval_far_above_the_estimates_is_clipped_and_said_so() -> None:
    noisy = Series("few devices", [Point(NOW, 0.1, 0.3, 0.0, 120.0)])
    svg = str(line_chart("ttft", [noisy]))
    assert "intervals clipped above 660 ms (they reach 120.00 s)" in svg
    band = re.search(r'<polygon class="band series-0" points="([^"]+)"', svg)
    assert band is not None
    assert min(float(xy.split(",")[1]) for xy in band.group(1).split()) >= 44, "inside the plot"
    assert "95% interval 0 ms-120.00 s" in svg, "the tooltip keeps the whole interval"


def test_the_fleet_table_is_bounded_and_counts_the_whole_fleet() -> None:
    views = [
        DeviceView(
            device=Device(
                id=f"dev_{i:04d}",
                name=f"kiosk-{i:04d}",
                tags=["hw=rpi5"] if i % 2 else [],
                last_seen_at=NOW - timedelta(minutes=10 if i % 100 == 0 else 1),
            ),
            installed_release=None,
            assignment=None,
            last_status=None,
        )
        for i in range(MAX_DEVICE_ROWS + 20)
    ]
    fleet = overview(views, NOW)
    assert fleet.total == MAX_DEVICE_ROWS + 20 and len(fleet.rows) == MAX_DEVICE_ROWS
    assert fleet.truncated
    assert fleet.by_presence[Presence.STALE] == 6 and fleet.by_presence[Presence.ONLINE] == 514
    assert [r.presence for r in fleet.rows[:6]] == [Presence.STALE] * 6, "stale ones first"
    assert fleet.by_class == {"rpi5": 260, "unclassified": 260}
    assert [(s.release, s.devices) for s in fleet.releases] == [("none", 520)]
