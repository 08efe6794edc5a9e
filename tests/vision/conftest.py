from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge_agent.api import create_local_api
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.runtime import ModelRegistry
from edge_agent.settings import AgentSettings
from edge_agent.vision.api import vision_router
from edge_agent.vision.provider import ReleaseVisionModels
from edge_agent.vision.spec import PreprocessSpec, VisionModelSpec
from tests.vision.tiny_models import COLOUR_LABELS, colour_classifier

MAX_UPLOAD = 200_000
MAX_PIXELS = 1_000_000
TOKEN = "vision-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

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
    """The agent's real local API (token check, error handler) with the vision router."""
    settings = AgentSettings(max_upload_bytes=max_upload, max_image_pixels=MAX_PIXELS)
    return create_local_api(
        ModelRegistry(settings),
        settings,
        api_token=TOKEN,
        extra_routers=[
            vision_router(provider, max_upload_bytes=max_upload, max_image_pixels=MAX_PIXELS)
        ],
    )


@pytest.fixture(scope="module")
def colour_provider(tmp_path_factory: pytest.TempPathFactory) -> ReleaseVisionModels:
    return ReleaseVisionModels(colour_release(tmp_path_factory.mktemp("colour")))


@pytest.fixture(scope="module")
def client(colour_provider: ReleaseVisionModels) -> Iterator[TestClient]:
    with TestClient(app_with(colour_provider), headers=AUTH) as c:
        yield c
