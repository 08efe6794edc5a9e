"""``outpost-cp tokens create|list|revoke``: operator API tokens (admin)."""

from __future__ import annotations

from control_plane.access.roles import Role
from control_plane.cli.command import Context, Subcommands, add_group, add_remote_command
from control_plane.cli.output import fields, table, when


def register(sub: Subcommands) -> None:
    tokens = add_group(sub, "tokens", help="operator API tokens (admin)")
    cmd = add_remote_command(
        tokens, "create", help="create a token; its secret is printed this once", handler=_create
    )
    cmd.add_argument("--name", required=True, help="who or what uses it, e.g. ci-publisher")
    cmd.add_argument("--role", required=True, choices=[r.value for r in Role])
    add_remote_command(tokens, "list", help="every token, revoked ones included", handler=_list)
    cmd = add_remote_command(tokens, "revoke", help="revoke a token at once", handler=_revoke)
    cmd.add_argument("token_id", metavar="ID")


def _create(ctx: Context) -> None:
    created = ctx.client().create_token(name=ctx.args.name, role=ctx.args.role)
    summary = fields(
        [
            ("id", created["id"]),
            ("name", created["name"]),
            ("role", created["role"]),
            ("created", when(created["created_at"])),
            ("token", created["token"]),
        ]
    )
    ctx.out.emit(created, f"{summary}\nThe token is shown this once; store it in a secret store.")


def _list(ctx: Context) -> None:
    rows = ctx.client().list_tokens()
    text = table(
        rows,
        [
            ("ID", lambda t: t["id"]),
            ("NAME", lambda t: t["name"]),
            ("ROLE", lambda t: t["role"]),
            ("CREATED", lambda t: when(t["created_at"])),
            ("CREATED BY", lambda t: t["created_by"]),
            ("REVOKED", lambda t: when(t["revoked_at"]) if t["revoked_at"] else None),
        ],
        empty="no API tokens",
    )
    ctx.out.emit(rows, text)


def _revoke(ctx: Context) -> None:
    row = ctx.client().revoke_token(ctx.args.token_id)
    ctx.out.emit(
        row, f"revoked {row['id']} ({row['name']}, {row['role']}) at {when(row['revoked_at'])}"
    )
