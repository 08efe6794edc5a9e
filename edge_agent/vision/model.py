"""A loaded vision model: spec + backend, with a bounded number of requests in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edge_agent.errors import BadRequestError, BusyError, ConfigError
from edge_agent.vision import blazeface
from edge_agent.vision.backends import InferenceBackend, Tensor
from edge_agent.vision.classification import Prediction, top_k
from edge_agent.vision.decode import BGRImage
from edge_agent.vision.detection import Detection
from edge_agent.vision.preprocess import prepare
from edge_agent.vision.spec import VisionModelSpec


@dataclass(frozen=True)
class StageTimes:
    """Milliseconds spent per stage of one request (decode is filled in by the caller)."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    decode_ms: float = 0.0


@dataclass(frozen=True)
class Classification:
    predictions: tuple[Prediction, ...]
    times: StageTimes


@dataclass(frozen=True)
class Detections:
    detections: tuple[Detection, ...]
    times: StageTimes


@dataclass
class VisionModel:
    """One vision model ready to serve. ``max_in_flight`` bounds concurrent requests."""

    name: str
    spec: VisionModelSpec
    backend: InferenceBackend
    max_in_flight: int = 8
    _in_flight: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _anchors: Tensor | None = field(default=None, init=False)

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                raise BusyError(
                    f"vision model {self.name!r} already has {self._in_flight} requests "
                    "in flight; retry shortly"
                )
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def infer(self, tensor: Tensor) -> list[Tensor]:
        """Run the backend on an already prepared tensor."""
        return self.backend.run(tensor)

    def classify(self, image: BGRImage, k: int = 5) -> Classification:
        """Top-``k`` classes of ``image`` (8-bit BGR)."""
        if self.spec.task != "classify":
            raise BadRequestError(f"model {self.name!r} is a detector, not a classifier")
        with self._admitted():
            t0 = time.perf_counter()
            tensor, _ = prepare(image, self.spec.preprocess)
            t1 = time.perf_counter()
            outputs = self.backend.run(tensor)
            t2 = time.perf_counter()
            try:
                preds = top_k(outputs[0][:1], self.spec.labels, k, self.spec.scores)
            except ValueError as e:
                raise ConfigError(f"vision model {self.name!r}: {e}") from e
            t3 = time.perf_counter()
        return Classification(preds, _times(t0, t1, t2, t3))

    def detect(self, image: BGRImage) -> Detections:
        """Objects in ``image`` (8-bit BGR), boxes in its pixel coordinates."""
        det = self.spec.detector
        if self.spec.task != "detect" or det is None:
            raise BadRequestError(f"model {self.name!r} is a classifier, not a detector")
        with self._admitted():
            t0 = time.perf_counter()
            tensor, geometry = prepare(image, self.spec.preprocess)
            t1 = time.perf_counter()
            outputs = self.backend.run(tensor)
            t2 = time.perf_counter()
            regressors, logits = _split_ssd_outputs(outputs)
            try:
                if self._anchors is None:
                    self._anchors = blazeface.anchors(det)
                found = blazeface.decode(regressors, logits, self._anchors, det, geometry)
            except ValueError as e:
                raise ConfigError(f"vision model {self.name!r}: {e}") from e
            t3 = time.perf_counter()
        return Detections(found, _times(t0, t1, t2, t3))


def _split_ssd_outputs(outputs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Find box regressors and class logits among outputs by shape (order varies by format)."""
    if len(outputs) != 2:
        raise ConfigError(f"a blazeface model has 2 outputs, this one has {len(outputs)}")
    a, b = (np.asarray(o, dtype=np.float32) for o in outputs)
    return (a, b) if a.shape[-1] >= b.shape[-1] else (b, a)


def _times(t0: float, t1: float, t2: float, t3: float) -> StageTimes:
    return StageTimes(
        preprocess_ms=(t1 - t0) * 1e3, inference_ms=(t2 - t1) * 1e3, postprocess_ms=(t3 - t2) * 1e3
    )
