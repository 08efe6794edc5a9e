"""The pieces every ``outpost-cp`` command module uses: registering a command, the
connection options, the :class:`Context` a handler gets, and argument parsers.

A command that talks to the control plane is added with :func:`add_remote_command`; it
then accepts ``--server``, ``--token-file`` and ``--json`` after its name as well as
before it, and its handler calls ``ctx.client()`` for an authenticated
:class:`~control_plane.ops.client.OperatorClient`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from control_plane.cli.output import Output
from control_plane.ops.client import DEFAULT_SERVER, OperatorClient

__all__ = [
    "Context",
    "Handler",
    "Subcommands",
    "UsageError",
    "add_group",
    "add_local_command",
    "add_remote_command",
    "duration_seconds",
    "json_object",
]

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

ENV_SERVER = "OUTPOST_CP_URL"
ENV_TOKEN_FILE = "OUTPOST_CP_TOKEN_FILE"
ENV_TOKEN = "OUTPOST_CP_TOKEN"


class UsageError(Exception):
    """The command line is wrong (exit code 2); nothing was sent."""


@dataclass
class Context:
    """What a handler gets: the parsed arguments, where to print, and the environment
    (read once, in ``main``). ``client()`` connects on first use."""

    args: argparse.Namespace
    out: Output
    environ: Mapping[str, str]
    _client: OperatorClient | None = field(default=None, repr=False)

    @property
    def server(self) -> str:
        server: str | None = getattr(self.args, "server", None)
        return server or self.environ.get(ENV_SERVER) or DEFAULT_SERVER

    def token(self) -> str:
        """The API token: ``--token-file``, else ``$OUTPOST_CP_TOKEN_FILE``, else
        ``$OUTPOST_CP_TOKEN``. (No ``--token`` flag: the process list would show it.)"""
        path: Path | None = getattr(self.args, "token_file", None)
        if path is None and self.environ.get(ENV_TOKEN_FILE):
            path = Path(self.environ[ENV_TOKEN_FILE])
        if path is not None:
            try:
                token = path.read_text().strip()
            except OSError as e:
                raise UsageError(f"cannot read the token file {path}: {e.strerror}") from e
            if not token:
                raise UsageError(f"the token file {path} is empty")
            return token
        token = self.environ.get(ENV_TOKEN, "").strip()
        if not token:
            raise UsageError(
                f"no API token: pass --token-file FILE, or set {ENV_TOKEN_FILE} or {ENV_TOKEN}"
            )
        return token

    def client(self) -> OperatorClient:
        if self._client is None:
            self._client = OperatorClient(server=self.server, token=self.token())
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


Handler = Callable[[Context], None]


def add_connection_options(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    """``--server``, ``--token-file`` and ``--json`` (with ``argparse.SUPPRESS`` on a
    subcommand, so a value given before the subcommand is kept)."""
    parser.add_argument(
        "--server",
        default=default,
        help=f"control plane URL (env {ENV_SERVER}; default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=default,
        help=f"file holding the API token (env {ENV_TOKEN_FILE}, or the token in {ENV_TOKEN})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if default is None else default,
        help="print the API's JSON answer instead of a table or summary",
    )


def _connection_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_connection_options(parent, default=argparse.SUPPRESS)
    return parent


def add_remote_command(
    sub: Subcommands, name: str, *, help: str, handler: Handler
) -> argparse.ArgumentParser:
    """A command that calls the operator API; add its own arguments to the answer."""
    parser = sub.add_parser(name, help=help, description=help, parents=[_connection_parent()])
    parser.set_defaults(handler=handler)
    return parser


def add_local_command(
    sub: Subcommands, name: str, *, help: str, handler: Handler
) -> argparse.ArgumentParser:
    """A command that works on this machine (data dir, keys) rather than over the API."""
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser


def add_group(
    sub: Subcommands, name: str, *, help: str, aliases: tuple[str, ...] = ()
) -> Subcommands:
    """A command with subcommands (``outpost-cp tokens create``)."""
    parser = sub.add_parser(name, help=help, description=help, aliases=list(aliases))
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration_seconds(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``1h``, ``7d`` -> seconds (an argparse ``type``)."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 1h or 7d")
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline or as ``@file`` (an argparse ``type``)."""
    source = "the argument"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {source}: {e.strerror}") from e
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{source} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{source} must be a JSON object ({{...}})")
    return value
