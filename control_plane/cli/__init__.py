"""``outpost-cp``: run a control plane (``init``, ``serve``, ``rotate-key``,
``sign-targets``) and operate it over its HTTP API (``tokens``, ``enrollment-tokens``,
``artifacts``, ``releases``, ``devices``, ``assign``, ``audit``), so an operator never
needs curl.

Adding commands: a module exposes ``register(sub)``, which adds its commands to the
``argparse`` subcommands ``sub`` with the helpers of :mod:`control_plane.cli.command`,
and is listed in ``COMMAND_MODULES``::

    from control_plane.cli.command import Context, Subcommands, add_group, add_remote_command
    from control_plane.cli.output import fields, table

    def register(sub: Subcommands) -> None:
        rollouts = add_group(sub, "rollouts", help="staged rollouts")
        cmd = add_remote_command(rollouts, "status", help="one rollout", handler=_status)
        cmd.add_argument("rollout_id", metavar="ID")

    def _status(ctx: Context) -> None:
        body = ctx.client().request("GET", f"/rollouts/{ctx.args.rollout_id}").json()
        ctx.out.emit(body, fields([("id", body["id"]), ("state", body["state"])]))

A handler takes the :class:`~control_plane.cli.command.Context` (``ctx.args``,
``ctx.client()``: an authenticated :class:`~control_plane.ops.client.OperatorClient`,
``ctx.out``: print with ``emit(json_data, text)`` so ``--json`` works everywhere) and
returns nothing. It signals failure by raising: ``UsageError`` (exit 2: the command
line is wrong), any ``ControlPlaneError`` such as the client's ``ApiRefusedError``
(exit 1: the control plane refused, or could not be reached); ``main`` prints the
message.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType

import httpx
from pydantic import ValidationError

from control_plane.cli import (
    artifacts,
    audit,
    bundles,
    config,
    fleet,
    ops,
    releases,
    rollouts,
    tokens,
)
from control_plane.cli.command import Context, UsageError, add_connection_options
from control_plane.cli.output import Output
from control_plane.errors import ControlPlaneError
from control_plane.ops.client import ApiRefusedError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES: tuple[ModuleType, ...] = (
    ops,
    bundles,
    tokens,
    fleet,
    artifacts,
    releases,
    rollouts,
    config,
    audit,
)


def build_parser(modules: Sequence[ModuleType] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outpost-cp",
        description="Outpost control plane. Server flags can also be set as"
        " OUTPOST_CP_<NAME>; API commands read OUTPOST_CP_URL and OUTPOST_CP_TOKEN_FILE"
        " (or OUTPOST_CP_TOKEN).",
    )
    add_connection_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules:
        module.register(sub)
    return parser


def _refused(e: ApiRefusedError) -> str:
    if e.status == 401:
        return f"{e}; check the token (--token-file, OUTPOST_CP_TOKEN_FILE, OUTPOST_CP_TOKEN)"
    return str(e)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; the exit code is 0, 1 (the control plane refused or failed,
    or could not be reached) or 2 (a usage error: nothing was done)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request
    out = Output(json_mode=args.json, stdout=sys.stdout, stderr=sys.stderr)
    ctx = Context(args=args, out=out, environ=os.environ if environ is None else environ)
    try:
        args.handler(ctx)
    except UsageError as e:
        out.note(f"outpost-cp: {e}")
        return 2
    except ValidationError as e:
        out.note(f"outpost-cp: invalid setting: {e}")
        return 2
    except ApiRefusedError as e:
        out.note(f"outpost-cp: {_refused(e)}")
        return 1
    except ControlPlaneError as e:
        out.note(f"outpost-cp: {e}")
        return 1
    except httpx.HTTPError as e:
        out.note(f"outpost-cp: cannot reach the control plane: {e}")
        return 1
    except KeyboardInterrupt:
        out.note("outpost-cp: interrupted")
        return 130
    finally:
        ctx.close()
    return 0
