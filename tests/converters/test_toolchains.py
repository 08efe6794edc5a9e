"""PyTorch -> ONNX (EfficientNet-Lite0) and -> Core ML; Core ML predict only on macOS."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.requirements import require_installed, require_module

torch = require_module("torch", "torch (the 'convert' extra)", "make setup installs it")

from converters.efficientnet_lite import same_padding  # noqa: E402


def test_tf_same_padding_puts_the_extra_pixel_after() -> None:
    assert same_padding(224, 3, 2) == (0, 1, 0, 1)
    assert same_padding(112, 5, 2) == (1, 2, 1, 2)
    assert same_padding(14, 5, 1) == (2, 2, 2, 2)


class _Tiny(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(y)


@pytest.mark.slow
def test_efficientnet_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    import onnxruntime as ort

    from converters.efficientnet_lite import export_onnx, load_pretrained

    model = load_pretrained()
    path = export_onnx(model, tmp_path / "e.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    assert got.shape == (2, 1000)
    assert np.abs(expected - got).max() < 1e-3


@pytest.fixture(scope="module")
def mlpackage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_installed("coremltools", "coremltools (the 'convert' extra)", "make setup installs it")
    from converters.coreml import convert_to_mlpackage

    torch.manual_seed(0)
    target = tmp_path_factory.mktemp("coreml") / "tiny.mlpackage"
    return convert_to_mlpackage(_Tiny(), target, input_shape=(1, 3, 16, 16), weight_threshold=16)


@pytest.mark.slow
def test_coreml_conversion_on_linux_saves_int8_weights(mlpackage: Path, tmp_path: Path) -> None:
    from converters.coreml import weight_dtypes, zip_mlpackage

    assert (mlpackage / "Manifest.json").exists()
    counts = weight_dtypes(mlpackage)
    assert counts.get("constexpr_affine_dequantize:11", 0) >= 2  # conv + linear weights
    zipped = zip_mlpackage(mlpackage, tmp_path / "tiny.mlpackage.zip")
    assert zipped.stat().st_size > 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predict needs macOS")
def test_coreml_prediction_matches_pytorch_on_macos(mlpackage: Path) -> None:
    from edge_agent.vision.backends import CoreMLBackend

    torch.manual_seed(0)
    reference = _Tiny().eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    (got,) = CoreMLBackend(mlpackage).run(x)
    assert np.abs(expected - got).max() < 0.05  # int8 weights
