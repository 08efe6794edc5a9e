"""``python -m simulator run``: a simulated fleet against a real control plane.

Progress goes to stderr; the result (JSON) to stdout and, with ``--json``, to a file.
Exit status: 0 when the run saw no errors, 1 when some requests failed, 2 when the run
could not start.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from protocol import generate_key_pair
from simulator import state
from simulator.behaviour import Mix
from simulator.device import SimDevice
from simulator.errors import SetupError, SimulatorError
from simulator.load import LoadPlan, LoadResult, run_load
from simulator.profiles import TagSpec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator", description="Outpost fleet simulator"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="enroll simulated devices and poll a control plane for a while",
        description="Enroll N simulated devices (one enrollment token each, issued with an"
        " operator API token) and let them poll, verify and report for --duration seconds.",
    )
    run.add_argument(
        "--server", required=True, help="control plane URL, e.g. http://127.0.0.1:8700"
    )
    run.add_argument(
        "--token-file",
        type=Path,
        help="file holding an API token with the operator role (needed to enroll devices)",
    )
    run.add_argument("--devices", type=int, required=True, help="how many devices to simulate")
    run.add_argument(
        "--tag-spec",
        action="append",
        default=[],
        metavar="KEY=V[*W],V...",
        help="spread tag values over the fleet by index, e.g. 'hw=rpi5*3,jetson-orin-nano'"
        " (repeat per key; a hw= class sets the hardware facts)",
    )
    run.add_argument("--tag", action="append", default=[], help="a tag every device gets")
    run.add_argument("--poll-interval", type=float, default=5.0, help="seconds between polls")
    run.add_argument("--jitter", type=float, default=0.2, help="fraction of jitter per wait")
    run.add_argument("--duration", type=float, default=30.0, help="seconds of polling")
    run.add_argument(
        "--fail-health", type=float, default=0.0, help="share of devices that fail health"
    )
    run.add_argument(
        "--never-reports", type=float, default=0.0, help="share of devices that never report"
    )
    run.add_argument(
        "--install-rounds",
        type=int,
        default=0,
        help="polls a device stays active (its health window) before it commits",
    )
    run.add_argument(
        "--processes", type=int, default=1, help="client processes to split the fleet over"
    )
    run.add_argument(
        "--concurrency", type=int, default=256, help="requests in flight per client process"
    )
    run.add_argument(
        "--root",
        type=Path,
        help="the TUF root.json to trust (default: the first one fetched from the server)",
    )
    run.add_argument(
        "--state",
        type=Path,
        help="JSON file of device keys and ids: read if it exists, written at the end",
    )
    run.add_argument("--json", type=Path, help="also write the result to this file")
    run.add_argument("--seed", type=int, default=0, help="seed of the poll-time jitter")
    return parser


def _fleet(args: argparse.Namespace, behaviour: Mix) -> tuple[list[SimDevice], list[SimDevice]]:
    """The devices to run (the first ``--devices``) and all devices to save afterwards."""
    if args.devices < 1:
        raise SetupError("--devices must be at least 1")
    saved: list[SimDevice] = []
    if args.state is not None and args.state.exists():
        saved = state.load(args.state, behaviour)
    profile = TagSpec.parse(args.tag_spec, args.tag)
    known = {d.index for d in saved}
    fresh = [
        SimDevice(i, profile(i), behaviour(i), generate_key_pair())
        for i in range(args.devices)
        if i not in known
    ]
    everyone = sorted(saved + fresh, key=lambda d: d.index)
    return [d for d in everyone if d.index < args.devices], everyone


def _operator_token(path: Path | None, needed: bool) -> str | None:
    if path is None:
        if needed:
            raise SetupError("devices must enroll: give --token-file with an operator API token")
        return None
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise SetupError(f"cannot read the token file {path}: {e}") from e
    if not token:
        raise SetupError(f"the token file {path} is empty")
    return token


def _summary(result: LoadResult) -> str:
    poll = result.latency.get("poll")
    figures = "" if poll is None else f", poll p50 {poll.p50_ms:.1f} ms p99 {poll.p99_ms:.1f} ms"
    return (
        f"{result.devices} devices, {result.duration_s:.1f} s: {result.polls} polls"
        f" ({result.polls_per_second:.0f}/s){figures}, {sum(result.reports.values())} reports,"
        f" {result.errors} errors"
    )


def run(args: argparse.Namespace) -> int:
    behaviour = Mix(
        fails_health=args.fail_health,
        never_reports=args.never_reports,
        install_rounds=args.install_rounds,
    )
    devices, everyone = _fleet(args, behaviour)
    token = _operator_token(args.token_file, any(not d.enrolled for d in devices))
    root = None
    if args.root is not None:
        try:
            root = args.root.read_bytes()
        except OSError as e:
            raise SetupError(f"cannot read the root file {args.root}: {e}") from e
    plan = LoadPlan(
        server=args.server.rstrip("/"),
        operator_token=token,
        poll_interval=args.poll_interval,
        jitter=args.jitter,
        duration=args.duration,
        processes=args.processes,
        concurrency=args.concurrency,
        root=root,
        seed=args.seed,
    )
    try:
        result = run_load(devices, plan, behaviour=behaviour, progress=sys.stderr)
    finally:
        if args.state is not None:
            state.save(everyone, args.state, server=plan.server)
    body = json.dumps(result.as_json(), indent=2)
    if args.json is not None:
        args.json.write_text(body + "\n")
    print(body)
    print(f"simulator: {_summary(result)}", file=sys.stderr)
    return 1 if result.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except SimulatorError as e:
        print(f"simulator: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
