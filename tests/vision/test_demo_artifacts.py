"""What the end-to-end demo ships: the INT8 classifier and BlazeFace, ready to upload and serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control_plane.artifacts.formats import inspect_artifact
from converters.catalog import Int8Recipe, preset
from converters.demo import demo_sample_images, demo_vision_artifacts
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.vision.decode import decode_image
from edge_agent.vision.provider import ReleaseVisionModels
from edge_agent.vision.spec import VISION_TASK_OF_KIND, VisionModelSpec
from protocol.messages import ARTIFACT_FORMATS, ARTIFACT_KINDS

CAT_CLASSES = range(281, 286)


def test_a_cached_int8_model_made_with_another_recipe_is_not_current(tmp_path: Path) -> None:
    p = preset("efficientnet-lite0")
    target = p.int8_path(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"model")
    report = target.with_name(target.name + ".report.json")
    assert not p.int8_is_current(tmp_path)  # no report: unknown recipe
    report.write_text(
        json.dumps({"settings": {"recipe": Int8Recipe(reduce_range=False).as_dict()}})
    )
    assert not p.int8_is_current(tmp_path)
    report.write_text(json.dumps({"settings": {"recipe": p.int8.as_dict()}}))
    assert p.int8_is_current(tmp_path)
    report.write_text("{not json")
    assert not p.int8_is_current(tmp_path)


@pytest.mark.slow
def test_demo_artifacts_are_accepted_by_the_control_plane_and_serve_on_the_agent() -> None:
    artifacts = demo_vision_artifacts()
    assert [(a.name, a.kind, a.format) for a in artifacts] == [
        ("efficientnet-lite0-int8", "vision-classify", "onnx"),
        ("blazeface-short-range", "vision-detect", "tflite"),
    ]
    for a in artifacts:
        assert a.kind in ARTIFACT_KINDS and a.format in ARTIFACT_FORMATS
        with a.path.open("rb") as stream:  # the upload's type check, as the control plane runs it
            inspect_artifact(stream, a.format, a.path.stat().st_size)
        assert VisionModelSpec.from_config(a.config).task == VISION_TASK_OF_KIND[a.kind]
        json.dumps(a.config)  # goes into the release config as JSON

    release = InstalledRelease(
        release_id="demo",
        release_name="demo",
        release_version="1",
        assignment_version=1,
        artifacts=tuple(
            InstalledArtifact(a.name, a.kind, a.format, "0" * 64, a.path.stat().st_size, a.path)
            for a in artifacts
        ),
        config={"vision": {a.name: a.config for a in artifacts}},
    )
    provider = ReleaseVisionModels(release)
    images = demo_sample_images()
    assert sorted(images) == ["astronaut.png", "chelsea.png"]
    cat = decode_image(images["chelsea.png"].read_bytes(), max_pixels=10**7).pixels
    top = provider.vision_model(None, "classify").classify(cat, 1).predictions[0]
    assert top.index in CAT_CLASSES, top
    face = decode_image(images["astronaut.png"].read_bytes(), max_pixels=10**7).pixels
    assert provider.vision_model(None, "detect").detect(face).detections


@pytest.mark.slow
def test_demo_artifacts_a_second_time_reuse_the_cache() -> None:
    first = demo_vision_artifacts()
    stamps = [a.path.stat().st_mtime_ns for a in first]
    again = demo_vision_artifacts(report=lambda message: pytest.fail(f"prepared again: {message}"))
    assert again == first
    assert [a.path.stat().st_mtime_ns for a in again] == stamps
