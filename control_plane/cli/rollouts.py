"""``outpost-cp rollout create|status|list|pause|resume|approve|abort``: staged rollouts of
a release, or of a config patch, to a cohort (operator)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from control_plane.cli.command import (
    Context,
    Subcommands,
    UsageError,
    add_group,
    add_remote_command,
    duration_seconds,
    json_object,
)
from control_plane.cli.output import fields, table, when


def percent_or_fraction(text: str) -> float:
    """``5%`` or ``0.05`` -> 0.05 (an argparse ``type``)."""
    value = text.strip()
    try:
        if value.endswith("%"):
            return float(value[:-1]) / 100
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 5% or 0.05") from None


def stage_list(text: str) -> list[float]:
    """``1,10,50,100`` -> [1.0, 10.0, 50.0, 100.0]."""
    try:
        return [float(part.strip().rstrip("%")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of percentages like 1,10,50,100"
        ) from None


def register(sub: Subcommands) -> None:
    rollouts = add_group(
        sub, "rollout", help="staged rollouts of a release or a config patch to a cohort"
    )
    cmd = add_remote_command(
        rollouts, "create", help="start a staged rollout (operator)", handler=_create
    )
    what = cmd.add_mutually_exclusive_group(required=True)
    what.add_argument("--release", metavar="NAME@VERSION|ID", help="roll out a release")
    what.add_argument(
        "--config",
        type=json_object,
        metavar="JSON",
        help='roll out a config merge patch, e.g. \'{"chat": {"max_tokens_default": 256}}\';'
        " the cohort is '*' or one tag key=value, whose layer takes the patch at the end",
    )
    what.add_argument(
        "--config-file", metavar="PATH", help="roll out the config merge patch in this file"
    )
    cmd.add_argument(
        "--cohort",
        required=True,
        help="selector: 'hw=rpi5', 'hw=rpi5,store!=porto,ram_mb>=4096', or '*' for all",
    )
    cmd.add_argument("--stages", type=stage_list, default=[1, 10, 50, 100], help="e.g. 1,10,50,100")
    cmd.add_argument(
        "--max-failure-rate",
        type=percent_or_fraction,
        default=0.05,
        help="halt above this share of failed devices, e.g. 5%% (default 5%%)",
    )
    cmd.add_argument(
        "--min-sample", type=int, default=20, help="devices decided before the rate is judged"
    )
    cmd.add_argument("--max-failures", type=int, help="halt after this many failures, any rate")
    cmd.add_argument(
        "--stage-timeout",
        type=duration_seconds,
        default=1800,
        help="a device silent this long counts as failed, e.g. 30m (default 30m)",
    )
    cmd.add_argument(
        "--manual-approval",
        action="store_true",
        help="every stage but the last waits for 'rollout approve'",
    )
    _telemetry_gate_flags(cmd)
    cmd.add_argument(
        "--min-acceptance-pass-rate",
        type=float,
        metavar="FRACTION",
        help="gate: halt when fewer than this share of the stage's devices passed their"
        " on-device acceptance check (e.g. 0.95; docs/device-tests.md)",
    )
    cmd.add_argument(
        "--require-qualification",
        metavar="DEVICE_CLASS",
        help="refuse to start until devices of this class have reported passing acceptance"
        " checks of the release (outpost-cp release qualify)",
    )
    cmd = add_remote_command(rollouts, "status", help="one rollout in full", handler=_status)
    cmd.add_argument("rollout_id", metavar="ID")
    add_remote_command(rollouts, "list", help="rollouts, newest first", handler=_list)
    for action, text in (
        ("pause", "stop advancing and assigning"),
        ("resume", "go on after a pause"),
        ("approve", "let the current stage advance (manual approval)"),
    ):
        cmd = add_remote_command(rollouts, action, help=f"{text} (operator)", handler=_action)
        cmd.add_argument("rollout_id", metavar="ID")
        cmd.set_defaults(action=action)
    cmd = add_remote_command(
        rollouts,
        "abort",
        help="stop for good; moved devices go back to their prior release (operator)",
        handler=_action,
    )
    cmd.add_argument("rollout_id", metavar="ID")
    cmd.add_argument(
        "--no-rollback", action="store_true", help="leave moved devices on the new release"
    )
    cmd.set_defaults(action="abort")


# flag -> the telemetry metric its latency_regression gate judges (docs/telemetry.md)
_LATENCY_FLAGS = (
    ("max_p95_regression", "chat_ttft", "p95 time to first token"),
    ("max_tpot_regression", "chat_time_per_token", "p95 time per output token"),
    ("max_vision_p95_regression", "vision", "p95 vision latency"),
)


def _telemetry_gate_flags(cmd: argparse.ArgumentParser) -> None:
    for dest, _metric, what in _LATENCY_FLAGS:
        cmd.add_argument(
            f"--{dest.replace('_', '-')}",
            type=percent_or_fraction,
            metavar="PCT",
            help=f"halt when the stage's {what} is more than this above the previous"
            " release's on the cohort, e.g. 20%%",
        )
    cmd.add_argument(
        "--max-error-rate-increase",
        type=percent_or_fraction,
        metavar="PCT",
        help="halt when the stage's error rate (server errors and busy answers per request)"
        " exceeds the previous release's by more than this many points, e.g. 2%%",
    )
    cmd.add_argument(
        "--telemetry-min-sample",
        type=int,
        default=5,
        help="devices on the new release that must have sent telemetry before a telemetry"
        " gate judges (default 5)",
    )
    cmd.add_argument(
        "--telemetry-min-requests",
        type=int,
        default=20,
        help="requests those devices must have measured before it judges (default 20)",
    )


def telemetry_gates(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The gate specs the telemetry flags of ``rollout create`` ask for."""
    sample = {
        "min_sample": args.telemetry_min_sample,
        "min_observations": args.telemetry_min_requests,
    }
    gates: list[dict[str, Any]] = [
        {"type": "latency_regression", "metric": metric, "max_regression": value, **sample}
        for dest, metric, _what in _LATENCY_FLAGS
        if (value := getattr(args, dest)) is not None
    ]
    if args.max_error_rate_increase is not None:
        gates.append(
            {
                "type": "error_rate_regression",
                "max_increase": args.max_error_rate_increase,
                **sample,
            }
        )
    return gates


def moves(rollout: Mapping[str, Any]) -> str:
    """What a rollout moves: ``release name@version`` or ``config {...}``."""
    release = rollout.get("release")
    if rollout.get("kind") == "config" or release is None:
        patch = json.dumps(rollout.get("config"), separators=(",", ":"), sort_keys=True)
        return f"config {patch}"
    return f"release {release['name']}@{release['version']}"


def rollout_text(rollout: Mapping[str, Any]) -> str:
    config = rollout.get("kind") == "config"
    summary = fields(
        [
            ("id", rollout["id"]),
            ("kind", rollout.get("kind", "release")),
            ("moves", moves(rollout)),
            *([("folds into", rollout.get("config_scope") or "-")] if config else []),
            ("cohort", rollout["cohort"]),
            ("state", rollout["state"]),
            ("stage", f"{rollout['stage']} of {len(rollout['stages'])}"),
            (
                "devices",
                f"{rollout['moved']} moved: {rollout['committed']} committed,"
                f" {rollout['failed']} failed, {rollout['timed_out']} timed out,"
                f" {rollout['pending']} pending; {rollout['rolled_back']} rolled back",
            ),
            ("why", rollout["reason"] or "-"),
            ("created", f"{when(rollout['created_at'])} by {rollout['created_by']}"),
        ]
    )
    stages = table(
        rollout["stages"],
        [
            ("STAGE", lambda s: s["stage"]),
            ("PERCENT", lambda s: f"{s['percent']:g}%"),
            ("DEVICES", lambda s: s["devices"]),
            ("COMMITTED", lambda s: s["committed"]),
            ("FAILED", lambda s: s["failed"]),
            ("TIMED OUT", lambda s: s["timed_out"]),
            ("PENDING", lambda s: s["pending"]),
        ],
        empty="no stages",
    )
    events = table(
        rollout["events"],
        [
            ("AT", lambda e: when(e["at"])),
            ("STAGE", lambda e: e["stage"]),
            ("EVENT", lambda e: e["kind"]),
            ("BY", lambda e: e["actor"]),
            ("WHAT", lambda e: e["message"]),
        ],
        empty="no events",
    )
    return f"{summary}\n\n{stages}\n\n{events}"


def _create(ctx: Context) -> None:
    args = ctx.args
    body: dict[str, Any] = {
        "cohort": args.cohort,
        "stages": args.stages,
        "max_failure_rate": args.max_failure_rate,
        "min_sample": args.min_sample,
        "stage_timeout_seconds": args.stage_timeout,
        "manual_approval": args.manual_approval,
    }
    if args.max_failures is not None:
        body["max_failures"] = args.max_failures
    gates = telemetry_gates(args)
    if args.min_acceptance_pass_rate is not None:
        gates.append({"type": "acceptance_pass_rate", "min_rate": args.min_acceptance_pass_rate})
    if gates:
        body["gates"] = gates
    if args.require_qualification is not None:
        body["require_qualification"] = args.require_qualification
    if args.release is not None:
        body["release"] = args.release
    elif args.config is not None:
        body["config"] = args.config
    else:
        try:
            body["config"] = json_object(f"@{args.config_file}")
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--config-file: {e}") from e
    rollout = ctx.client().request("POST", "/rollouts", json_body=body).json()
    ctx.out.emit(rollout, rollout_text(rollout))


def _status(ctx: Context) -> None:
    rollout = ctx.client().request("GET", f"/rollouts/{ctx.args.rollout_id}").json()
    ctx.out.emit(rollout, rollout_text(rollout))


def _list(ctx: Context) -> None:
    rollouts = ctx.client().request("GET", "/rollouts").json()
    text = table(
        rollouts,
        [
            ("ID", lambda r: r["id"]),
            ("KIND", lambda r: r.get("kind", "release")),
            ("MOVES", lambda r: moves(r).partition(" ")[2][:60]),
            ("COHORT", lambda r: r["cohort"]),
            ("STATE", lambda r: r["state"]),
            ("STAGE", lambda r: f"{r['stage']}/{len(r['stages'])}"),
            ("COMMITTED", lambda r: f"{r['committed']}/{r['moved']}"),
        ],
        empty="no rollouts",
    )
    ctx.out.emit(rollouts, text)


def _action(ctx: Context) -> None:
    args = ctx.args
    body = {"roll_back": not args.no_rollback} if args.action == "abort" else None
    rollout = (
        ctx.client()
        .request("POST", f"/rollouts/{args.rollout_id}/{args.action}", json_body=body)
        .json()
    )
    ctx.out.emit(rollout, rollout_text(rollout))
