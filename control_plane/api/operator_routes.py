"""Operator API (``Authorization: Bearer <API token>``; each route names its permission)."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from control_plane import audit
from control_plane.access.tokens import api_tokens, issue_api_token, revoke_api_token_audited
from control_plane.api.dependencies import (
    CP,
    Admin,
    Assigner,
    Enroller,
    Publisher,
    Reader,
    read_bounded_body,
)
from control_plane.api.wire import (
    ApiTokenCreate,
    ApiTokenCreated,
    ApiTokenPublic,
    ArtifactPublic,
    AssignmentCreate,
    AssignmentPublic,
    AuditEntryPublic,
    DevicePublic,
    DeviceTagsPatch,
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    PendingTargetsPublic,
    ReleaseCreate,
    ReleaseDownload,
    ReleasePublic,
    ReleaseRef,
    SignedTargetsAcceptedPublic,
)
from control_plane.artifacts import service as artifacts
from control_plane.artifacts.chunks import delta_report, prepare_chunks
from control_plane.artifacts.service import (
    ArtifactSpec,
    check_upload,
    get_artifact,
    register_artifact,
)
from control_plane.errors import ArtifactTooLargeError, InvalidRequestError
from control_plane.fleet import devices as fleet_devices
from control_plane.fleet.enrollment import issue_enrollment_token
from control_plane.fleet.tags import retag_device
from control_plane.releases import service as releases
from control_plane.releases.offline_signing import accept_signed_targets, pending_targets
from control_plane.releases.qualification import release_qualification
from control_plane.rollouts.core import CohortSelector
from protocol import paths
from protocol.messages import INT64_MAX

router = APIRouter(prefix="/api/v1")
_UPLOAD_BUFFER = 1 << 20
MAX_SIGNED_TARGETS_BYTES = 16 << 20


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
def create_token(body: ApiTokenCreate, admin: Admin, cp: CP) -> ApiTokenCreated:
    """Create an operator API token (admin). The token is in this response only."""
    row, secret = issue_api_token(
        cp.db, name=body.name, role=body.role, actor=admin.actor, now=cp.clock()
    )
    return ApiTokenCreated.of(row, secret)


@router.get("/tokens")
def list_tokens(_admin: Admin, cp: CP) -> list[ApiTokenPublic]:
    """Every operator API token, revoked ones included (admin). No secrets or hashes."""
    return [ApiTokenPublic.of(row) for row in api_tokens(cp.db)]


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: str, admin: Admin, cp: CP) -> ApiTokenPublic:
    """Revoke an operator API token at once (admin); it then gets 401. The last active
    admin token cannot be revoked."""
    row = revoke_api_token_audited(cp.db, token_id, actor=admin.actor, now=cp.clock())
    return ApiTokenPublic.of(row)


@router.post("/enrollment-tokens", status_code=status.HTTP_201_CREATED)
def create_enrollment(
    body: EnrollmentTokenCreate, operator: Enroller, cp: CP
) -> EnrollmentTokenCreated:
    """A one-time token that enrolls one device (operator)."""
    row, secret = issue_enrollment_token(
        cp.db,
        tags=list(body.tags),
        lifetime=timedelta(seconds=body.expires_in_seconds),
        actor=operator.actor,
        now=cp.clock(),
    )
    return EnrollmentTokenCreated(id=row.id, token=secret, expires_at=row.expires_at, tags=row.tags)


@router.get("/devices")
def list_devices(
    _viewer: Reader,
    cp: CP,
    cohort: Annotated[str | None, Query(max_length=500)] = None,
) -> list[DevicePublic]:
    """Every device, or a cohort's: ``?cohort=hw=rpi5,ram_mb>=4096`` (the rollout selector)."""
    selector = None if cohort is None else CohortSelector.parse(cohort)
    return [DevicePublic.of(v) for v in fleet_devices.list_devices(cp.db, cohort=selector)]


@router.api_route(
    paths.ENROLL.removeprefix("/api/v1"),
    methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
def enroll_takes_post_only(request: Request) -> None:
    """Before ``/devices/{device_id}``: "enroll" is no device id."""
    raise StarletteHTTPException(
        status.HTTP_405_METHOD_NOT_ALLOWED,
        f"{request.method} {paths.ENROLL} is not a device: enrollment is"
        f" POST {paths.ENROLL} with a one-time enrollment token",
        headers={"Allow": "POST"},
    )


@router.get("/devices/{device_id}")
def show_device(device_id: str, _viewer: Reader, cp: CP) -> DevicePublic:
    (view,) = fleet_devices.list_devices(cp.db, device_id)
    return DevicePublic.of(view)


@router.patch("/devices/{device_id}/tags")
def edit_device_tags(
    device_id: str, body: DeviceTagsPatch, operator: Assigner, cp: CP
) -> DevicePublic:
    """Add ``key=value`` tags (replacing the key's value) and remove tags (``key=value``,
    or ``key`` for any value); at most 32 (operator). Audited as ``device.tag``."""
    view = retag_device(
        cp.db, device_id, add=body.add, remove=body.remove, actor=operator.actor, now=cp.clock()
    )
    return DevicePublic.of(view)


@router.post("/devices/{device_id}/assignment", status_code=status.HTTP_201_CREATED)
def assign_release(
    device_id: str, body: AssignmentCreate, operator: Assigner, cp: CP
) -> AssignmentPublic:
    """The director signs the device's next assignment, naming this release (operator)."""
    record = cp.director.assign(
        device_id=device_id, release_id=body.release_id, actor=operator.actor, now=cp.clock()
    )
    return AssignmentPublic.of(record)


@router.post("/artifacts", status_code=status.HTTP_201_CREATED)
async def upload_artifact(
    request: Request,
    response: Response,
    publisher: Publisher,
    cp: CP,
    name: Annotated[str, Query(max_length=100)],
    kind: Annotated[str, Query(max_length=32)],
    format: Annotated[str, Query(max_length=32)],
    runtime: Annotated[str | None, Query(max_length=64)] = None,
    quantization: Annotated[str | None, Query(max_length=64)] = None,
    x_outpost_custom: Annotated[str | None, Header(max_length=16_384)] = None,
) -> ArtifactPublic:
    """Upload an artifact as the raw request body (release manager).

    The body streams to disk while hashed, up to ``max_artifact_bytes``. The same bytes
    uploaded again return the existing artifact (200 instead of 201).
    Optional custom metadata: ``runtime``, ``quantization`` and a JSON object in the
    ``X-Outpost-Custom`` header (e.g. device constraints); it lands in the TUF target.
    """
    spec = ArtifactSpec.parse(
        name=name,
        kind=kind,
        fmt=format,
        runtime=runtime,
        quantization=quantization,
        custom_json=x_outpost_custom,
    )
    limit = cp.settings.max_artifact_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("Content-Length must be a number")
        if int(declared) > limit:
            raise ArtifactTooLargeError(
                f"artifact of {declared} bytes exceeds the limit of {limit} bytes"
                " (OUTPOST_CP_MAX_ARTIFACT_BYTES); nothing was stored"
            )
    upload = await run_in_threadpool(cp.blobs.start_upload, limit)
    try:
        buffer = bytearray()
        async for chunk in request.stream():
            if upload.length + len(buffer) + len(chunk) > limit:
                upload.write(bytes(buffer) + chunk)  # raises ArtifactTooLargeError, discards
            buffer += chunk
            if len(buffer) >= _UPLOAD_BUFFER:
                await run_in_threadpool(upload.write, bytes(buffer))
                buffer.clear()
        if buffer:
            await run_in_threadpool(upload.write, bytes(buffer))
        sha256 = await run_in_threadpool(upload.finish)
        facts = await run_in_threadpool(check_upload, upload, spec)
        chunks = await run_in_threadpool(prepare_chunks, upload.temp_path)
        artifact, created = await run_in_threadpool(
            partial(
                register_artifact,
                cp.db,
                upload=upload,
                sha256=sha256,
                spec=spec,
                facts=facts,
                actor=publisher.actor,
                now=cp.clock(),
                chunks=chunks,
            )
        )
    except BaseException:
        upload.discard()
        raise
    if not created:
        response.status_code = status.HTTP_200_OK
    return ArtifactPublic.of(artifact)


@router.get("/artifacts")
def list_artifacts(_viewer: Reader, cp: CP) -> list[ArtifactPublic]:
    return [ArtifactPublic.of(a) for a in artifacts.list_artifacts(cp.db)]


@router.get("/artifacts/{artifact_id}")
def show_artifact(artifact_id: str, _viewer: Reader, cp: CP) -> ArtifactPublic:
    return ArtifactPublic.of(get_artifact(cp.db, artifact_id))


@router.post("/releases", status_code=status.HTTP_201_CREATED)
def publish_release(body: ReleaseCreate, publisher: Publisher, cp: CP) -> ReleasePublic:
    """Create a release and sign its artifacts into the image repository (release manager).

    Without the targets key in the offline keys folder the release is stored in state
    ``pending-signature`` until the release manager runs ``outpost-cp sign-targets``.
    """
    release = releases.create_release(
        cp.metadata,
        cp.keyring,
        name=body.name,
        version=body.version,
        artifact_ids=body.artifacts,
        config=body.config,
        actor=publisher.actor,
        now=cp.clock(),
    )
    return ReleasePublic.of(release)


@router.get("/releases")
def list_releases(
    _viewer: Reader,
    cp: CP,
    name: Annotated[str | None, Query(max_length=128, description="only this release")] = None,
) -> list[ReleasePublic]:
    """Releases, newest first; ``?name=assistant`` lists the versions of one."""
    return [ReleasePublic.of(r) for r in releases.list_releases(cp.db, name=name)]


@router.get("/releases/{release_ref}")
def show_release(release_ref: str, _viewer: Reader, cp: CP) -> ReleasePublic:
    """A release by id (``rel_...``) or by ``name@version``, with what a device on each
    earlier release devices run downloads for it (delta updates)."""
    release = releases.show_release(cp.db, release_ref)
    with cp.db.transaction() as session:
        downloads = delta_report(session, release)
    public = ReleasePublic.of(release)
    return public.model_copy(update={"downloads": [ReleaseDownload(**d) for d in downloads]})


@router.get("/releases/{release_ref}/qualification")
def show_qualification(
    release_ref: str,
    _viewer: Reader,
    cp: CP,
    device_class: Annotated[
        str,
        Query(
            pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
            description="the device class (e.g. rpi5, x86-ci)",
        ),
    ],
) -> dict[str, Any]:
    """What devices of ``device_class`` reported from their on-device acceptance check of
    the release (the latest result per device, with every figure), and whether that
    qualifies it (docs/device-tests.md)."""
    return release_qualification(cp.db, release_ref, device_class).as_json()


@router.get("/repository/pending-targets")
def show_pending_targets(publisher: Publisher, cp: CP) -> PendingTargetsPublic:
    """The unsigned next targets metadata that publishes the pending releases (release
    manager). Sign it offline with the targets key (``outpost-cp sign-targets``)."""
    pending = pending_targets(cp.metadata, actor=publisher.actor, now=cp.clock())
    return PendingTargetsPublic(
        version=pending.version,
        metadata=pending.metadata,
        releases=[ReleaseRef(id=r.id, name=r.name, version=r.version) for r in pending.releases],
    )


@router.put("/repository/targets")
async def upload_signed_targets(
    request: Request, publisher: Publisher, cp: CP
) -> SignedTargetsAcceptedPublic:
    """Signed targets metadata from the release manager: checked, then published with
    fresh snapshot and timestamp, and every pending release becomes published."""
    body = await read_bounded_body(request, MAX_SIGNED_TARGETS_BYTES)
    accepted = await run_in_threadpool(
        partial(accept_signed_targets, cp.metadata, body, actor=publisher.actor, now=cp.clock())
    )
    return SignedTargetsAcceptedPublic(
        targets_version=accepted.version,
        published=[ReleaseRef(id=r.id, name=r.name, version=r.version) for r in accepted.releases],
    )


@router.get("/audit")
def read_audit_log(
    _admin: Admin,
    cp: CP,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
) -> list[AuditEntryPublic]:
    """Audit entries, newest first (admin). Page with ``before_id``."""
    return [AuditEntryPublic.of(e) for e in audit.entries(cp.db, limit=limit, before_id=before_id)]
