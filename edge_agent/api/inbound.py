"""What every route of the local API does with a request before any model work: read its
JSON body under the size cap, validate it, and turn whatever went wrong into an agent
error that says what was wrong (the OpenAI and the Ollama surfaces share these)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from edge_agent.errors import (
    AgentError,
    BadRequestError,
    ClientGoneError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)

__all__ = ["InvalidParameterError", "as_agent_error", "describe_validation", "json_body"]

log = logging.getLogger("edge_agent.api.app")

W = TypeVar("W", bound=BaseModel)


class InvalidParameterError(BadRequestError):
    """A request field has a wrong type or value; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def describe_validation(errors: Sequence[Any], *, skip_body: bool) -> tuple[str, str | None]:
    parts = []
    first_param: str | None = None
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if skip_body and loc and loc[0] == "body":
            loc = loc[1:]
        param = ".".join(loc) or None
        first_param = first_param or param
        parts.append(f"{param}: {err.get('msg')}" if param else str(err.get("msg")))
    return "invalid request: " + "; ".join(parts), first_param


def as_agent_error(exc: Exception) -> AgentError:
    if isinstance(exc, AgentError):
        return exc
    if isinstance(exc, RequestValidationError):
        message, param = describe_validation(exc.errors(), skip_body=True)
        return InvalidParameterError(message, param)
    if isinstance(exc, ClientDisconnect):  # hung up while sending its request body
        return ClientGoneError("the client went away while sending its request")
    log.exception("unexpected error in the local API", exc_info=exc)
    return AgentError(f"internal error ({type(exc).__name__}); see the agent log")


def json_body(
    model: type[W], *, any_content_type: bool = False
) -> Callable[[Request], Awaitable[W]]:
    """A dependency that reads at most ``max_request_bytes`` of JSON, validated as ``model``;
    a body sent with a Content-Type that does not say JSON is refused (415) unless
    ``any_content_type``."""

    async def parse(request: Request) -> W:
        max_bytes: int = request.app.state.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise _too_large(int(declared), max_bytes)
        content_type = request.headers.get("content-type", "application/json")
        if not any_content_type and "json" not in content_type.lower():
            raise UnsupportedMediaError(
                f"request body must be JSON (Content-Type: application/json), got {content_type!r}"
            )
        received = bytearray()
        async for chunk in request.stream():
            received += chunk
            if len(received) > max_bytes:
                raise _too_large(len(received), max_bytes)
        if not received:
            raise InvalidParameterError("request body is empty: send a JSON object")
        try:
            return model.model_validate_json(bytes(received))
        except ValidationError as e:
            errors = e.errors()
            if errors and errors[0]["type"] == "json_invalid":
                raise InvalidParameterError(
                    f"request body is not valid JSON: {errors[0]['msg']}"
                ) from e
            if errors and errors[0]["type"] == "model_type" and not errors[0]["loc"]:
                raise InvalidParameterError("request body must be a JSON object") from e
            message, param = describe_validation(errors, skip_body=False)
            raise InvalidParameterError(message, param) from e

    return parse


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body is {size}+ bytes; this agent accepts at most {limit} bytes "
        f"(setting max_request_bytes)"
    )
