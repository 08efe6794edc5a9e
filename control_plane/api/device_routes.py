"""Device API: enrollment (one-time token) and the device-signed assignment, status and
telemetry."""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from control_plane.api.dependencies import CP, authenticate_device
from control_plane.api.errors import describe_validation_errors
from control_plane.errors import InvalidRequestError
from control_plane.fleet.devices import record_seen
from control_plane.fleet.enrollment import enroll
from control_plane.fleet.status import record_status
from control_plane.releases.qualification import record_acceptance_report
from protocol import paths
from protocol.messages import (
    AcceptanceReport,
    AcceptanceReportAck,
    EnrollRequest,
    EnrollResponse,
    StatusReport,
    StatusReportAck,
)
from protocol.telemetry import TelemetryAck, TelemetryReport

router = APIRouter()
M = TypeVar("M", bound=BaseModel)


@router.post(paths.ENROLL, status_code=status.HTTP_201_CREATED)
def enroll_device(body: EnrollRequest, cp: CP) -> EnrollResponse:
    """Enroll a device: the one-time token is the credential; the key becomes the device's."""
    device = enroll(cp.db, body, cp.clock())
    return EnrollResponse(device_id=device.id)


@router.get(
    paths.DEVICE_ASSIGNMENT,
    responses={
        200: {"description": "the newest signed assignment (a SignedEnvelope)"},
        204: {"description": "nothing assigned yet"},
    },
)
async def current_assignment(request: Request, cp: CP) -> Response:
    """The device's newest assignment, re-signed when past half its lifetime."""
    device_id, _ = await authenticate_device(request, cp)
    now = cp.clock()

    def work() -> str | None:
        record = cp.director.current(device_id, now)
        record_seen(cp.db, device_id, now)
        return None if record is None else record.envelope

    envelope = await run_in_threadpool(work)
    if envelope is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return Response(content=envelope, media_type="application/json")


@router.post(paths.DEVICE_STATUS)
async def report_status(request: Request, cp: CP) -> StatusReportAck:
    """Store an install-status report once (a repeated report_id answers duplicate=true)."""
    device_id, body = await authenticate_device(request, cp)
    report = parse_device_body(StatusReport, body, "status report")
    return await run_in_threadpool(record_status, cp.db, device_id, report, cp.clock())


@router.post(
    paths.DEVICE_TELEMETRY,
    responses={429: {"description": "over the device's telemetry rate: keep it, retry later"}},
)
async def report_telemetry(request: Request, cp: CP) -> TelemetryAck:
    """Store a telemetry report once (a repeated report_id answers duplicate=true); a
    device over its rate gets 429 and keeps the report queued."""
    device_id, body = await authenticate_device(request, cp)
    try:
        report = parse_device_body(TelemetryReport, body, "telemetry report")
    except InvalidRequestError:
        cp.telemetry.count_invalid()
        raise
    return await run_in_threadpool(cp.telemetry.ingest, device_id, report, cp.clock())


@router.post(paths.DEVICE_ACCEPTANCE)
async def report_acceptance(request: Request, cp: CP) -> AcceptanceReportAck:
    """Store the numbers of an acceptance-suite run on the device, about the release it
    serves (a repeated report_id answers duplicate=true)."""
    device_id, body = await authenticate_device(request, cp)
    report = parse_device_body(AcceptanceReport, body, "acceptance report")
    return await run_in_threadpool(record_acceptance_report, cp.db, device_id, report, cp.clock())


def parse_device_body(model: type[M], body: bytes, what: str) -> M:
    """``body`` as ``model``, or a 422 that names each bad field (never echoing values)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        if any(err.get("type") == "json_invalid" for err in e.errors()):
            raise InvalidRequestError(f"{what} is not valid JSON") from e
        raise InvalidRequestError(
            f"invalid {what}: {describe_validation_errors(e.errors())}"
        ) from e
