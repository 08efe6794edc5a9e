"""``outpost-cp config set|show|history|schema``: remote config by scope."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from control_plane.cli.command import Context, Subcommands, add_group, add_remote_command
from control_plane.cli.output import fields, table, when

_SCOPE_HELP = "fleet, tag:KEY=VALUE or device:ID"


def register(sub: Subcommands) -> None:
    config = add_group(
        sub, "config", help="remote config: fleet < tag < device (docs/remote-config.md)"
    )
    cmd = add_remote_command(
        config,
        "set",
        help="merge a JSON merge patch (null removes a key) into a scope's layer (operator)",
        handler=_set,
    )
    cmd.add_argument("--scope", required=True, metavar="SCOPE", help=_SCOPE_HELP)
    cmd.add_argument("patch", metavar="JSON", help="the merge patch, inline or as @file")
    cmd = add_remote_command(
        config,
        "show",
        help="a device's config: the layers behind it, the version issued, what it reported",
        handler=_show,
    )
    cmd.add_argument("--device", required=True, metavar="ID")
    cmd.add_argument(
        "--effective", action="store_true", help="only the merged config the device gets"
    )
    cmd = add_remote_command(
        config, "history", help="layer versions, newest first", handler=_history
    )
    cmd.add_argument("--scope", metavar="SCOPE", help=f"only this scope: {_SCOPE_HELP}")
    cmd.add_argument("--limit", type=int, default=50, help="how many (1-1000; 50)")
    add_remote_command(
        config, "schema", help="the JSON Schema of the settable config", handler=_schema
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _parse_patch(text: str) -> Any:
    from control_plane.cli.command import UsageError, json_object

    try:
        return json_object(text)
    except Exception as e:  # argparse.ArgumentTypeError: nothing was sent
        raise UsageError(str(e)) from e


def _set(ctx: Context) -> None:
    patch = _parse_patch(ctx.args.patch)
    scope = quote(ctx.args.scope, safe="")
    change = ctx.client().request("PATCH", f"/config/scopes/{scope}", json_body=patch).json()
    layer = change["layer"]
    ctx.out.emit(
        change,
        f"{layer['scope']} config is now version {layer['version']}: {_compact(layer['settings'])}"
        f" ({change['devices_reached']} device(s) reached)",
    )


def _status_text(status: Mapping[str, Any] | None) -> str | None:
    if status is None:
        return None
    detail = f": {status['detail']}" if status["detail"] else ""
    return f"{status['state']} v{status['config_version']} at {when(status['at'])}{detail}"


def _show(ctx: Context) -> None:
    device = quote(ctx.args.device, safe="")
    view = ctx.client().request("GET", f"/devices/{device}/config").json()
    if ctx.args.effective:
        ctx.out.emit(view["effective"], json.dumps(view["effective"], indent=2, sort_keys=True))
        return
    issued = view["issued"]
    layers = "; ".join(f"{x['scope']} v{x['version']}" for x in view["layers"]) or None
    text = fields(
        [
            ("device", view["device_id"]),
            ("effective", _compact(view["effective"])),
            ("layers", layers),
            (
                "issued",
                issued and f"version {issued['version']}, expires {when(issued['expires_at'])}",
            ),
            ("device says", _status_text(view["status"])),
            ("in sync", "yes" if view["in_sync"] else "no"),
        ]
    )
    ctx.out.emit(view, text)


def _history(ctx: Context) -> None:
    params: dict[str, str | int] = {"limit": ctx.args.limit}
    if ctx.args.scope:
        params["scope"] = ctx.args.scope
    rows = ctx.client().request("GET", "/config/history", params=params).json()
    text = table(
        rows,
        [
            ("SCOPE", lambda r: r["scope"]),
            ("VERSION", lambda r: r["version"]),
            ("AT", lambda r: when(r["changed_at"])),
            ("BY", lambda r: r["changed_by"]),
            ("PATCH", lambda r: _compact(r["patch"])),
        ],
        empty="no config changes",
    )
    ctx.out.emit(rows, text)


def _schema(ctx: Context) -> None:
    schema = ctx.client().request("GET", "/config/schema").json()
    ctx.out.emit(schema, json.dumps(schema, indent=2, sort_keys=True))
