"""What the pages show of a seeded fleet, and that nothing a device or operator wrote can
become markup: hostile names and tags come back escaped, under a CSP without inline
script."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
from markupsafe import escape

from tests.dashboard.conftest import (
    DEVICES,
    HOSTILE_NAME,
    HOSTILE_TAG,
    JETSONS,
    RPI5,
    TELEMETRY_HOURS,
    SeededFleet,
    send_telemetry,
    signed_in_client,
)


def test_fleet_page_lists_devices_with_presence_release_and_class(seeded: SeededFleet) -> None:
    client = signed_in_client(seeded.cp, "viewer")
    page = client.get("/dashboard").text
    assert f'<strong id="devices-total">{DEVICES}</strong>' in page
    assert page.count("<tr>") - 1 == DEVICES, "one row per device"
    assert "kiosk-assistant@1.0.0" in page
    assert f"<strong>{RPI5}</strong> rpi5" in page
    assert f"<strong>{JETSONS}</strong> jetson-orin-nano" in page
    assert page.count(">online</span>") == DEVICES, "every device polled a moment ago"
    seeded.cp.clock.advance(minutes=6)
    later = client.get("/dashboard").text
    assert later.count(">stale</span>") == DEVICES and ">online</span>" not in later
    assert "6 min ago" in later


def test_hostile_names_and_tags_are_escaped(seeded_sqlite: SeededFleet) -> None:
    client = signed_in_client(seeded_sqlite.cp, "viewer")
    r = client.get("/dashboard")
    assert "<script" not in r.text.lower(), "no script element at all, hostile or ours"
    assert "<img" not in r.text
    assert str(escape(HOSTILE_NAME)) in r.text and str(escape(HOSTILE_TAG)) in r.text
    assert "&lt;script&gt;window.__pwned=&#34;name&#34;&lt;/script&gt;" in r.text
    assert HOSTILE_NAME not in r.text and HOSTILE_TAG not in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp, "no script may run"
    assert "frame-ancestors 'none'" in csp and r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store", "fleet data is not cached"


def test_release_distribution(seeded: SeededFleet) -> None:
    page = signed_in_client(seeded.cp, "viewer").get("/dashboard/releases").text
    rows = re.findall(r"<td>(kiosk-assistant@[0-9.]+|none)</td>\s*<td>(\d+)</td>", page)
    installed = Counter(f"kiosk-assistant@{v}" for v in seeded.fleet.installed().values())
    assert {k: int(v) for k, v in rows} == dict(installed), "as the devices API says"
    assert sum(installed.values()) == DEVICES
    assert "kiosk-assistant@1.1.0" in page, "the newer release is listed among releases"


def failure_rate_gate(result: dict[str, Any]) -> dict[str, Any]:
    if result["gate"] == "failure_rate":
        return result
    return next(failure_rate_gate(part) for part in result["numbers"].get("gates", []))


def test_rollout_page_shows_the_halted_stage_and_the_gate_numbers(seeded: SeededFleet) -> None:
    client = signed_in_client(seeded.cp, "viewer")
    listing = client.get("/dashboard/rollouts").text
    assert seeded.halted_rollout in listing and ">halted</span>" in listing
    shown = seeded.fleet.show(seeded.halted_rollout)
    page = client.get(f"/dashboard/rollouts/{seeded.halted_rollout}").text
    assert f"{shown['stage']} (halted)" in page
    halted = next(e for e in shown["events"] if e["kind"] == "halted")
    assert halted["numbers"]["verdict"] == "halt"
    numbers = failure_rate_gate(halted["numbers"])["numbers"]
    for key in ("failed", "decided", "rate", "max_rate", "min_sample"):
        expected = f"{numbers[key]:.4g}" if isinstance(numbers[key], float) else numbers[key]
        assert f'<span class="key">{key}</span> {expected}</span>' in page, key
    assert 'class="badge verdict-halt">halt</span>' in page
    assert "failed the health window" in page


def test_telemetry_page_without_telemetry_says_so(seeded_sqlite: SeededFleet) -> None:
    page = signed_in_client(seeded_sqlite.cp, "viewer").get("/dashboard/telemetry").text
    assert 'id="no-telemetry"' in page


def test_telemetry_page_plots_latency_and_shows_errors_and_budget(seeded: SeededFleet) -> None:
    send_telemetry(seeded)
    page = signed_in_client(seeded.cp, "viewer").get("/dashboard/telemetry").text
    assert 'id="no-telemetry"' not in page
    for metric in ("chat_ttft", "chat_time_per_token", "vision", "rag"):
        plot = re.search(rf'<figure class="plot" id="plot-{metric}">(.*?)</figure>', page, re.S)
        assert plot, metric
        svg = plot.group(1)
        assert svg.count('<polyline class="line p95') == 2, "rpi5 and jetson, one release"
        assert "kiosk-assistant@1.0.0 on rpi5" in svg and "on jetson-orin-nano" in svg
        assert svg.count("<circle") == 2 * 2 * TELEMETRY_HOURS, "p50 and p95 per hour"
        # series sorted by label: 0 is the jetson's, 1 the rpi5's; SVG y grows downwards
        heights = {
            n: np.mean([float(xy.split(",")[1]) for xy in points.split()])
            for n, points in re.findall(r'class="line p95 series-(\d)" points="([^"]+)"', svg)
        }
        assert heights["0"] < heights["1"], f"{metric}: the slower class plots higher"
    errors = re.search(r'<table id="error-rates">(.*?)</table>', page, re.S)
    assert errors and errors.group(1).count("<tr>") == 1 + 2 * TELEMETRY_HOURS
    budget = re.search(r'<table id="privacy-budget">(.*?)</table>', page, re.S)
    assert budget, page
    rows = re.findall(r"<tr><td>([a-z0-9-]+)</td><td>(\d+)</td><td>(\d+)</td>", budget.group(1))
    assert rows == [
        ("jetson-orin-nano", str(JETSONS), str(JETSONS * TELEMETRY_HOURS)),
        ("rpi5", str(RPI5), str(RPI5 * TELEMETRY_HOURS)),
    ]
