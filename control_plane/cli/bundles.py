"""``outpost-cp bundle create``: an offline bundle for air-gapped devices (on the control
plane's machine: it signs with the online keys). See docs/packaging.md."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from control_plane.cli.command import (
    Context,
    Subcommands,
    UsageError,
    add_group,
    add_local_command,
    duration_seconds,
)
from control_plane.cli.ops import add_storage_options, local_settings


def register(sub: Subcommands) -> None:
    bundle = add_group(sub, "bundle", help="offline bundles for air-gapped devices")
    cmd = add_local_command(
        bundle,
        "create",
        help="write one file holding a release, its signed metadata and an offline"
        " assignment for a device class (or a device)",
        handler=_create,
    )
    add_storage_options(cmd)
    cmd.add_argument("--release", required=True, help="NAME@VERSION or a release id")
    bound = cmd.add_mutually_exclusive_group(required=True)
    bound.add_argument("--device-class", help="every device of this class may install it")
    bound.add_argument("--device", dest="device_id", help="only this device id may install it")
    cmd.add_argument("--out", type=Path, required=True, help="the bundle file to write")
    cmd.add_argument(
        "--lifetime",
        type=duration_seconds,
        default=180 * 86400,
        help="how long devices may install from it (default 180d; never past the"
        " repository's targets/root expiry)",
    )
    cmd.add_argument("--agent-wheels", type=Path, help="folder of agent wheels to include")
    cmd.add_argument(
        "--model-license",
        action="append",
        default=[],
        metavar="NAME=SPDX",
        help="the license of an artifact whose upload did not record one (repeatable)",
    )
    cmd.add_argument(
        "--license-allowlist",
        type=Path,
        help="default: env OUTPOST_CP_LICENSE_ALLOWLIST, else packaging/license-allowlist.json",
    )


def _create(ctx: Context) -> None:
    from control_plane.ops.bundles import DEFAULT_ALLOWLIST, BundleRequest, create_bundle
    from control_plane.services import utc_now

    licenses: dict[str, str] = {}
    for item in ctx.args.model_license:
        name, eq, spdx = item.partition("=")
        if not eq or not name or not spdx:
            raise UsageError(f"--model-license {item!r}: give NAME=SPDX, e.g. smollm2=Apache-2.0")
        licenses[name] = spdx
    request = BundleRequest(
        release=ctx.args.release,
        out=ctx.args.out,
        device_class=ctx.args.device_class,
        device_id=ctx.args.device_id,
        lifetime=timedelta(seconds=ctx.args.lifetime),
        agent_wheels=ctx.args.agent_wheels,
        model_licenses=licenses,
        allowlist=ctx.args.license_allowlist
        or Path(ctx.environ.get("OUTPOST_CP_LICENSE_ALLOWLIST", DEFAULT_ALLOWLIST)),
    )
    created = create_bundle(local_settings(ctx.args), request, now=utc_now())
    print(json.dumps(created.as_json()), file=ctx.out.stdout, flush=True)
