"""Remote-config API: operators change scope layers and read a device's effective
config; devices fetch their signed config and report what they did with it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response, status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from control_plane.api.dependencies import CP, Assigner, Reader, authenticate_device
from control_plane.api.errors import describe_validation_errors
from control_plane.errors import InvalidRequestError
from control_plane.remote_config.core import Scope
from control_plane.remote_config.wire import (
    ConfigChangePublic,
    ConfigLayerPublic,
    DeviceConfigPublic,
)
from protocol import paths
from protocol.remote_config import ConfigReport, ConfigReportAck, remote_config_json_schema

router = APIRouter()


@router.get("/api/v1/config/schema")
def config_schema(_viewer: Reader) -> dict[str, Any]:
    """The JSON Schema every layer and every effective config must satisfy."""
    return remote_config_json_schema()


@router.patch("/api/v1/config/scopes/{scope}")
def change_config(
    scope: str,
    body: Annotated[Any, Body(description="a JSON merge patch (RFC 7386); null removes")],
    operator: Assigner,
    cp: CP,
) -> ConfigChangePublic:
    """Merge ``body`` into the layer of ``scope`` (``fleet``, ``tag:k=v``, ``device:ID``)
    as its next version (operator; audited). A result that does not fit the schema is
    refused whole with 422, naming each JSON pointer and rule."""
    change = cp.remote_config.set(Scope.parse(scope), body, actor=operator.actor, now=cp.clock())
    return ConfigChangePublic.of(change)


@router.get("/api/v1/config/history")
def config_history(
    _viewer: Reader,
    cp: CP,
    scope: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ConfigLayerPublic]:
    """Layer versions, newest first."""
    parsed = None if scope is None else Scope.parse(scope)
    return [ConfigLayerPublic.of(layer) for layer in cp.remote_config.history(parsed, limit=limit)]


@router.get("/api/v1/devices/{device_id}/config")
def device_config(device_id: str, _viewer: Reader, cp: CP) -> DeviceConfigPublic:
    """A device's effective config, the layers behind it, the version issued to it and
    what it last reported (applied, rejected or reverted, with the reason)."""
    return DeviceConfigPublic.of(cp.remote_config.view(device_id))


@router.get(
    paths.DEVICE_CONFIG,
    responses={
        200: {"description": "the newest signed config document (a SignedEnvelope)"},
        204: {"description": "no layer applies to this device"},
    },
)
async def current_device_config(request: Request, cp: CP) -> Response:
    """The device's signed effective config (device-signed request)."""
    device_id, _ = await authenticate_device(request, cp)
    now = cp.clock()

    def work() -> str | None:
        record = cp.remote_config.current(device_id, now)
        return None if record is None else record.envelope

    envelope = await run_in_threadpool(work)
    if envelope is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return Response(content=envelope, media_type="application/json")


@router.post(paths.DEVICE_CONFIG_STATUS)
async def report_device_config(request: Request, cp: CP) -> ConfigReportAck:
    """Store a device's config report once (a repeated report_id answers duplicate)."""
    device_id, body = await authenticate_device(request, cp)
    try:
        report = ConfigReport.model_validate_json(body)
    except ValidationError as e:
        raise InvalidRequestError(
            f"invalid config report: {describe_validation_errors(e.errors())}"
        ) from e
    return await run_in_threadpool(cp.remote_config.record_report, device_id, report, cp.clock())
