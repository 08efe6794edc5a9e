"""What the control plane's HTTP surface allows before any route runs.

- request bodies are capped per route (``protocol.http_limits.BodySizeLimit``), before
  authentication and parsing: artifact uploads stream to disk up to
  ``max_artifact_bytes``, signed targets metadata up to 16 MiB, device messages 64 KiB,
  everything else ``max_request_bytes`` (1 MiB);
- the API schema (``/openapi.json``, ``/docs``) is off unless ``OUTPOST_CP_API_DOCS`` is
  set, and then needs an operator API token.
"""

from __future__ import annotations

import json
import re

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from control_plane.api.dependencies import MAX_DEVICE_BODY_BYTES, Reader
from control_plane.api.operator_routes import MAX_SIGNED_TARGETS_BYTES
from control_plane.errors import NotFoundError
from control_plane.settings import ControlPlaneSettings
from protocol import paths
from protocol.http_limits import BodySizeLimit, RouteBodyLimit

__all__ = ["body_limits", "install_http_surface"]

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"


def body_limits(settings: ControlPlaneSettings) -> list[RouteBodyLimit]:
    """The routes whose bodies may be larger or must be smaller than the default."""
    return [
        RouteBodyLimit("POST", "/api/v1/artifacts", settings.max_artifact_bytes),
        RouteBodyLimit("PUT", "/api/v1/repository/targets", MAX_SIGNED_TARGETS_BYTES),
        RouteBodyLimit("POST", re.escape(paths.ENROLL), MAX_DEVICE_BODY_BYTES),
        RouteBodyLimit("POST", r"/api/v1/device/.*", MAX_DEVICE_BODY_BYTES),
    ]


def install_http_surface(app: FastAPI, settings: ControlPlaneSettings) -> None:
    """Add the body limits and the (guarded or absent) schema routes to ``app``; the app
    must have been built with ``openapi_url=None`` and ``docs_url=None``."""
    app.add_middleware(
        BodySizeLimit,
        default_max_bytes=settings.max_request_bytes,
        routes=body_limits(settings),
    )
    if not settings.api_docs:

        @app.get(OPENAPI_PATH, include_in_schema=False)
        @app.get(DOCS_PATH, include_in_schema=False)
        def api_docs_off() -> None:
            raise NotFoundError(
                "the API schema is not served here; set OUTPOST_CP_API_DOCS=true to serve"
                " it to operators (it then needs an API token)"
            )

        return

    @app.get(OPENAPI_PATH, include_in_schema=False)
    def openapi_schema(_viewer: Reader) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(DOCS_PATH, include_in_schema=False)
    def api_docs(_viewer: Reader) -> HTMLResponse:
        # the schema is inlined: the browser would fetch /openapi.json without the token
        spec = json.dumps(app.openapi()).replace("</", "<\\/")
        return HTMLResponse(_DOCS_PAGE.replace("__SPEC__", spec))


_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Outpost control plane API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({spec: __SPEC__, dom_id: "#swagger-ui"});</script>
</body></html>
"""
