"""``outpost-cp artifacts upload|list|show``: model and data files (upload: release
manager)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from control_plane.cli.command import (
    Context,
    Subcommands,
    UsageError,
    add_group,
    add_remote_command,
    json_object,
)
from control_plane.cli.output import ProgressBar, fields, size, table, when
from protocol.messages import ARTIFACT_FORMATS, ARTIFACT_KINDS


def register(sub: Subcommands) -> None:
    artifacts = add_group(sub, "artifacts", help="artifacts: the files releases are made of")
    cmd = add_remote_command(
        artifacts,
        "upload",
        help="upload a file as an artifact, streamed, with a progress bar on stderr",
        handler=_upload,
    )
    cmd.add_argument("file", type=Path, metavar="FILE")
    cmd.add_argument("--name", required=True, help="the model id agents see, e.g. smollm2")
    cmd.add_argument("--kind", required=True, choices=ARTIFACT_KINDS)
    cmd.add_argument("--format", required=True, choices=ARTIFACT_FORMATS)
    cmd.add_argument("--runtime", help="e.g. llama.cpp, onnxruntime")
    cmd.add_argument("--quantization", help="e.g. Q4_1, int8")
    cmd.add_argument(
        "--custom",
        type=json_object,
        metavar="JSON|@FILE",
        help='extra TUF custom metadata, e.g. \'{"constraints": {"min_ram_mb": 512}}\'',
    )
    cmd.add_argument(
        "--quiet", action="store_true", help="no progress bar (only the final line on stderr)"
    )
    add_remote_command(artifacts, "list", help="every artifact, newest first", handler=_list)
    cmd = add_remote_command(artifacts, "show", help="one artifact in full", handler=_show)
    cmd.add_argument("artifact_id", metavar="ID")


def artifact_text(artifact: Mapping[str, Any]) -> str:
    custom = artifact.get("custom", {})
    return fields(
        [
            ("id", artifact["id"]),
            ("name", artifact["name"]),
            ("kind", artifact["kind"]),
            ("format", artifact["format"]),
            ("size", f"{size(artifact['length'])} ({artifact['length']} bytes)"),
            ("sha256", artifact["sha256"]),
            ("target", artifact["target_path"]),
            ("runtime", custom.get("runtime")),
            ("quantization", custom.get("quantization")),
            ("created", when(artifact["created_at"])),
        ]
    )


def _upload(ctx: Context) -> None:
    args = ctx.args
    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"{path} is not a file")
    client = ctx.client()
    stderr = ctx.out.stderr
    bar = ProgressBar(stderr, label=path.name, live=stderr.isatty() and not args.quiet)
    outcome = "failed"
    try:
        uploaded = client.upload_artifact(
            path,
            name=args.name,
            kind=args.kind,
            format=args.format,
            runtime=args.runtime,
            quantization=args.quantization,
            custom=args.custom,
            progress=bar,
        )
        outcome = "stored" if uploaded.created else "already stored (same bytes)"
    finally:
        bar.finish(outcome)
    ctx.out.emit(uploaded.artifact, artifact_text(uploaded.artifact))


def _list(ctx: Context) -> None:
    rows = ctx.client().list_artifacts()
    text = table(
        rows,
        [
            ("ID", lambda a: a["id"]),
            ("NAME", lambda a: a["name"]),
            ("KIND", lambda a: a["kind"]),
            ("FORMAT", lambda a: a["format"]),
            ("SIZE", lambda a: size(a["length"])),
            ("SHA256", lambda a: a["sha256"][:16]),
            ("CREATED", lambda a: when(a["created_at"])),
        ],
        empty="no artifacts",
    )
    ctx.out.emit(rows, text)


def _show(ctx: Context) -> None:
    artifact = ctx.client().get_artifact(ctx.args.artifact_id)
    ctx.out.emit(artifact, artifact_text(artifact))
