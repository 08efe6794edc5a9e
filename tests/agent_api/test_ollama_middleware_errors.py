"""Errors answered before any route (body too large, the remote config's request rate) come
in the shape of the surface a client spoke to: Ollama's ``{"error": "<message>"}`` under
``/api/``, the OpenAI error object under ``/v1/``. Ollama's clients show a non-string
``error`` as a dump of the whole object."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edge_agent.remote_config import LiveConfig
from edge_agent.remote_config.live import RequestRateLimiter
from edge_agent.remote_config.local_api import RemoteConfigMiddleware
from protocol.http_limits import BodySizeLimit


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"read": len(await request.body())})


def _app(limiter: RequestRateLimiter | None = None) -> Starlette:
    app = Starlette(routes=[Route(p, _echo, methods=["POST"]) for p in ("/api/chat", "/v1/x")])
    app.add_middleware(
        RemoteConfigMiddleware, live=LiveConfig(rate_limiter=limiter), max_body_bytes=1024
    )
    app.add_middleware(
        BodySizeLimit,
        default_max_bytes=1024,
        error_type="invalid_request_error",
        flat_error_prefixes=("/api/",),
    )
    return app


def _post(app: Starlette, path: str, body: bytes) -> httpx.Response:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return await client.post(path, content=body)

    return asyncio.run(post())


def test_a_body_over_the_limit_is_413_in_each_surfaces_shape() -> None:
    app = _app()
    ollama = _post(app, "/api/chat", b"x" * 2048)
    assert ollama.status_code == 413
    message = ollama.json()["error"]
    assert isinstance(message, str) and "exceeds the limit" in message
    openai_shaped = _post(app, "/v1/x", b"x" * 2048)
    assert openai_shaped.status_code == 413
    assert openai_shaped.json()["error"]["type"] == "invalid_request_error"
    assert (_post(app, "/api/chat", b"{}")).json() == {"read": 2}


def test_the_request_rate_limit_is_429_in_each_surfaces_shape() -> None:
    limiter = RequestRateLimiter(clock=lambda: 0.0)
    limiter.configure(60, 1)
    app = _app(limiter)
    assert (_post(app, "/api/chat", b"{}")).status_code == 200  # the one token
    ollama = _post(app, "/api/chat", b"{}")
    assert ollama.status_code == 429
    message = ollama.json()["error"]
    assert isinstance(message, str) and "60 requests per minute" in message
    openai_shaped = _post(app, "/v1/x", b"{}")
    assert openai_shaped.status_code == 429 and "message" in openai_shaped.json()["error"]
