"""The fleet: ``outpost-cp enrollment-tokens create``, ``devices list|show|tag`` and
``assign``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control_plane.cli.command import (
    Context,
    Subcommands,
    UsageError,
    add_group,
    add_remote_command,
    duration_seconds,
)
from control_plane.cli.output import fields, table, when
from control_plane.rollouts.core import CohortSelector, InvalidRolloutError


def register(sub: Subcommands) -> None:
    enrollment = add_group(sub, "enrollment-tokens", help="one-time device enrollment tokens")
    cmd = add_remote_command(
        enrollment,
        "create",
        help="a one-time token that enrolls one device (operator)",
        handler=_create_enrollment_token,
    )
    cmd.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag for the device that enrolls with it (repeat for more)",
    )
    cmd.add_argument(
        "--expires-in",
        type=duration_seconds,
        default=3600,
        metavar="DURATION",
        help="lifetime: 90s, 30m, 1h, 7d (60 s to 30 days; default 1h)",
    )

    devices = add_group(sub, "devices", help="enrolled devices")
    cmd = add_remote_command(devices, "list", help="devices and what they run", handler=_list)
    cmd.add_argument(
        "--cohort",
        metavar="SELECTOR",
        help="only the devices a rollout with this cohort would select:"
        " 'hw=rpi5,store!=porto,ram_mb>=4096' (see docs/rollouts.md)",
    )
    cmd = add_remote_command(devices, "show", help="one device in full", handler=_show)
    cmd.add_argument("device_id", metavar="ID")
    cmd = add_remote_command(
        devices,
        "tag",
        help="add key=value tags (replacing the key's value) and remove tags (operator)",
        handler=_tag,
    )
    cmd.add_argument("device_id", metavar="ID")
    cmd.add_argument("add", nargs="*", metavar="KEY=VALUE", help="tags to set")
    cmd.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="KEY=VALUE|KEY",
        help="a tag to remove; a bare KEY removes it whatever its value (repeat for more)",
    )

    cmd = add_remote_command(
        sub, "assign", help="assign a release to a device (operator)", handler=_assign
    )
    cmd.add_argument("device_id", metavar="DEVICE")
    cmd.add_argument(
        "--release", required=True, metavar="ID|NAME@VERSION", help="the release to run"
    )


def cohort_selector(selector: str) -> str:
    """Check a ``--cohort`` selector here (a usage error sends nothing); the canonical text."""
    try:
        return CohortSelector.parse(selector).text
    except InvalidRolloutError as e:
        raise UsageError(f"--cohort {selector!r}: {e}") from e


def _create_enrollment_token(ctx: Context) -> None:
    created = ctx.client().create_enrollment_token(
        tags=ctx.args.tags, expires_in_seconds=ctx.args.expires_in
    )
    summary = fields(
        [
            ("id", created["id"]),
            ("expires", when(created["expires_at"])),
            ("tags", created["tags"]),
            ("token", created["token"]),
        ]
    )
    ctx.out.emit(
        created, f"{summary}\nOne device enrolls with it: outpost-agent enroll --token ..."
    )


def _release(ref: Mapping[str, Any] | None) -> str | None:
    return None if ref is None else f"{ref['name']}@{ref['version']}"


def _list(ctx: Context) -> None:
    selector = cohort_selector(ctx.args.cohort) if ctx.args.cohort else None
    rows = ctx.client().list_devices(cohort=selector)
    text = table(
        rows,
        [
            ("ID", lambda d: d["id"]),
            ("NAME", lambda d: d["name"]),
            ("TAGS", lambda d: d["tags"]),
            ("INSTALLED", lambda d: _release(d["installed_release"])),
            ("ASSIGNED", lambda d: d["assignment"] and d["assignment"]["release_id"]),
            ("STATUS", lambda d: d["last_status"] and d["last_status"]["state"]),
            ("LAST SEEN", lambda d: when(d["last_seen_at"])),
        ],
        empty="no devices" + (f" in cohort {selector!r}" if selector else ""),
    )
    ctx.out.emit(rows, text)


def _device_text(device: Mapping[str, Any]) -> str:
    assignment, status = device["assignment"], device["last_status"]
    hardware = ", ".join(f"{k}={v}" for k, v in sorted(device["hardware"].items()))
    return fields(
        [
            ("id", device["id"]),
            ("name", device["name"]),
            ("tags", device["tags"]),
            ("hardware", hardware),
            ("enrolled", when(device["enrolled_at"])),
            ("last seen", when(device["last_seen_at"])),
            ("installed", _release(device["installed_release"])),
            (
                "assignment",
                assignment
                and f"version {assignment['version']}, release {assignment['release_id']},"
                f" expires {when(assignment['expires_at'])}",
            ),
            (
                "last status",
                status and f"{status['state']} at {when(status['at'])}: {status['detail']}",
            ),
            ("public key", device["public_key"]),
        ]
    )


def _show(ctx: Context) -> None:
    device = ctx.client().get_device(ctx.args.device_id)
    ctx.out.emit(device, _device_text(device))


def _tag(ctx: Context) -> None:
    if not ctx.args.add and not ctx.args.remove:
        raise UsageError("give tags to add (KEY=VALUE ...) and/or --remove KEY[=VALUE]")
    device = ctx.client().tag_device(ctx.args.device_id, add=ctx.args.add, remove=ctx.args.remove)
    ctx.out.emit(device, f"{device['id']} tags: {', '.join(device['tags']) or '-'}")


def _assign(ctx: Context) -> None:
    client = ctx.client()
    release = client.resolve_release(ctx.args.release)
    assignment = client.assign(ctx.args.device_id, release["id"])
    ctx.out.emit(
        assignment,
        f"assigned {release['name']}@{release['version']} ({release['id']}) to"
        f" {assignment['device_id']}: assignment version {assignment['version']},"
        f" expires {when(assignment['expires_at'])}",
    )
