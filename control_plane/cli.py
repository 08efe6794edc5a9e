"""``outpost-cp``: ``init`` a control plane, ``serve`` it, ``sign-targets`` offline,
``rotate-key`` an online key."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from control_plane.app import create_app
from control_plane.errors import ControlPlaneError, NotInitializedError
from control_plane.ops.initialization import initialize
from control_plane.ops.key_rotation import rotate_online_key
from control_plane.ops.sign_targets import sign_targets
from control_plane.repository.keyring import ONLINE_ROLES
from control_plane.repository.metadata_store import is_initialized
from control_plane.services import utc_now
from control_plane.settings import ControlPlaneSettings
from control_plane.storage.database import Database, migrate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outpost-cp",
        description="Outpost control plane. Every flag can also be set as OUTPOST_CP_<NAME>.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("init", "create keys, the database schema, the repository and an admin token"),
        ("serve", "run the HTTP API (migrates the database first)"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--data-dir", type=Path, help="state folder (keys, blobs, root.json)")
        cmd.add_argument(
            "--database-url",
            help="SQLAlchemy URL; default sqlite in the data dir; e.g. postgresql+psycopg://...",
        )
        if name == "serve":
            cmd.add_argument("--host", help="interface to bind (default 127.0.0.1)")
            cmd.add_argument("--port", type=int, help="port (default 8700)")
    text = "sign pending releases' targets with the offline targets key, on this machine"
    cmd = sub.add_parser("sign-targets", help=text, description=text)
    cmd.add_argument("--server", required=True, help="control plane URL, e.g. https://cp:8700")
    cmd.add_argument(
        "--token-file", type=Path, required=True, help="file with a release-manager API token"
    )
    cmd.add_argument("--key", type=Path, required=True, help="the targets.key from 'init'")
    cmd.add_argument("--yes", action="store_true", help="sign without asking")
    text = (
        "replace an online key: new root version (signed with the root key) listing it,"
        " and everything the old key signed re-signed; a running server picks it up"
    )
    cmd = sub.add_parser("rotate-key", help=text, description=text)
    cmd.add_argument("--data-dir", type=Path, help="state folder (keys, blobs, root.json)")
    cmd.add_argument("--database-url", help="SQLAlchemy URL; default sqlite in the data dir")
    cmd.add_argument("--role", required=True, choices=ONLINE_ROLES, help="the key to replace")
    cmd.add_argument(
        "--root-key",
        type=Path,
        help="the offline root.key (default: <offline keys dir>/root.key)",
    )
    return parser


def _ask(question: str) -> bool:
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _sign_targets(args: argparse.Namespace) -> None:
    try:
        token = args.token_file.read_text().strip()
    except OSError as e:
        raise NotInitializedError(f"cannot read the token file {args.token_file}: {e}") from e
    if not args.key.exists():
        raise NotInitializedError(f"no targets key at {args.key}")
    sign_targets(
        server=args.server,
        token=token,
        key_path=args.key,
        confirm=None if args.yes else _ask,
        out=sys.stdout,
    )


def _settings(args: argparse.Namespace) -> ControlPlaneSettings:
    overrides: dict[str, Any] = {
        key: value
        for key in ("data_dir", "database_url", "host", "port")
        if (value := getattr(args, key, None)) is not None
    }
    return ControlPlaneSettings(**overrides)


def _serve(settings: ControlPlaneSettings) -> None:
    import uvicorn

    db = Database.from_url(settings.resolved_database_url)
    try:
        migrate(db.engine)
        with db.transaction() as session:
            if not is_initialized(session):
                raise NotInitializedError(
                    f"the database {settings.display_database_url} holds no repository;"
                    f" run 'outpost-cp init --data-dir {settings.data_dir}' first"
                )
    finally:
        db.dispose()
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "sign-targets":
            _sign_targets(args)
            return 0
        settings = _settings(args)
        if args.command == "init":
            result = initialize(settings, utc_now())
            print(json.dumps(result.as_json()), flush=True)
        elif args.command == "rotate-key":
            rotation = rotate_online_key(
                settings, args.role, now=utc_now(), root_key_path=args.root_key
            )
            print(json.dumps(rotation.as_json()), flush=True)
        else:
            _serve(settings)
    except ValidationError as e:
        print(f"outpost-cp: invalid setting: {e}", file=sys.stderr)
        return 2
    except ControlPlaneError as e:
        print(f"outpost-cp: {e}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(f"outpost-cp: cannot reach the control plane: {e}", file=sys.stderr)
        return 1
    return 0
