"""Only ``GET /healthz`` answers without the API token; everything else is 401."""

from __future__ import annotations

from pathlib import Path

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from edge_agent.api import create_local_api
from edge_agent.runtime import ModelRegistry
from tests.agent_api.conftest import TOKEN, settings_for_tests


def test_no_route_but_healthz_answers_without_the_token(tmp_path: Path) -> None:
    settings = settings_for_tests(state_dir=tmp_path)
    app = create_local_api(ModelRegistry(settings), settings, api_token=TOKEN)
    client = TestClient(app)
    assert client.get("/healthz").status_code == 200
    paths = {"/openapi.json", "/docs", "/redoc"}
    paths |= {r.path for r in app.routes if isinstance(r, APIRoute) and "GET" in r.methods}
    for path in sorted(paths - {"/healthz"}):
        response = client.get(path)
        assert response.status_code in (401, 404), f"{path} answered {response.status_code}"
        if response.status_code == 404:
            assert "paths" not in response.text, f"{path} leaks the API schema"
