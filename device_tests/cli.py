"""``python -m device_tests``: run the acceptance suite, print a table, write JSON/JUnit.

Exit codes: 0 every figure passed; 1 a figure failed or is inconclusive; 2 the run could
not be judged (bad profile or arguments, agent unreachable, token refused).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from device_tests.errors import EXIT_FAILED, EXIT_PASSED, DeviceTestError
from device_tests.profile import load_profile, profile_names
from device_tests.report import table, write_json, write_junit
from device_tests.runner import run_suite
from device_tests.workload import Workload, load_workload
from edge_agent.updates.acceptance import Measurement, Observer, describe_errors

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m device_tests",
        description="Per-device acceptance suite: p95 latency, throughput and memory"
        " against a device profile's thresholds (docs/device-tests.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure an agent against a profile")
    run.add_argument("--profile", required=True, help=f"{', '.join(profile_names())} or a path")
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("--agent", help="the agent's local API, e.g. http://127.0.0.1:8800")
    target.add_argument(
        "--state-dir",
        type=Path,
        help="in-process: load the release this agent state directory serves (no agent"
        " running; measures cold start too)",
    )
    run.add_argument("--release-dir", help="with --state-dir: releases/<this> instead of current")
    run.add_argument("--token", help="the agent's API token (with --agent)")
    run.add_argument("--token-file", type=Path, help="a file holding it (<state dir>/api-token)")
    run.add_argument("--json", type=Path, help="write the result as JSON here")
    run.add_argument("--junit", type=Path, help="write JUnit XML here")
    run.add_argument("--device-class", help="the class reported (default: the profile's name)")
    run.add_argument(
        "--report-to-control-plane",
        action="store_true",
        help="send the numbers to the control plane, signed by the device key (about the"
        " release the device serves)",
    )
    run.add_argument(
        "--device-state-dir",
        type=Path,
        help="the enrolled agent's state directory, for its key and control plane (default:"
        " --state-dir, else /var/lib/outpost)",
    )
    run.add_argument("--min-queries", type=int, help="override the profile's minimum queries")
    run.add_argument(
        "--min-duration", type=float, help="override the profile's minimum duration (s)"
    )
    check = sub.add_parser("check-profile", help="validate a profile file and print it")
    check.add_argument("profile")
    return parser


def _token(args: argparse.Namespace) -> str:
    if args.token is not None:
        return str(args.token)
    if args.token_file is None:
        raise DeviceTestError("--agent needs --token or --token-file (<state dir>/api-token)")
    path: Path = args.token_file
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise DeviceTestError(f"cannot read --token-file {path}: {e.strerror or e}") from e


def _run(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    overrides = {
        k: v
        for k, v in (("min_queries", args.min_queries), ("min_duration_s", args.min_duration))
        if v is not None
    }
    measurement = profile.measurement
    if overrides:
        try:
            measurement = Measurement.model_validate({**measurement.model_dump(), **overrides})
        except ValidationError as e:
            raise DeviceTestError(describe_errors(e, "the command-line overrides")) from e
    workload = load_workload()
    with _target(args, workload) as (target, label, facts):
        result = run_suite(
            profile.thresholds,
            measurement.rules(),
            target,
            profile=profile.name,
            device_class=args.device_class or profile.name,
            workload_version=workload.version,
            target_label=label,
            clock=time.monotonic,
            now=lambda: datetime.now(UTC),
            facts=facts,
        )
    print(table(result))
    if args.json is not None:
        write_json(result, args.json)
    if args.junit is not None:
        write_junit(result, args.junit)
    if args.report_to_control_plane:
        from device_tests.uplink import report_to_control_plane

        state_dir = args.device_state_dir or args.state_dir or Path("/var/lib/outpost")
        ack = report_to_control_plane(result, result.facts.get("release_id"), state_dir)
        print(f"reported to the control plane (report {ack.report_id})")
    return EXIT_PASSED if result.passed else EXIT_FAILED


@contextmanager
def _target(
    args: argparse.Namespace, workload: Workload
) -> Iterator[tuple[Observer, str, dict[str, Any]]]:
    """The agent over HTTP (its address and token checked first), or a release in process."""
    if args.state_dir is not None:
        from device_tests.in_process import in_process, load_release

        release = load_release(args.state_dir, args.release_dir)
        with in_process(release, workload) as observer:
            label = f"in-process {release.release_name} {release.release_version}"
            yield observer, label, {"release_id": release.release_id}
        return
    from device_tests.agent_client import HttpAgent

    agent = HttpAgent(args.agent, _token(args), workload)
    try:
        facts = agent.facts()  # the address and the token, before anything is measured
        serving = facts.get("serving")
        yield (
            agent,
            f"agent {args.agent}",
            {
                "serving": serving,
                "device_id": facts.get("device_id"),
                "release_id": serving.get("release_id") if isinstance(serving, dict) else None,
            },
        )
    finally:
        agent.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-profile":
            profile = load_profile(args.profile)
            print(profile.model_dump_json(indent=2, by_alias=True))
            return EXIT_PASSED
        return _run(args)
    except DeviceTestError as e:
        print(f"device_tests: {e}", file=sys.stderr)
        return e.exit_code
