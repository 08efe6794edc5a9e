"""Only ``GET /healthz`` answers without the API token; everything else is 401.

The app is assembled as the daemon assembles it: the model routes plus the real RAG and
vision routers (``ReleaseServing.routers``) and RAG-grounded chat; every method of every
route is tried, with and without a body, so a route that reads its input before the token
check shows up here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge_agent.api import create_local_api
from edge_agent.runtime import ModelRegistry
from edge_agent.serving import ReleaseServing
from tests.agent_api.conftest import TOKEN, settings_for_tests

# Each body shape: the request's keyword arguments and the headers it needs.
BODIES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "no body": ({}, {}),
    "json": ({"json": {"model": "smollm2", "messages": [], "input": "x", "question": "x"}}, {}),
    "multipart": ({"files": {"file": ("x.png", b"\x89PNG\r\n\x1a\n", "image/png")}}, {}),
    "raw": ({"content": b"\x89PNG\r\n\x1a\n"}, {"Content-Type": "image/png"}),
}


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    settings = settings_for_tests(state_dir=tmp_path)
    registry = ModelRegistry(settings)
    serving = ReleaseServing(registry, settings)
    return create_local_api(
        registry,
        settings,
        api_token=TOKEN,
        status=lambda: {"updates": {}},
        extra_routers=serving.routers(),
        chat_grounding=serving.rag,
    )


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route FastAPI serves, path parameters filled in.

    Read from the app's OpenAPI document: ``app.routes`` lists included routers as one
    opaque entry each, so a sweep over it alone would test ``/healthz`` and nothing else."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        filled = path.replace("{", "").replace("}", "")
        found += [(method.upper(), filled) for method in sorted(operations)]
    return found


def test_the_sweep_covers_the_rag_and_vision_routes_and_posts(app: FastAPI) -> None:
    swept = routes(app)
    paths = {path for _, path in swept}
    assert {"/v1/rag/query", "/v1/rag/ingest", "/v1/vision/classify"} <= paths
    assert {"/v1/chat/completions", "/v1/embeddings"} <= paths
    assert {method for method, _ in swept} >= {"GET", "POST", "DELETE"}


@pytest.mark.parametrize("body", BODIES, ids=list(BODIES))
def test_no_route_but_healthz_answers_without_the_token(app: FastAPI, body: str) -> None:
    client = TestClient(app)
    assert client.get("/healthz").status_code == 200
    for path in ("/openapi.json", "/docs", "/redoc"):  # no schema to read without a token
        response = client.get(path)
        assert response.status_code in (401, 404), f"{path} answered {response.status_code}"
        assert "paths" not in response.text, f"{path} leaks the API schema"
    for method, path in routes(app):
        if (method, path) == ("GET", "/healthz"):
            continue
        kwargs, extra = BODIES[body] if method not in ("GET", "HEAD") else ({}, {})
        for token in ({}, {"Authorization": "Bearer not-the-token-0123456789"}):
            response = client.request(method, path, **kwargs, headers={**extra, **token})
            where = f"{method} {path} ({body}, {'wrong token' if token else 'no token'})"
            assert response.status_code == 401, f"{where} answered {response.status_code}"
