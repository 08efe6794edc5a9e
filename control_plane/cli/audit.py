"""``outpost-cp audit``: the audit log, newest first (admin)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from control_plane.cli.command import Context, Subcommands, add_remote_command
from control_plane.cli.output import table, when

_DETAILS_WIDTH = 80


def register(sub: Subcommands) -> None:
    cmd = add_remote_command(
        sub, "audit", help="audit log entries, newest first (admin)", handler=_audit
    )
    cmd.add_argument("--limit", type=int, default=50, help="how many entries (1-1000; 50)")
    cmd.add_argument("--before-id", type=int, help="the next page: entries older than this id")


def _details(entry: Mapping[str, Any]) -> str:
    text = json.dumps(entry["details"], separators=(",", ":"), sort_keys=True)
    return text if len(text) <= _DETAILS_WIDTH else text[: _DETAILS_WIDTH - 3] + "..."


def _audit(ctx: Context) -> None:
    entries = ctx.client().audit(limit=ctx.args.limit, before_id=ctx.args.before_id)
    text = table(
        entries,
        [
            ("ID", lambda e: e["id"]),
            ("AT", lambda e: when(e["at"])),
            ("ACTOR", lambda e: e["actor"]),
            ("ACTION", lambda e: e["action"]),
            ("TARGET", lambda e: e["target"]),
            ("DETAILS", _details),
        ],
        empty="no audit entries",
    )
    ctx.out.emit(entries, text)
