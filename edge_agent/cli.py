"""``python -m edge_agent``: ``enroll`` a device once, then ``run`` the agent.

python -m edge_agent enroll --server URL --token T --root-sha256 HEX --state-dir D
python -m edge_agent run --state-dir D [--port P] [--poll-interval S]
python -m edge_agent install-bundle FILE --state-dir D [--device-class C] [--root-sha256 HEX]
python -m edge_agent telemetry policy|budget|sent --state-dir D [--json] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.errors import AgentError, ConfigError
from edge_agent.settings import AgentSettings

log = logging.getLogger("edge_agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge_agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    enroll = commands.add_parser("enroll", help="enroll this device with a control plane")
    enroll.add_argument("--server", required=True, help="control-plane URL")
    enroll.add_argument(
        "--token",
        default=os.environ.get("OUTPOST_AGENT_ENROLL_TOKEN"),
        help="one-time enrollment token (or env OUTPOST_AGENT_ENROLL_TOKEN)",
    )
    pin = enroll.add_mutually_exclusive_group(required=True)
    pin.add_argument("--root-sha256", help="sha256 of 1.root.json, from `control_plane init`")
    pin.add_argument("--root", type=Path, help="the trusted 1.root.json, copied out of band")
    pin.add_argument(
        "--insecure-trust-first-root",
        action="store_true",
        help="INSECURE: trust whatever root the server sends (throwaway demos only)",
    )
    enroll.add_argument("--state-dir", type=Path, required=True)
    enroll.add_argument("--name", default=socket.gethostname()[:128] or "device")
    enroll.add_argument("--tag", action="append", default=[], help="cohort tag (repeatable)")

    run = commands.add_parser("run", help="serve the installed release and keep it updated")
    run.add_argument("--state-dir", type=Path, required=True)
    run.add_argument("--host", help="local API address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="local API port (default 8800)")
    run.add_argument("--poll-interval", type=float, help="seconds between update checks")
    run.add_argument("--log-level", default="INFO")

    bundle = commands.add_parser(
        "install-bundle",
        help="install a release from an offline bundle (no network); stop the service first",
    )
    bundle.add_argument("bundle", type=Path, help="the file from `outpost-cp bundle create`")
    bundle.add_argument("--state-dir", type=Path, required=True)
    bundle.add_argument(
        "--device-class", help="this device's class (required unless the device is enrolled)"
    )
    bundle.add_argument(
        "--root-sha256",
        help="sha256 of 1.root.json (printed by `outpost-cp bundle create`); needed when"
        " the device trusts no root yet",
    )
    bundle.add_argument("--log-level", default="WARNING")

    telemetry = commands.add_parser(
        "telemetry", help="what this device measures and sends, and the privacy budget"
    )
    telemetry.add_argument(
        "view",
        choices=("policy", "budget", "sent"),
        help="policy: the telemetry policy in force and where it came from; budget: epsilon"
        " spent and left; sent: the latest reports, field by field",
    )
    telemetry.add_argument("--state-dir", type=Path, required=True)
    telemetry.add_argument("--json", action="store_true", help="machine-readable output")
    telemetry.add_argument("--limit", type=int, default=3, help="reports to show (sent)")
    telemetry.add_argument("--log-level", default="WARNING")
    return parser


def _enroll(args: argparse.Namespace) -> int:
    from edge_agent.uplink import RootPin, enroll, new_http_client

    if not args.token:
        raise ConfigError("give the enrollment token with --token or OUTPOST_AGENT_ENROLL_TOKEN")
    if args.insecure_trust_first_root:
        log.warning(
            "INSECURE: trusting the first root the server sends (--insecure-trust-first-root);"
            " anyone between this device and the server can take it over"
        )
    pin = RootPin(
        sha256=args.root_sha256,
        root=args.root.read_bytes() if args.root is not None else None,
        insecure_trust_first_root=args.insecure_trust_first_root,
    )
    with new_http_client(args.server) as http:
        identity = enroll(
            http,
            state_dir=args.state_dir,
            server_url=args.server,
            token=args.token,
            pin=pin,
            name=args.name,
            tags=args.tag,
        )
    print(
        json.dumps(
            {
                "device_id": identity.device_id,
                "state_dir": str(args.state_dir),
                "api_token_file": str(args.state_dir / "api-token"),
            }
        )
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from edge_agent.daemon import run_agent

    overrides: dict[str, Any] = {"state_dir": args.state_dir}
    if args.host is not None:
        overrides["api_host"] = args.host
    if args.port is not None:
        overrides["api_port"] = args.port
    if args.poll_interval is not None:
        overrides["poll_interval_seconds"] = args.poll_interval
    try:
        settings = AgentSettings(**overrides)
    except ValidationError as e:
        raise ConfigError(f"invalid agent settings: {e}") from e
    return run_agent(settings)


def _install_bundle(args: argparse.Namespace) -> int:
    from edge_agent.bundle_install import install_bundle
    from edge_agent.uplink import RootPin

    try:
        settings = AgentSettings(state_dir=args.state_dir)
    except ValidationError as e:
        raise ConfigError(f"invalid agent settings: {e}") from e
    done = install_bundle(
        settings,
        args.bundle,
        device_class=args.device_class,
        pin=RootPin(sha256=args.root_sha256),
    )
    print(json.dumps(done.as_json()))
    return 0


def _telemetry(args: argparse.Namespace) -> int:
    from edge_agent.telemetry.owner import (
        OwnerView,
        budget_text,
        now_utc,
        policy_text,
        sent_text,
        state_dir_exists,
    )

    if not state_dir_exists(args.state_dir):
        raise ConfigError(
            f"no agent state in {args.state_dir} (no state.db): pass the agent's --state-dir"
        )
    try:
        settings = AgentSettings(state_dir=args.state_dir)
    except ValidationError as e:
        raise ConfigError(f"invalid agent settings: {e}") from e
    view = OwnerView.open(settings)
    try:
        now = now_utc()
        if args.view == "policy":
            out = (
                json.dumps(view.policy_json(now), indent=2) if args.json else policy_text(view, now)
            )
        elif args.view == "budget":
            out = json.dumps(view.budget(now), indent=2) if args.json else budget_text(view, now)
        else:
            limit = max(1, args.limit)
            out = (
                json.dumps(view.sent_json(limit), indent=2) if args.json else sent_text(view, limit)
            )
    finally:
        view.close()
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m edge_agent`` and ``outpost-agent``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise
    try:
        if args.command == "enroll":
            return _enroll(args)
        if args.command == "install-bundle":
            return _install_bundle(args)
        if args.command == "telemetry":
            return _telemetry(args)
        return _run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
