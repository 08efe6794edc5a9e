"""PyTorch -> Core ML ``.mlpackage`` (ML program) with int8 linear weight quantization.

coremltools converts and saves on Linux; prediction and activation calibration need macOS,
so the package is checked structurally here and numerically on a Mac. Needs the
``convert`` extra (torch, coremltools).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import coremltools as ct
import coremltools.optimize.coreml as cto
import torch
from torch import nn


def convert_to_mlpackage(
    model: nn.Module,
    target: Path,
    *,
    input_shape: tuple[int, ...] = (1, 3, 224, 224),
    input_name: str = "input",
    output_name: str = "logits",
    int8_weights: bool = True,
    weight_threshold: int = 2048,
) -> Path:
    """Trace ``model``, convert it to an ML program, quantize weights, save ``target``.

    Weights with fewer than ``weight_threshold`` elements stay float (coremltools default).
    """
    model = model.eval()
    example = torch.zeros(*input_shape)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
    mlmodel: Any = ct.convert(
        traced,
        inputs=[ct.TensorType(name=input_name, shape=input_shape)],
        outputs=[ct.TensorType(name=output_name)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.macOS13,
        compute_precision=ct.precision.FLOAT32,
    )
    if int8_weights:
        config = cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", weight_threshold=weight_threshold
            )
        )
        mlmodel = cto.linear_quantize_weights(mlmodel, config=config)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(target))
    return target


def weight_dtypes(package: Path) -> dict[str, int]:
    """Count the ML program's constant tensors by dtype (proves weights are int8)."""
    mlmodel: Any = ct.models.MLModel(str(package), skip_model_load=True)
    counts: dict[str, int] = {}
    prog = mlmodel.get_spec().mlProgram
    for function in prog.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type != "constexpr_affine_dequantize" and op.type != "const":
                    continue
                for out in op.outputs:
                    dtype = str(out.type.tensorType.dataType)
                    key = f"{op.type}:{dtype}"
                    counts[key] = counts.get(key, 0) + 1
    return counts


def zip_mlpackage(package: Path, target: Path) -> Path:
    """A release ships one file: the ``.mlpackage`` directory zipped (deterministic order)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(package.parent)), (1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
    return target
