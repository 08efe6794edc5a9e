"""The vision HTTP routes with a tiny real ONNX model: behaviour, bad input, keeps serving.

They are mounted in the agent's real local API (``create_local_api``), as the daemon does:
its token check and its one error handler are part of what is tested."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edge_agent.errors import ConfigError, NotFoundError
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.vision.provider import ReleaseVisionModels
from tests.vision.conftest import MAX_UPLOAD, colour_release, jpeg_bytes, png_bytes
from tests.vision.test_decode import png_bomb


def solid(bgr: tuple[int, int, int], size: int = 16) -> np.ndarray:
    return np.full((size, size, 3), bgr, dtype=np.uint8)


def classify(client: TestClient, data: bytes, **fields: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = client.post(
        "/v1/vision/classify", files={"file": ("x.png", data, "image/png")}, data=fields
    )
    return r.status_code, r.json()


def assert_still_serving(client: TestClient) -> None:
    status, body = classify(client, png_bytes(solid((0, 0, 255))))
    assert status == 200 and body["predictions"][0]["label"] == "red"


def test_vision_routes_need_the_api_token(client: TestClient) -> None:
    for path in ("/v1/vision/classify", "/v1/vision/detect"):
        r = client.post(
            path,
            files={"file": ("x.png", png_bytes(solid((0, 0, 255))), "image/png")},
            headers={"Authorization": "Bearer not-the-token-0123456789"},
        )
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error"
    assert_still_serving(client)


def test_classify_returns_top_k_labels_with_scores(client: TestClient) -> None:
    status, body = classify(client, png_bytes(solid((255, 0, 0))), top_k="2")
    assert status == 200
    assert body["model"] == "colour"
    assert next(p["label"] for p in body["predictions"]) == "blue"
    assert len(body["predictions"]) == 2
    assert body["predictions"][0]["score"] > 0.99
    assert body["image"] == {"width": 16, "height": 16}
    assert set(body["timings_ms"]) == {
        "read_ms",
        "thread_hop_ms",
        "decode_ms",
        "preprocess_ms",
        "inference_ms",
        "postprocess_ms",
    }


def test_model_and_top_k_may_come_as_query_parameters(client: TestClient) -> None:
    r = client.post(
        "/v1/vision/classify?model=colour&top_k=3",
        files={"file": ("x.jpg", jpeg_bytes(solid((0, 255, 0))), "image/jpeg")},
    )
    assert r.status_code == 200
    assert next(p["label"] for p in r.json()["predictions"]) == "green"
    assert len(r.json()["predictions"]) == 3


def test_not_an_image_gets_415(client: TestClient) -> None:
    status, body = classify(client, b"%PDF-1.7 definitely a document")
    assert status == 415 and "PDF" in body["error"]["message"]
    assert_still_serving(client)


def test_truncated_png_gets_400(client: TestClient) -> None:
    data = png_bytes(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    status, body = classify(client, data[:300])
    assert status == 400 and "truncated" in body["error"]["message"]
    assert_still_serving(client)


def test_decompression_bomb_gets_413(client: TestClient) -> None:
    status, body = classify(client, png_bomb(50_000, 50_000))
    assert status == 413 and "pixels" in body["error"]["message"]
    assert_still_serving(client)


def test_upload_over_the_cap_gets_413_from_content_length(client: TestClient) -> None:
    status, body = classify(client, b"\x89PNG" + b"\x00" * (MAX_UPLOAD + 100_000))
    assert status == 413 and str(MAX_UPLOAD) in body["error"]["message"]
    assert_still_serving(client)


def test_chunked_upload_without_length_over_the_cap_gets_413(client: TestClient) -> None:
    chunk = b"\x00" * 16_384
    total_chunks = 4 * MAX_UPLOAD // len(chunk)

    def body() -> Iterator[bytes]:
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(total_chunks):
            yield chunk

    r = client.post(
        "/v1/vision/classify",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 413
    assert_still_serving(client)


def test_transparent_image_is_composited_not_read_as_its_hidden_colour(client: TestClient) -> None:
    bgra = np.zeros((16, 16, 4), dtype=np.uint8)
    bgra[..., 2] = 255  # red, but fully transparent -> white
    status, body = classify(client, png_bytes(bgra), top_k="3")
    assert status == 200
    scores = [p["score"] for p in body["predictions"]]
    assert max(scores) - min(scores) < 1e-6  # white: all channels equal


def test_sixteen_bit_png_is_classified_like_its_eight_bit_version(client: TestClient) -> None:
    px = np.zeros((16, 16, 3), dtype=np.uint16)
    px[..., 1] = 65535
    status, body = classify(client, png_bytes(px))
    assert status == 200 and body["predictions"][0]["label"] == "green"


def test_grayscale_image_is_expanded_to_rgb(client: TestClient) -> None:
    status, body = classify(client, png_bytes(np.full((16, 16), 200, np.uint8)), top_k="3")
    assert status == 200
    scores = [p["score"] for p in body["predictions"]]
    assert scores == pytest.approx([1 / 3] * 3, abs=1e-6)


def test_unknown_model_gets_404(client: TestClient) -> None:
    status, body = classify(client, png_bytes(solid((0, 0, 0))), model="nope")
    assert status == 404 and "colour" in body["error"]["message"]


def test_bad_top_k_gets_400(client: TestClient) -> None:
    for value in ("0", "abc", "1000"):
        status, body = classify(client, png_bytes(solid((0, 0, 0))), top_k=value)
        assert status == 400 and "top_k" in body["error"]["message"]


def test_missing_file_field_gets_400(client: TestClient) -> None:
    r = client.post("/v1/vision/classify", files={"image": ("x.png", b"abc", "image/png")})
    assert r.status_code == 400 and "'file'" in r.json()["error"]["message"]


def test_json_body_gets_415_naming_both_ways_to_send_an_image(client: TestClient) -> None:
    r = client.post("/v1/vision/classify", json={"file": "aGVsbG8="})
    message = r.json()["error"]["message"]
    assert r.status_code == 415
    assert "application/json" in message and "image/png" in message and "multipart" in message


# --- the raw-body path: Content-Type image/png or image/jpeg, options in the query ------


def classify_raw(
    client: TestClient, data: bytes, content_type: str = "image/png", query: str = ""
) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = client.post(
        "/v1/vision/classify" + query, content=data, headers={"content-type": content_type}
    )
    return r.status_code, r.json()


def test_raw_png_body_is_classified_with_options_from_the_query(client: TestClient) -> None:
    status, body = classify_raw(client, png_bytes(solid((255, 0, 0))), query="?top_k=2")
    assert status == 200
    assert [p["label"] for p in body["predictions"]][:1] == ["blue"]
    assert len(body["predictions"]) == 2


def test_raw_jpeg_body_gives_the_same_answer_as_multipart(client: TestClient) -> None:
    data = jpeg_bytes(solid((0, 255, 0)))
    raw_status, raw = classify_raw(client, data, "image/jpeg")
    form_status, form = classify(client, data)
    assert raw_status == form_status == 200
    assert raw["predictions"] == form["predictions"]


def test_raw_body_that_is_not_an_image_gets_415(client: TestClient) -> None:
    status, body = classify_raw(client, b"%PDF-1.7 not a picture", "image/png")
    assert status == 415 and "PDF" in body["error"]["message"]
    assert_still_serving(client)


def test_raw_gif_content_type_gets_415(client: TestClient) -> None:
    status, body = classify_raw(client, b"GIF89a....", "image/gif")
    assert status == 415 and "image/gif" in body["error"]["message"]


def test_empty_raw_body_gets_400(client: TestClient) -> None:
    status, body = classify_raw(client, b"")
    assert status == 400 and "empty" in body["error"]["message"]


def test_truncated_raw_png_gets_400(client: TestClient) -> None:
    data = png_bytes(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    status, body = classify_raw(client, data[:-20])
    assert status == 400 and "truncated" in body["error"]["message"]
    assert_still_serving(client)


def test_raw_decompression_bomb_gets_413_before_decoding(client: TestClient) -> None:
    status, body = classify_raw(client, png_bomb(60_000, 60_000))
    assert status == 413 and "pixels" in body["error"]["message"]
    assert_still_serving(client)


def test_raw_upload_over_the_cap_gets_413_from_content_length(client: TestClient) -> None:
    status, body = classify_raw(client, b"\x89PNG" + b"\x00" * (MAX_UPLOAD + 1))
    assert status == 413 and str(MAX_UPLOAD) in body["error"]["message"]
    assert_still_serving(client)


def test_chunked_raw_upload_without_length_over_the_cap_gets_413(client: TestClient) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(4 * MAX_UPLOAD // 16_384):
            yield b"\x00" * 16_384

    r = client.post("/v1/vision/classify", content=body(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert_still_serving(client)


def test_raw_detect_without_a_detector_gets_404(client: TestClient) -> None:
    r = client.post(
        "/v1/vision/detect",
        content=png_bytes(solid((1, 2, 3))),
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 404


def test_malformed_multipart_gets_400(client: TestClient) -> None:
    r = client.post(
        "/v1/vision/classify",
        content=b"--xyz\r\nthis is not a header line\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 400
    assert_still_serving(client)


def test_detect_without_a_detector_gets_404(client: TestClient) -> None:
    r = client.post("/v1/vision/detect", files={"file": ("x.png", png_bytes(solid((1, 2, 3))))})
    assert r.status_code == 404 and "detect" in r.json()["error"]["message"]


def test_release_with_vision_artifact_but_no_config_is_refused(tmp_path: Path) -> None:
    release = colour_release(tmp_path)
    bare = InstalledRelease(
        release.release_id, release.release_name, release.release_version, 1, release.artifacts
    )
    with pytest.raises(ConfigError, match="config\\['vision'\\]"):
        ReleaseVisionModels(bare)


def test_artifact_kind_and_config_task_must_agree(tmp_path: Path) -> None:
    release = colour_release(tmp_path)
    a = release.artifacts[0]
    wrong = InstalledArtifact(a.name, "vision-detect", a.format, a.sha256, a.length, a.path)
    with pytest.raises(ConfigError, match="task"):
        ReleaseVisionModels(InstalledRelease("r", "n", "1", 1, (wrong,), release.config))


def test_provider_picks_the_first_model_of_a_task_and_loads_once(tmp_path: Path) -> None:
    provider = ReleaseVisionModels(colour_release(tmp_path))
    assert provider.tasks() == {"colour": "classify"}
    first = provider.vision_model(None, "classify")
    assert provider.vision_model("colour", "classify") is first
    with pytest.raises(NotFoundError):
        provider.vision_model(None, "detect")
