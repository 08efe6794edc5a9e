"""Limits every Outpost HTTP server enforces before a request reaches a route (pure ASGI).

Both servers (the control plane and the agent's local API) take the same values and the
same request-body guard, so a hostile client meets one set of rules everywhere:

- headers (request line included) are capped in size and must arrive within a deadline,
  an idle or half-open connection is closed, and a server holds a bounded number of
  connections (``protocol.http_server`` applies these in the HTTP parser, where no route
  can be reached first);
- a request body is capped per route by :class:`BodySizeLimit`, before authentication and
  before any parsing: a declared ``Content-Length`` over the limit is refused with 413
  without reading a byte, a chunked body is counted as it streams and refused once over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_HTTP_LIMITS",
    "BodySizeLimit",
    "HttpLimits",
    "RequestBodyTooLarge",
    "RouteBodyLimit",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MIB = 1 << 20


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP server tolerates from a client.

    ``max_header_bytes``: the request line and headers of one request, together.
    ``header_timeout_seconds``: from connection (or the end of the previous response) to
    the end of the headers; slow or endless headers are cut off after it.
    ``body_idle_timeout_seconds``: the longest silence while a request body is expected.
    ``keep_alive_seconds``: how long an idle kept-alive connection stays open.
    ``max_connections``: open connections; more are answered 503 and closed at once.
    ``tcp_user_timeout_seconds``: unacknowledged data older than this drops the
    connection (a peer that vanished mid-response), with TCP keepalive probes on idle ones.
    """

    max_header_bytes: int = 64 * 1024
    header_timeout_seconds: float = 10.0
    body_idle_timeout_seconds: float = 30.0
    keep_alive_seconds: int = 5
    max_connections: int = 1024
    tcp_user_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "max_header_bytes",
            "header_timeout_seconds",
            "body_idle_timeout_seconds",
            "keep_alive_seconds",
            "max_connections",
            "tcp_user_timeout_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"HttpLimits.{name} must be positive")


DEFAULT_HTTP_LIMITS = HttpLimits()


@dataclass(frozen=True)
class RouteBodyLimit:
    """A body limit for the requests whose method is ``method`` and whose path matches
    ``path_pattern`` (a regular expression matched against the whole path)."""

    method: str
    path_pattern: str
    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError("RouteBodyLimit.max_bytes must not be negative")

    def matches(self, method: str, path: str) -> bool:
        return method == self.method.upper() and re.fullmatch(self.path_pattern, path) is not None


class RequestBodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes its limit; the 413 answer has
    already been sent by then, so whoever catches it only has to stop."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


def _describe(limit: int) -> str:
    if limit >= MIB and limit % MIB == 0:
        return f"{limit} bytes ({limit // MIB} MiB)"
    return f"{limit} bytes"


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over their route's limit with 413.

    It runs before routing, authentication and parsing. A ``Content-Length`` over the
    limit (or malformed) is answered at once without reading the body; a body without
    one (chunked) is counted while the app reads it, and the 413 goes out as soon as it
    passes the limit (the app's ``receive`` then raises :class:`RequestBodyTooLarge`, and
    anything the app still sends is dropped). The answer carries ``Connection: close``
    so the server stops reading the rest. The error body is
    ``{"error": {"message", "type", **error_fields}}`` (each server's own error shape),
    or ``{"error": "<message>"}`` under ``flat_error_prefixes`` (a second API surface
    whose clients expect that shape, such as Ollama's ``/api/``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_max_bytes: int = MIB,
        routes: Sequence[RouteBodyLimit] = (),
        error_type: str = "request_too_large",
        error_fields: Mapping[str, object] | None = None,
        flat_error_prefixes: Sequence[str] = (),
    ) -> None:
        if default_max_bytes < 0:
            raise ValueError("default_max_bytes must not be negative")
        self.app = app
        self.default_max_bytes = default_max_bytes
        self.routes = tuple(routes)
        self.error_type = error_type
        self.error_fields = dict(error_fields or {})
        self.flat_error_prefixes = tuple(flat_error_prefixes)

    def limit_for(self, method: str, path: str) -> int:
        """The body limit of one request (the first matching route, else the default)."""
        for route in self.routes:
            if route.matches(method, path):
                return route.max_bytes
        return self.default_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared == -1:
            await self._refuse(scope, send, 400, "Content-Length must be one non-negative integer")
            return
        if declared is not None and declared > limit:
            await self._refuse(
                scope,
                send,
                413,
                f"request body of {declared} bytes exceeds the limit of {_describe(limit)}"
                f" for {scope['method']} {scope['path']}; nothing was read",
            )
            return
        await self._guarded(scope, receive, send, limit)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                raise RequestBodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await self._refuse(
                        scope,
                        send,
                        413,
                        f"request body exceeds the limit of {_describe(limit)}"
                        f" for {scope['method']} {scope['path']}; nothing was stored",
                    )
                    raise RequestBodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except RequestBodyTooLarge:
            if not refused:
                raise

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str) -> None:
        error: object = {"message": message, "type": self.error_type, **self.error_fields}
        if str(scope["path"]).startswith(self.flat_error_prefixes):
            error = message
        body = json.dumps({"error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent, -1 when malformed or repeated."""
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
    if not values:
        return None
    if len(values) > 1 or not values[0].strip().isdigit():
        return -1
    return int(values[0])
