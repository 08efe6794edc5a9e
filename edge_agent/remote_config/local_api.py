"""The local API under the remote config: request-rate limit and chat defaults.

Both are ASGI middleware around the local API (so the routes stay as they are):
:class:`RemoteConfigMiddleware` refuses requests over the configured rate (429, before
any model work; ``/healthz`` is never limited), and fills in the configured defaults of a
chat or completion request body that does not set them (:func:`with_chat_defaults`,
pure): ``max_tokens``, ``temperature``, ``top_p``, and the system prompt as the first
message of a chat that brings none. A request that sets a value keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_agent.remote_config.live import ChatDefaults, LiveConfig, RateLimitedError

__all__ = ["RemoteConfigMiddleware", "with_chat_defaults"]

CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/v1/completions"
_UNLIMITED = frozenset({"/healthz"})
OLLAMA_PREFIX = "/api/"  # Ollama's clients read errors as {"error": "<message>"}


def with_chat_defaults(
    body: Mapping[str, Any], defaults: ChatDefaults, *, chat: bool
) -> dict[str, Any]:
    """``body`` with the defaults it does not set itself (neither argument changes)."""
    result = dict(body)
    if (
        defaults.max_tokens is not None
        and result.get("max_tokens") is None
        and (not chat or result.get("max_completion_tokens") is None)
    ):
        result["max_tokens"] = defaults.max_tokens
    if defaults.temperature is not None and "temperature" not in result:
        result["temperature"] = defaults.temperature
    if defaults.top_p is not None and "top_p" not in result:
        result["top_p"] = defaults.top_p
    messages = result.get("messages")
    if chat and defaults.system_prompt and isinstance(messages, list):
        has_system = any(
            isinstance(m, Mapping) and m.get("role") in ("system", "developer") for m in messages
        )
        if not has_system:
            result["messages"] = [{"role": "system", "content": defaults.system_prompt}, *messages]
    return result


class RemoteConfigMiddleware:
    """Rate limit and chat defaults from :class:`LiveConfig`, read per request."""

    def __init__(self, app: ASGIApp, *, live: LiveConfig, max_body_bytes: int) -> None:
        self.app = app
        self.live = live
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNLIMITED:
            await self.app(scope, receive, send)
            return
        try:
            self.live.rate_limiter.admit()
        except RateLimitedError as e:
            await _refuse(send, e, flat=scope["path"].startswith(OLLAMA_PREFIX))
            return
        path = scope["path"]
        defaults = self.live.chat_defaults()
        if (
            scope["method"] != "POST"
            or path not in (CHAT_PATH, COMPLETION_PATH)
            or (defaults == ChatDefaults())
        ):
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is None or length > self.max_body_bytes:
            await self.app(scope, receive, send)  # the route applies its own limits
            return
        raw = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        body = bytes(raw)
        if isinstance(parsed, dict):
            body = json.dumps(with_chat_defaults(parsed, defaults, chat=path == CHAT_PATH)).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, error: RateLimitedError, *, flat: bool) -> None:
    shaped: object = str(error) if flat else {"message": str(error), "type": error.error_type}
    body = json.dumps({"error": shaped}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.http_status,
            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")],
        }
    )
    await send({"type": "http.response.body", "body": body})
