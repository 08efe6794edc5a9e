"""Latency plots as inline SVG, rendered on the server (pure: values in, markup out).

Every label is HTML-escaped; colours and strokes come from CSS classes (the page's CSP
allows no inline styles), so a series name can never inject markup or style.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, INNER_H = 640, 160
LEFT, RIGHT, TOP = 64, 16, 44
PALETTE_SIZE = 8


@dataclass(frozen=True)
class Point:
    at: datetime
    p50: float
    p95: float
    p95_low: float
    p95_high: float


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[Point]


def _seconds_label(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.0f} ms"


def line_chart(title: str, series: Sequence[Series]) -> Markup:
    """p50 (dashed) and p95 (solid, with its confidence band) over time, one colour per
    series; an empty chart says there is no data."""
    points = [p for s in series for p in s.points]
    height = TOP + INNER_H + 32 + 16 * ((len(series) + 1) // 2)
    head = (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}"'
        f' role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<text class="plot-title" x="{LEFT}" y="18">{escape(title)}</text>'
    )
    if not points:
        return Markup(
            head + f'<text class="plot-empty" x="{WIDTH / 2}" y="{height / 2}"'
            ' text-anchor="middle">no samples yet</text></svg>'
        )
    t0 = min(p.at for p in points).timestamp()
    t1 = max(p.at for p in points).timestamp()
    span = max(t1 - t0, 3600.0)
    # The axis fits the estimates; an interval reaching far above them (few devices, so
    # much noise) is clipped at twice the highest estimate, and the plot says so.
    highest = max(max(p.p95, p.p50) for p in points)
    band_top = max(p.p95_high for p in points)
    clipped = band_top > 2 * highest > 0
    y_max = (2 * highest if clipped else max(band_top, highest)) * 1.1 or 1.0
    inner_w, inner_h = WIDTH - LEFT - RIGHT, INNER_H

    def x(at: datetime) -> float:
        return LEFT + (at.timestamp() - t0) / span * inner_w

    def y(value: float) -> float:
        return TOP + inner_h - min(max(0.0, value), y_max) / y_max * inner_h

    parts = [head]
    if clipped:
        parts.append(
            f'<text class="plot-note" x="{LEFT}" y="34">'
            f"intervals clipped above {escape(_seconds_label(y_max))}"
            f" (they reach {escape(_seconds_label(band_top))})</text>"
        )
    for i in range(5):
        value = y_max * i / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}"'
            f' y2="{y(value):.1f}"/><text class="tick" x="{LEFT - 6}" y="{y(value) + 4:.1f}"'
            f' text-anchor="end">{escape(_seconds_label(value))}</text>'
        )
    first, last = min(p.at for p in points), max(p.at for p in points)
    for at, anchor in ((first, "start"), (last, "end")):
        parts.append(
            f'<text class="tick" x="{x(at):.1f}" y="{TOP + inner_h + 16}"'
            f' text-anchor="{anchor}">{escape(at.strftime("%Y-%m-%d %H:00"))}</text>'
        )
    for n, s in enumerate(series):
        colour = f"series-{n % PALETTE_SIZE}"
        pts = sorted(s.points, key=lambda p: p.at)
        if not pts:
            continue
        band = [f"{x(p.at):.1f},{y(p.p95_high):.1f}" for p in pts] + [
            f"{x(p.at):.1f},{y(p.p95_low):.1f}" for p in reversed(pts)
        ]
        parts.append(f'<polygon class="band {colour}" points="{" ".join(band)}"/>')
        for name, values in (("p95", [p.p95 for p in pts]), ("p50", [p.p50 for p in pts])):
            line = " ".join(f"{x(p.at):.1f},{y(v):.1f}" for p, v in zip(pts, values, strict=True))
            parts.append(f'<polyline class="line {name} {colour}" points="{line}"/>')
            for p, v in zip(pts, values, strict=True):
                parts.append(
                    f'<circle class="dot {colour}" cx="{x(p.at):.1f}" cy="{y(v):.1f}" r="2.5">'
                    f"<title>{escape(s.label)} {escape(p.at.strftime('%H:00'))} {name}"
                    f" {escape(_seconds_label(v))}"
                    + (
                        f" (95% interval {escape(_seconds_label(p.p95_low))}"
                        f"-{escape(_seconds_label(p.p95_high))})"
                        if name == "p95"
                        else ""
                    )
                    + "</title>"
                    "</circle>"
                )
        row, col = divmod(n, 2)
        lx, ly = LEFT + col * (inner_w / 2), TOP + inner_h + 36 + row * 16
        parts.append(
            f'<rect class="swatch {colour}" x="{lx:.1f}" y="{ly - 9}" width="12" height="10"/>'
            f'<text class="legend" x="{lx + 16:.1f}" y="{ly}">{escape(s.label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
