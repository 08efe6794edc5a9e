"""Real models from the cache (EfficientNet-Lite0 FP32/INT8, text orientation, BlazeFace)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import pytest

from converters.__main__ import main as converters_main
from converters.demo import demo_release
from converters.sources import cache_root
from edge_agent.vision.decode import decode_image
from edge_agent.vision.provider import ReleaseVisionModels
from tests.live_server import serving
from tests.vision.conftest import AUTH, app_with

pytestmark = pytest.mark.slow

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="session")
def model_cache() -> Path:
    assert converters_main(["prepare"]) == 0
    return cache_root()


@pytest.fixture(scope="session")
def provider(model_cache: Path) -> ReleaseVisionModels:
    return ReleaseVisionModels(demo_release(model_cache))


def _image(cache: Path, name: str) -> bytes:
    return (cache / "images" / name).read_bytes()


@pytest.mark.parametrize("model", ["efficientnet-lite0-fp32", "efficientnet-lite0-int8"])
def test_chelsea_is_a_cat(provider: ReleaseVisionModels, model_cache: Path, model: str) -> None:
    img = decode_image(_image(model_cache, "chelsea.png"), max_pixels=10**7)
    top = provider.vision_model(model, "classify").classify(img.pixels, 3).predictions[0]
    assert top.index in CAT_CLASSES, top


def test_coffee_is_espresso_in_int8(provider: ReleaseVisionModels, model_cache: Path) -> None:
    img = decode_image(_image(model_cache, "coffee.png"), max_pixels=10**7)
    preds = provider.vision_model("efficientnet-lite0-int8", "classify").classify(img.pixels, 5)
    assert "espresso" in [p.label for p in preds.predictions]


def test_blazeface_on_litert_finds_the_astronauts_face(
    provider: ReleaseVisionModels, model_cache: Path
) -> None:
    img = decode_image(_image(model_cache, "astronaut.png"), max_pixels=10**7)
    model = provider.vision_model(None, "detect")
    assert model.backend.name == "litert"
    (face,) = model.detect(img.pixels).detections
    x0, y0, x1, y1 = face.box
    assert face.score > 0.8
    # her face sits around x 180-270, y 80-175 of the 512x512 photo
    assert 150 < x0 < 210 and 230 < x1 < 300 and 50 < y0 < 110 and 150 < y1 < 210


def test_no_face_in_the_cat_photo(provider: ReleaseVisionModels, model_cache: Path) -> None:
    img = decode_image(_image(model_cache, "chelsea.png"), max_pixels=10**7)
    assert provider.vision_model(None, "detect").detect(img.pixels).detections == ()


@pytest.mark.parametrize("model", ["text-orientation-fp32", "text-orientation-int8"])
def test_text_orientation_sees_each_rotation(
    provider: ReleaseVisionModels, model_cache: Path, model: str
) -> None:
    page = decode_image(_image(model_cache, "page.png"), max_pixels=10**7).pixels
    classifier = provider.vision_model(model, "classify")
    rotations = {
        "0": page,
        "90": cv2.rotate(page, cv2.ROTATE_90_CLOCKWISE),
        "180": cv2.rotate(page, cv2.ROTATE_180),
        "270": cv2.rotate(page, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    for expected, img in rotations.items():
        assert classifier.classify(img, 1).predictions[0].label == expected


@pytest.fixture(scope="module")
def live(provider: ReleaseVisionModels) -> Iterator[str]:
    with serving(app_with(provider, max_upload=2_000_000)) as url:
        yield url


def test_http_classify_and_detect_over_loopback(live: str, model_cache: Path) -> None:
    with httpx.Client(base_url=live, headers=AUTH, timeout=30) as client:
        r = client.post(
            "/v1/vision/classify",
            files={"file": ("chelsea.png", _image(model_cache, "chelsea.png"), "image/png")},
            data={"model": "efficientnet-lite0-int8", "top_k": "3"},
        )
        assert r.status_code == 200
        assert r.json()["predictions"][0]["index"] in CAT_CLASSES
        r = client.post(
            "/v1/vision/detect",
            files={"file": ("a.png", _image(model_cache, "astronaut.png"), "image/png")},
        )
        assert r.status_code == 200
        (face,) = r.json()["detections"]
        assert face["label"] == "face" and 150 < face["box"]["x_min"] < 210


def test_huge_streamed_upload_is_refused_before_it_is_all_sent(live: str) -> None:
    host, port = live.removeprefix("http://").split(":")
    header = (
        "POST /v1/vision/classify HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    chunk = b"\x00" * 65536
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(header + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        reply = b""
        try:
            for _ in range(2000):  # would be 131 MB
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                sock.settimeout(0.0)
                with contextlib.suppress(BlockingIOError):
                    reply += sock.recv(4096)
                sock.settimeout(10)
                if reply:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        while b"\r\n\r\n" not in reply:
            more = sock.recv(4096)
            if not more:
                break
            reply += more
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 60_000_000  # the cap is 2 MB; the server answered long before the end
