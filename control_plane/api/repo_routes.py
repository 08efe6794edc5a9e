"""The image repository over HTTP (no auth: TUF metadata verifies what is served),
and the health check."""

from __future__ import annotations

import re

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from control_plane.api.dependencies import CP
from control_plane.api.wire import Health
from control_plane.artifacts.chunks import manifest_content
from control_plane.artifacts.service import published_artifact
from control_plane.errors import NotFoundError
from control_plane.repository.metadata_store import TIMESTAMP_FILE
from protocol import paths
from protocol.chunking import CHUNK_MANIFEST_SUFFIX
from protocol.version import PROTOCOL_VERSION

router = APIRouter()

_METADATA_FILE = re.compile(
    r"^(?:[1-9][0-9]{0,9}\.(?:root|targets|snapshot)|root|timestamp)\.json$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_IMMUTABLE = "public, max-age=31536000, immutable"


class BlobResponse(FileResponse):
    chunk_size = 1 << 20  # Starlette's 64 KiB costs a thread hop per chunk on big models


@router.get(paths.REPO_METADATA + "/{file_name}")
def metadata_file(file_name: str, cp: CP) -> Response:
    """A TUF metadata file, e.g. ``1.root.json``, ``3.snapshot.json``, ``timestamp.json``."""
    if not _METADATA_FILE.match(file_name):
        raise NotFoundError(f"no metadata file {file_name!r}")
    if file_name == TIMESTAMP_FILE:
        content: bytes | None = cp.metadata.current_timestamp(cp.clock())
        cache = "no-cache"
    else:
        content = cp.metadata.read(file_name)
        cache = "no-cache" if file_name == "root.json" else _IMMUTABLE
    if content is None:
        raise NotFoundError(f"no metadata file {file_name!r}")
    return Response(
        content=content, media_type="application/json", headers={"Cache-Control": cache}
    )


@router.api_route(paths.REPO_TARGETS + "/{sha256}/{file_name}", methods=["GET", "HEAD"])
def target_file(sha256: str, file_name: str, cp: CP) -> Response:
    """The bytes of a published target; supports ``Range`` (206) for resumed downloads and
    for the chunks a delta update fetches. ``<target path>.chunks`` is the target's chunk
    manifest (its sha256 and length are in the target's signed custom metadata).

    Also answers python-tuf's consistent-snapshot form ``<sha256>/<sha256>.<file name>``.
    """
    if not _SHA256.match(sha256):
        raise NotFoundError("target paths look like '<sha256>/<file name>'")
    if file_name.endswith(CHUNK_MANIFEST_SUFFIX):
        return _chunk_manifest(sha256, file_name.removesuffix(CHUNK_MANIFEST_SUFFIX), cp)
    names = [file_name]
    if file_name.startswith(sha256 + "."):
        names.append(file_name.removeprefix(sha256 + "."))
    artifact = published_artifact(cp.db, [f"{sha256}/{n}" for n in names])
    if artifact is None:
        raise NotFoundError(f"no published target {sha256}/{file_name}")
    blob = cp.blobs.path(artifact.sha256)
    if not blob.is_file():
        raise NotFoundError(f"target {artifact.target_path} is missing from the blob store")
    return BlobResponse(
        blob,
        media_type="application/octet-stream",
        headers={"ETag": f'"{artifact.sha256}"', "Cache-Control": _IMMUTABLE},
    )


def _chunk_manifest(sha256: str, file_name: str, cp: CP) -> Response:
    artifact = published_artifact(cp.db, [f"{sha256}/{file_name}"])
    content = None
    if artifact is not None:
        with cp.db.transaction() as session:
            content = manifest_content(session, artifact.sha256)
    if content is None:
        raise NotFoundError(f"no chunk manifest for a published target {sha256}/{file_name}")
    return Response(
        content=content,
        media_type="application/octet-stream",
        headers={"Cache-Control": _IMMUTABLE},
    )


@router.get(paths.HEALTH)
def health(cp: CP) -> Health:
    cp.db.ping()
    return Health(status="ok", protocol_version=PROTOCOL_VERSION)
