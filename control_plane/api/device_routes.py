"""Device API: enrollment (one-time token) and the device-signed assignment and status."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from control_plane.api.dependencies import CP, authenticate_device
from control_plane.api.errors import describe_validation_errors
from control_plane.errors import InvalidRequestError
from control_plane.fleet.devices import record_seen
from control_plane.fleet.enrollment import enroll
from control_plane.fleet.status import record_status
from protocol import paths
from protocol.messages import EnrollRequest, EnrollResponse, StatusReport, StatusReportAck

router = APIRouter()


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
    try:
        report = StatusReport.model_validate_json(body)
    except ValidationError as e:
        if any(err.get("type") == "json_invalid" for err in e.errors()):
            raise InvalidRequestError("status report is not valid JSON") from e
        raise InvalidRequestError(
            f"invalid status report: {describe_validation_errors(e.errors())}"
        ) from e
    return await run_in_threadpool(record_status, cp.db, device_id, report, cp.clock())
