"""Commands run on the control plane's own machine or the key holder's: ``init``,
``serve``, ``rotate-key`` (data dir and database) and ``sign-targets`` (offline key).

The server-side modules are imported inside the handlers: they take about two seconds
to import, which every API command would otherwise pay.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from control_plane.cli.command import (
    Context,
    Subcommands,
    UsageError,
    add_local_command,
    add_remote_command,
)
from control_plane.errors import NotInitializedError
from control_plane.repository.keyring import ONLINE_ROLES
from control_plane.settings import ControlPlaneSettings


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="state folder (keys, blobs, root.json)")
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL; default sqlite in the data dir; e.g. postgresql+psycopg://...",
    )


def register(sub: Subcommands) -> None:
    cmd = add_local_command(
        sub,
        "init",
        help="create keys, the database schema, the repository and an admin token",
        handler=_init,
    )
    add_storage_options(cmd)
    cmd = add_local_command(
        sub, "serve", help="run the HTTP API (migrates the database first)", handler=_serve
    )
    add_storage_options(cmd)
    cmd.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    cmd.add_argument("--port", type=int, help="port (default 8700)")

    cmd = add_remote_command(
        sub,
        "sign-targets",
        help="sign pending releases' targets with the offline targets key, on this machine"
        " (needs a release-manager token)",
        handler=_sign_targets,
    )
    cmd.add_argument("--key", type=Path, required=True, help="the targets.key from 'init'")
    cmd.add_argument("--yes", action="store_true", help="sign without asking")

    cmd = add_local_command(
        sub,
        "rotate-key",
        help="replace an online key: new root version (signed with the root key) listing it,"
        " and everything the old key signed re-signed; a running server picks it up",
        handler=_rotate_key,
    )
    add_storage_options(cmd)
    cmd.add_argument("--role", required=True, choices=ONLINE_ROLES, help="the key to replace")
    cmd.add_argument(
        "--root-key",
        type=Path,
        help="the offline root.key (default: <offline keys dir>/root.key)",
    )


def local_settings(args: argparse.Namespace) -> ControlPlaneSettings:
    overrides: dict[str, Any] = {
        key: value
        for key in ("data_dir", "database_url", "host", "port")
        if (value := getattr(args, key, None)) is not None
    }
    return ControlPlaneSettings(**overrides)


def _init(ctx: Context) -> None:
    from control_plane.ops.initialization import initialize
    from control_plane.services import utc_now

    result = initialize(local_settings(ctx.args), utc_now())
    print(json.dumps(result.as_json()), file=ctx.out.stdout, flush=True)


def _rotate_key(ctx: Context) -> None:
    from control_plane.ops.key_rotation import rotate_online_key
    from control_plane.services import utc_now

    rotation = rotate_online_key(
        local_settings(ctx.args), ctx.args.role, now=utc_now(), root_key_path=ctx.args.root_key
    )
    print(json.dumps(rotation.as_json()), file=ctx.out.stdout, flush=True)


def _ask(question: str) -> bool:
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _sign_targets(ctx: Context) -> None:
    from control_plane.ops.sign_targets import sign_targets

    if not ctx.args.key.exists():
        raise UsageError(f"no targets key at {ctx.args.key}")
    sign_targets(
        server=ctx.server,
        token=ctx.token(),
        key_path=ctx.args.key,
        confirm=None if ctx.args.yes else _ask,
        out=ctx.out.stdout,
    )


def _serve(ctx: Context) -> None:
    import uvicorn

    from control_plane.app import create_app
    from control_plane.repository.metadata_store import is_initialized
    from control_plane.storage.database import Database, migrate
    from protocol.http_server import server_config

    settings = local_settings(ctx.args)
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
    sys.stdout.flush()
    config = server_config(
        app,
        host=settings.host,
        port=settings.port,
        limits=settings.http_limits,
        log_level=settings.log_level,
    )
    uvicorn.Server(config).run()
