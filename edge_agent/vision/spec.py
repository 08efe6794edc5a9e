"""What a vision model expects and returns, as typed values declared in the release config.

A release carries one entry per vision artifact under ``config["vision"][<artifact name>]``;
converters write the same mapping next to the model (``<model>.vision.json``) and into its
model card. Everything here is validated once, on construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from edge_agent.errors import ConfigError

ResizeMode = Literal["stretch", "letterbox", "center_crop"]
ColorOrder = Literal["rgb", "bgr"]
Layout = Literal["nchw", "nhwc"]
InputDType = Literal["float32", "float16", "uint8"]
Interpolation = Literal["linear", "area", "cubic", "lanczos"]
VisionTask = Literal["classify", "detect"]
ScoreOutput = Literal["logits", "probabilities"]

VISION_TASK_OF_KIND: Mapping[str, VisionTask] = {
    "vision-classify": "classify",
    "vision-detect": "detect",
}


def _choice(value: object, allowed: Any, what: str) -> Any:
    options = get_args(allowed)
    if value not in options:
        raise ConfigError(f"{what} must be one of {', '.join(options)}, got {value!r}")
    return value


def _floats(value: object, n: int, what: str) -> tuple[float, ...]:
    if isinstance(value, int | float):
        return (float(value),) * n
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != n:
        raise ConfigError(f"{what} must be a number or a list of {n} numbers, got {value!r}")
    out = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{what} must be finite numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the model's input tensor.

    ``value = (pixel * scale - mean) / std`` per channel, in the declared colour order,
    for float inputs; ``uint8`` inputs get the resized pixels unchanged.
    ``size`` is (width, height) of the model input.
    """

    size: tuple[int, int]
    resize: ResizeMode = "stretch"
    crop_fraction: float = 0.875
    color: ColorOrder = "rgb"
    layout: Layout = "nchw"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0
    dtype: InputDType = "float32"
    interpolation: Interpolation = "linear"
    pad_value: int = 0

    def __post_init__(self) -> None:
        w, h = self.size
        if not (1 <= w <= 4096 and 1 <= h <= 4096):
            raise ConfigError(f"preprocess size must be 1..4096 pixels per side, got {self.size}")
        if not 0.1 <= self.crop_fraction <= 1.0:
            raise ConfigError(f"crop_fraction must be in [0.1, 1], got {self.crop_fraction}")
        if any(s == 0.0 for s in self.std):
            raise ConfigError("std must not contain 0")
        if not 0 <= self.pad_value <= 255:
            raise ConfigError(f"pad_value must be 0..255, got {self.pad_value}")

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> PreprocessSpec:
        """Build from the ``preprocess`` mapping of a release config or model card."""
        if not isinstance(raw, Mapping):
            raise ConfigError("preprocess must be a mapping")
        unknown = set(raw) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ConfigError(f"unknown preprocess keys: {', '.join(sorted(unknown))}")
        size = raw.get("size")
        if isinstance(size, int):
            size = (size, size)
        if not isinstance(size, Sequence) or len(size) != 2:
            raise ConfigError(f"preprocess size must be [width, height], got {size!r}")
        mean = _floats(raw.get("mean", 0.0), 3, "mean")
        std = _floats(raw.get("std", 1.0), 3, "std")
        return cls(
            size=(int(size[0]), int(size[1])),
            resize=_choice(raw.get("resize", "stretch"), ResizeMode, "resize"),
            crop_fraction=float(raw.get("crop_fraction", 0.875)),
            color=_choice(raw.get("color", "rgb"), ColorOrder, "color"),
            layout=_choice(raw.get("layout", "nchw"), Layout, "layout"),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            scale=float(raw.get("scale", 1.0 / 255.0)),
            dtype=_choice(raw.get("dtype", "float32"), InputDType, "dtype"),
            interpolation=_choice(
                raw.get("interpolation", "linear"), Interpolation, "interpolation"
            ),
            pad_value=int(raw.get("pad_value", 0)),
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "resize": self.resize,
            "crop_fraction": self.crop_fraction,
            "color": self.color,
            "layout": self.layout,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "dtype": self.dtype,
            "interpolation": self.interpolation,
            "pad_value": self.pad_value,
        }


@dataclass(frozen=True)
class BlazeFaceSpec:
    """SSD anchor layout and decoding constants of a BlazeFace-style detector."""

    input_size: int = 128
    strides: tuple[int, ...] = (8, 16, 16, 16)
    anchor_offset: float = 0.5
    anchors_per_layer: int = 2
    num_keypoints: int = 6
    score_threshold: float = 0.5
    iou_threshold: float = 0.3
    max_detections: int = 100
    label: str = "face"

    def __post_init__(self) -> None:
        if not self.strides or any(s <= 0 for s in self.strides):
            raise ConfigError("blazeface strides must be positive")
        if not 0.0 < self.score_threshold < 1.0:
            raise ConfigError("blazeface score_threshold must be in (0, 1)")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ConfigError("blazeface iou_threshold must be in (0, 1]")

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> BlazeFaceSpec:
        known = set(cls.__dataclass_fields__) | {"kind"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown blazeface keys: {', '.join(sorted(unknown))}")
        base = cls()
        return cls(
            input_size=int(raw.get("input_size", base.input_size)),
            strides=tuple(int(s) for s in raw.get("strides", base.strides)),
            anchor_offset=float(raw.get("anchor_offset", base.anchor_offset)),
            anchors_per_layer=int(raw.get("anchors_per_layer", base.anchors_per_layer)),
            num_keypoints=int(raw.get("num_keypoints", base.num_keypoints)),
            score_threshold=float(raw.get("score_threshold", base.score_threshold)),
            iou_threshold=float(raw.get("iou_threshold", base.iou_threshold)),
            max_detections=int(raw.get("max_detections", base.max_detections)),
            label=str(raw.get("label", base.label)),
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": "blazeface",
            "input_size": self.input_size,
            "strides": list(self.strides),
            "anchor_offset": self.anchor_offset,
            "anchors_per_layer": self.anchors_per_layer,
            "num_keypoints": self.num_keypoints,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "max_detections": self.max_detections,
            "label": self.label,
        }


@dataclass(frozen=True)
class VisionModelSpec:
    """Everything the agent needs besides the weights to serve one vision model."""

    task: VisionTask
    preprocess: PreprocessSpec
    labels: tuple[str, ...] = ()
    scores: ScoreOutput = "logits"
    detector: BlazeFaceSpec | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task == "classify" and not self.labels:
            raise ConfigError("a classifier needs its labels in the vision config")
        if self.task == "detect" and self.detector is None:
            raise ConfigError("a detector needs a postprocess section (kind: blazeface)")

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> VisionModelSpec:
        """Build from one ``config["vision"][<artifact>]`` entry."""
        if not isinstance(raw, Mapping):
            raise ConfigError("a vision model entry must be a mapping")
        task = cast(VisionTask, _choice(raw.get("task"), VisionTask, "task"))
        labels = raw.get("labels", ())
        if not isinstance(labels, Sequence) or isinstance(labels, str):
            raise ConfigError("labels must be a list of strings")
        detector: BlazeFaceSpec | None = None
        post = raw.get("postprocess")
        if post is not None:
            if not isinstance(post, Mapping) or post.get("kind") != "blazeface":
                raise ConfigError("postprocess.kind must be 'blazeface'")
            detector = BlazeFaceSpec.from_config(post)
        return cls(
            task=task,
            preprocess=PreprocessSpec.from_config(raw.get("preprocess", {})),
            labels=tuple(str(x) for x in labels),
            scores=_choice(raw.get("scores", "logits"), ScoreOutput, "scores"),
            detector=detector,
            extra={k: v for k, v in raw.items() if k in ("source", "license", "description")},
        )

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.task,
            "preprocess": self.preprocess.to_config(),
            "labels": list(self.labels),
            "scores": self.scores,
        }
        if self.detector is not None:
            out["postprocess"] = self.detector.to_config()
        out.update(self.extra)
        return out
