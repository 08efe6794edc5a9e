from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from edge_agent.errors import AgentError
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.vision.api import vision_router
from edge_agent.vision.provider import ReleaseVisionModels
from edge_agent.vision.spec import PreprocessSpec, VisionModelSpec
from tests.vision.tiny_models import COLOUR_LABELS, colour_classifier

MAX_UPLOAD = 200_000
MAX_PIXELS = 1_000_000

COLOUR_SPEC = VisionModelSpec(
    task="classify",
    preprocess=PreprocessSpec(size=(8, 8), resize="stretch", color="rgb", layout="nchw"),
    labels=COLOUR_LABELS,
)


def png_bytes(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def colour_release(tmp: Path) -> InstalledRelease:
    path = colour_classifier(tmp / "colour.onnx")
    artifact = InstalledArtifact(
        name="colour", kind="vision-classify", format="onnx", sha256="0" * 64, length=1, path=path
    )
    return InstalledRelease(
        release_id="r1",
        release_name="test",
        release_version="1",
        assignment_version=1,
        artifacts=(artifact,),
        config={"vision": {"colour": COLOUR_SPEC.to_config()}},
    )


def app_with(provider: ReleaseVisionModels, *, max_upload: int = MAX_UPLOAD) -> FastAPI:
    """An app shaped like the local API: one handler maps agent errors to statuses."""
    app = FastAPI()

    @app.exception_handler(AgentError)
    async def _agent_error(_: Request, exc: AgentError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.http_status,
            content={"error": {"message": str(exc), "type": exc.error_type}},
        )

    app.include_router(
        vision_router(provider, max_upload_bytes=max_upload, max_image_pixels=MAX_PIXELS)
    )
    return app


@pytest.fixture(scope="module")
def colour_provider(tmp_path_factory: pytest.TempPathFactory) -> ReleaseVisionModels:
    return ReleaseVisionModels(colour_release(tmp_path_factory.mktemp("colour")))


@pytest.fixture(scope="module")
def client(colour_provider: ReleaseVisionModels) -> Iterator[TestClient]:
    with TestClient(app_with(colour_provider)) as c:
        yield c
