"""What ``outpost-cp`` prints: the API's JSON with ``--json``, otherwise tables and
summaries on stdout; notes and the upload progress bar on stderr."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

__all__ = ["Column", "Output", "ProgressBar", "fields", "size", "table", "when"]

Column = tuple[str, Callable[[Mapping[str, Any]], object]]
"""A table column: its heading and how to get the cell from one row of the API's JSON."""


class Output:
    """Where a command's result goes: ``emit`` prints ``data`` as JSON in ``--json`` mode,
    else the readable ``text``; ``note`` writes a line to stderr."""

    def __init__(self, *, json_mode: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.json_mode = json_mode
        self.stdout = stdout
        self.stderr = stderr

    def emit(self, data: Any, text: str) -> None:
        if self.json_mode:
            print(json.dumps(data, indent=2, sort_keys=True), file=self.stdout, flush=True)
        else:
            print(text, file=self.stdout, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)


def _cell(value: object) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, empty: str) -> str:
    """Rows under headings, columns aligned; ``empty`` when there are no rows."""
    if not rows:
        return empty
    cells = [[heading for heading, _ in columns]]
    cells += [[_cell(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``label: value`` lines, values aligned."""
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label + ':':<{width + 1}} {_cell(value)}" for label, value in pairs)


def when(value: str | None) -> str:
    """An API timestamp, to the second: ``2026-12-01 10:30:19Z``."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def size(length: float) -> str:
    """A byte count as people read it: ``512 B``, ``12.3 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if length < 1024 or unit == "GiB":
            return f"{length:.0f} {unit}" if unit == "B" else f"{length:.1f} {unit}"
        length /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    """Bytes sent of the total and the rate, redrawn in place (at most every
    ``interval`` seconds) while ``live``; :meth:`finish` ends with one summary line
    either way, so a log without a terminal still says what was sent."""

    def __init__(
        self,
        stream: TextIO,
        *,
        label: str,
        live: bool,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.1,
        width: int = 30,
    ) -> None:
        self.stream = stream
        self.label = label
        self.live = live
        self.clock = clock
        self.interval = interval
        self.width = width
        self.started = clock()
        self.sent = 0
        self.total = 0
        self._drawn_at: float | None = None

    def _rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.sent / elapsed if elapsed > 0 else 0.0

    def __call__(self, sent: int, total: int) -> None:
        self.sent, self.total = sent, total
        if not self.live:
            return
        now = self.clock()
        if sent < total and self._drawn_at is not None and now - self._drawn_at < self.interval:
            return
        self._drawn_at = now
        share = sent / total if total else 1.0
        filled = int(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {share:4.0%} {size(sent)} / {size(total)}"
            f" {size(self._rate())}/s\x1b[K"
        )
        self.stream.flush()

    def finish(self, outcome: str) -> None:
        """End the bar's line and write ``<label>: <outcome>, N sent in T s (R/s)``."""
        if self.live and self._drawn_at is not None:
            self.stream.write("\n")
        elapsed = self.clock() - self.started
        self.stream.write(
            f"{self.label}: {outcome}, {size(self.sent)} sent in {elapsed:.1f} s"
            f" ({size(self._rate())}/s)\n"
        )
        self.stream.flush()
