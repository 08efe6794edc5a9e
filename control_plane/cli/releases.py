"""``outpost-cp releases create|list|show|qualify``: named, versioned sets of artifacts
(create: release manager). A release is named by its id or by ``name@version``.
``release`` is an alias of ``releases`` (``outpost-cp release qualify app@1.1.0
--device-class rpi5``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from control_plane.cli.command import (
    Context,
    Subcommands,
    add_group,
    add_remote_command,
    json_object,
)
from control_plane.cli.output import fields, size, table, when


def register(sub: Subcommands) -> None:
    releases = add_group(
        sub, "releases", help="releases: what devices are assigned", aliases=("release",)
    )
    cmd = add_remote_command(
        releases,
        "create",
        help="create a release and sign it into the repository (release manager)",
        handler=_create,
    )
    cmd.add_argument("--name", required=True, help="e.g. assistant")
    cmd.add_argument("--version", required=True, help="e.g. 1.2.0")
    cmd.add_argument(
        "--artifact",
        dest="artifacts",
        required=True,
        action="extend",
        nargs="+",
        metavar="ID",
        help="artifact ids, in order (repeatable)",
    )
    cmd.add_argument(
        "--config", type=json_object, default={}, metavar="JSON|@FILE", help="release config"
    )
    cmd = add_remote_command(releases, "list", help="releases, newest first", handler=_list)
    cmd.add_argument("--name", help="only the versions of this release")
    cmd = add_remote_command(releases, "show", help="one release in full", handler=_show)
    cmd.add_argument("ref", metavar="ID|NAME@VERSION")
    cmd = add_remote_command(
        releases,
        "qualify",
        help="what devices of a class reported from their acceptance checks of a release",
        handler=_qualify,
    )
    cmd.add_argument("ref", metavar="ID|NAME@VERSION")
    cmd.add_argument("--device-class", required=True, help="e.g. rpi5, x86-ci")


def release_text(release: Mapping[str, Any]) -> str:
    summary = fields(
        [
            ("id", release["id"]),
            ("release", f"{release['name']}@{release['version']}"),
            ("state", release["state"]),
            ("targets version", release["targets_version"]),
            ("created", when(release["created_at"])),
            ("config", json.dumps(release["config"], sort_keys=True)),
        ]
    )
    members = table(
        release["artifacts"],
        [
            ("ARTIFACT", lambda a: a["id"]),
            ("NAME", lambda a: a["name"]),
            ("KIND", lambda a: a["kind"]),
            ("FORMAT", lambda a: a["format"]),
            ("SIZE", lambda a: size(a["length"])),
        ],
        empty="no artifacts",
    )
    return f"{summary}\n\n{members}"


def _create(ctx: Context) -> None:
    args = ctx.args
    release = ctx.client().create_release(
        name=args.name, version=args.version, artifact_ids=args.artifacts, config=args.config
    )
    text = release_text(release)
    if release["state"] == "pending-signature":
        text += (
            "\n\nThe targets key is offline: the release waits for"
            " 'outpost-cp sign-targets' before it can be assigned."
        )
    ctx.out.emit(release, text)


def _list(ctx: Context) -> None:
    rows = ctx.client().list_releases(name=ctx.args.name)
    text = table(
        rows,
        [
            ("ID", lambda r: r["id"]),
            ("RELEASE", lambda r: f"{r['name']}@{r['version']}"),
            ("STATE", lambda r: r["state"]),
            ("ARTIFACTS", lambda r: len(r["artifacts"])),
            ("CREATED", lambda r: when(r["created_at"])),
        ],
        empty="no releases",
    )
    ctx.out.emit(rows, text)


def downloads_text(release: Mapping[str, Any]) -> str:
    """What a device on each earlier release downloads for this one (delta updates)."""
    rows = release.get("downloads") or []
    return "downloads from earlier releases (delta updates):\n" + table(
        rows,
        [
            ("FROM", lambda d: d["release"]),
            ("DEVICES", lambda d: d["devices"]),
            ("DOWNLOAD", lambda d: size(d["download_bytes"])),
            ("FULL", lambda d: size(d["full_bytes"])),
            (
                "SAVED",
                lambda d: (
                    f"{100 * (1 - d['download_bytes'] / d['full_bytes']):.0f}%"
                    if d["full_bytes"]
                    else "-"
                ),
            ),
        ],
        empty="no earlier release is known to run on a device",
    )


def _show(ctx: Context) -> None:
    release = ctx.client().resolve_release(ctx.args.ref)
    ctx.out.emit(release, release_text(release) + "\n\n" + downloads_text(release))


def _figure_text(figure: Mapping[str, Any]) -> str:
    op = "<=" if figure["bound"] == "max" else ">="
    value = "-" if figure["value"] is None else f"{figure['value']:g}"
    interval = "" if figure.get("low") is None else f" [{figure['low']:g}, {figure['high']:g}]"
    return (
        f"{figure['figure']} {value}{interval} {figure['unit']} {op} {figure['threshold']:g}:"
        f" {figure['status']}"
    )


def _qualify(ctx: Context) -> None:
    found = ctx.client().qualification(ctx.args.ref, ctx.args.device_class)
    devices = table(
        found["devices"],
        [
            ("DEVICE", lambda d: d["device_id"]),
            ("RESULT", lambda d: "pass" if d["passed"] else "FAIL"),
            ("STATE", lambda d: d["state"]),
            ("AT", lambda d: when(d["at"])),
            ("LOAD", lambda d: "-" if d["loadavg_1m"] is None else f"{d['loadavg_1m']:g}"),
            ("FIGURES", lambda d: "; ".join(_figure_text(f) for f in d["figures"])),
        ],
        empty=f"no device of class {found['device_class']} has reported yet",
    )
    ctx.out.emit(found, f"{found['summary']}\n\n{devices}")
