"""One place where errors become HTTP responses: ``{"error": {"message", "type"}}``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from control_plane.errors import ControlPlaneError

log = logging.getLogger("control_plane")


def error_response(status: int, message: str, error_type: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": error_type}},
        headers=headers,
    )


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """A readable summary that names each bad field (never echoing its value)."""
    parts = []
    for err in errors[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    async def on_control_plane_error(_request: Request, exc: Exception) -> JSONResponse:
        exc = cast(ControlPlaneError, exc)
        if exc.http_status >= 500:
            log.error("%s: %s", type(exc).__name__, exc)
        return error_response(exc.http_status, str(exc), exc.error_type)

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        errors = cast(RequestValidationError | ValidationError, exc).errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "request body is not valid JSON", "invalid_json")
        return error_response(422, describe_validation_errors(errors), "invalid_request")

    async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
        exc = cast(StarletteHTTPException, exc)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "no such endpoint"
        response = error_response(exc.status_code, message, "http_error")
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal error; see the control-plane log", "internal_error")

    app.add_exception_handler(ControlPlaneError, on_control_plane_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
