"""Thin inference backends: onnxruntime (default), LiteRT / tflite-runtime, Core ML (macOS).

Each takes one input tensor and returns the model's outputs in the model's order. The
backend is chosen from the artifact's format; nothing here knows about images.
"""

from __future__ import annotations

import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ConfigError

Tensor = npt.NDArray[Any]


class InferenceBackend(Protocol):
    """A loaded model: one input tensor in, output tensors out."""

    name: str

    def run(self, tensor: Tensor) -> list[Tensor]: ...


class OnnxRuntimeBackend:
    """onnxruntime on CPU; ``run`` is safe to call from several threads."""

    name = "onnxruntime"

    def __init__(self, path: Path, *, n_threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if n_threads:
            opts.intra_op_num_threads = n_threads
        opts.inter_op_num_threads = 1
        # Idle worker threads would otherwise spin after each run and take the cores the
        # HTTP event loop and image decoding need on a small device.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ConfigError(f"onnxruntime cannot load {path.name}: {e}") from e
        self._input = self._session.get_inputs()[0].name

    def run(self, tensor: Tensor) -> list[Tensor]:
        return [np.asarray(o) for o in self._session.run(None, {self._input: tensor})]


def _tflite_interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter as LegacyInterpreter

        return LegacyInterpreter
    except ImportError as e:
        raise ConfigError(
            "a .tflite model needs LiteRT: install the 'tflite' extra (ai-edge-litert)"
        ) from e


class LiteRTBackend:
    """LiteRT (``ai-edge-litert``), or ``tflite-runtime`` where only that is installed.

    An interpreter is not thread-safe, so calls are serialized. Quantized inputs and
    outputs are converted with the tensor's own scale and zero point.
    """

    name = "litert"

    def __init__(self, path: Path, *, n_threads: int | None = None) -> None:
        interpreter_class = _tflite_interpreter_class()
        try:
            self._it = interpreter_class(model_path=str(path), num_threads=n_threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"LiteRT cannot load {path.name}: {e}") from e
        self._in = self._it.get_input_details()[0]
        self._outs = self._it.get_output_details()
        self._lock = threading.Lock()

    def run(self, tensor: Tensor) -> list[Tensor]:
        want = self._in["dtype"]
        scale, zero = self._in.get("quantization", (0.0, 0))
        if want in (np.int8, np.uint8) and tensor.dtype != want and scale:
            info = np.iinfo(want)
            q = np.round(tensor.astype(np.float32) / scale + zero)
            tensor = np.clip(q, info.min, info.max).astype(want)
        else:
            tensor = tensor.astype(want, copy=False)
        with self._lock:
            self._it.set_tensor(self._in["index"], tensor)
            self._it.invoke()
            raw = [self._it.get_tensor(d["index"]).copy() for d in self._outs]
        out: list[Tensor] = []
        for d, value in zip(self._outs, raw, strict=True):
            s, z = d.get("quantization", (0.0, 0))
            out.append((value.astype(np.float32) - z) * s if s else value)
        return out


class CoreMLBackend:
    """Core ML via coremltools; prediction runs only on macOS."""

    name = "coreml"

    def __init__(self, path: Path, *, n_threads: int | None = None) -> None:
        if sys.platform != "darwin":
            raise ConfigError("Core ML models run only on macOS; ship ONNX or TFLite here")
        try:
            import coremltools as ct
        except ImportError as e:
            raise ConfigError(
                "a Core ML model needs coremltools: install the 'coreml' extra"
            ) from e
        self._model: Any = ct.models.MLModel(str(_unpacked_mlpackage(path)))
        spec = self._model.get_spec()
        self._input: str = spec.description.input[0].name
        self._outputs: list[str] = [o.name for o in spec.description.output]

    def run(self, tensor: Tensor) -> list[Tensor]:
        result = self._model.predict({self._input: tensor})
        return [np.asarray(result[name]) for name in self._outputs]


def _unpacked_mlpackage(path: Path) -> Path:
    """A .mlpackage is a directory; a release ships it zipped. Unzip once beside it."""
    if path.is_dir():
        return path
    target = path.with_name(path.name + ".unpacked")
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        with zipfile.ZipFile(path) as zf:
            zf.extractall(tmp)
        tmp.rename(target)
    found = next(iter(sorted(target.glob("*.mlpackage"))), None)
    return found if found is not None else target


def open_backend(fmt: str, path: Path, *, n_threads: int | None = None) -> InferenceBackend:
    """Load ``path`` with the backend for artifact format ``fmt`` (onnx, tflite, mlpackage)."""
    if fmt == "onnx":
        return OnnxRuntimeBackend(path, n_threads=n_threads)
    if fmt == "tflite":
        return LiteRTBackend(path, n_threads=n_threads)
    if fmt == "mlpackage":
        return CoreMLBackend(path, n_threads=n_threads)
    raise ConfigError(f"no vision backend for artifact format {fmt!r} (onnx, tflite, mlpackage)")
