"""What both INT8 search adapters share: image sets, measuring a candidate, blocks.

The onnxruntime adapter (:mod:`converters.int8_onnx`) and the LiteRT one
(:mod:`converters.int8_litert`) build models differently and measure them the same way:
top-1 agreement with the float model, output fidelity, latency timed interleaved.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converters.images import IMAGE_SUFFIXES
from converters.int8_search import Measurement, Recipe, wilson_interval
from converters.measure import latency_of
from edge_agent.errors import AgentError
from edge_agent.vision.backends import InferenceBackend
from edge_agent.vision.classification import softmax
from edge_agent.vision.decode import decode_image
from edge_agent.vision.preprocess import prepare
from edge_agent.vision.spec import VisionModelSpec

Tensor = npt.NDArray[Any]
MAX_BLOCKS = 24
_MAX_PIXELS = 100_000_000


class SearchInputError(Exception):
    """The caller's input cannot be used (wrong file, empty folder, bad image, wrong spec)."""


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed tensors of one image folder, with optional true labels."""

    folder: Path
    names: tuple[str, ...]
    tensors: tuple[Tensor, ...]
    labels: tuple[int | None, ...]

    @property
    def labelled(self) -> int:
        return sum(label is not None for label in self.labels)


def read_image_set(folder: Path, spec: VisionModelSpec, role: str) -> ImageSet:
    """Decode and preprocess every PNG/JPEG in ``folder`` as the agent would.

    Images in a sub-folder named after one of the spec's labels are labelled with it
    (``eval/tiger cat/1.png``); images directly in ``folder`` are unlabelled.
    """
    if not folder.is_dir():
        raise SearchInputError(f"the {role} folder {folder} does not exist")
    index = {label: i for i, label in enumerate(spec.labels)}
    found: list[tuple[Path, int | None]] = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            found.append((path, None))
        elif path.is_dir() and path.name in index:
            found += [
                (p, index[path.name])
                for p in sorted(path.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            ]
    if not found:
        raise SearchInputError(
            f"the {role} folder {folder} has no PNG or JPEG images"
            + (" (sub-folders count only when named after a label)" if spec.labels else "")
        )
    tensors: list[Tensor] = []
    for path, _ in found:
        try:
            image = decode_image(path.read_bytes(), max_pixels=_MAX_PIXELS).pixels
            tensors.append(prepare(image, spec.preprocess)[0])
        except (AgentError, ValueError, OSError) as e:
            raise SearchInputError(
                f"{role} image {path.relative_to(folder)} cannot be used: {e}"
            ) from e
        except Exception as e:  # OpenCV raises cv2.error for images it cannot resize
            raise SearchInputError(
                f"{role} image {path.relative_to(folder)}: the preprocessing cannot take it "
                f"({type(e).__name__}: {str(e)[:200]})"
            ) from e
    return ImageSet(
        folder=folder,
        names=tuple(str(p.relative_to(folder)) for p, _ in found),
        tensors=tuple(tensors),
        labels=tuple(label for _, label in found),
    )


def _scores(outputs: Tensor) -> Tensor:
    flat = outputs.reshape(-1).astype(np.float64)
    is_probability = bool(np.all(flat >= 0) and abs(flat.sum() - 1.0) < 1e-3)
    return flat if is_probability else softmax(flat[None, :])[0]


def _cosine(a: Tensor, b: Tensor) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / denom if denom > 0 else float(np.allclose(a, b))


def true_top1(outputs: Sequence[Tensor], labels: Sequence[int | None]) -> dict[str, Any]:
    """Top-1 accuracy over the labelled images (empty when none is labelled)."""
    pairs = [(o, y) for o, y in zip(outputs, labels, strict=True) if y is not None]
    if not pairs:
        return {}
    right = sum(int(np.argmax(o.reshape(-1)) == y) for o, y in pairs)
    return {"top1_accuracy": round(right / len(pairs), 4), "correct": right, "labelled": len(pairs)}


def measure_candidate(
    fp32: InferenceBackend,
    candidate: InferenceBackend,
    reference: Sequence[Tensor],
    evaluation: ImageSet,
    latency_tensors: Sequence[Tensor],
    latency_rounds: int,
    *,
    timed: bool = True,
) -> Measurement:
    """Agreement, fidelity and (when ``timed``) interleaved latency against ``fp32``."""
    outputs = [candidate.run(t)[0] for t in evaluation.tensors]
    agree = sum(
        int(np.argmax(r.reshape(-1)) == np.argmax(c.reshape(-1)))
        for r, c in zip(reference, outputs, strict=True)
    )
    fidelity = float(
        np.mean([_cosine(_scores(r), _scores(c)) for r, c in zip(reference, outputs, strict=True)])
    )
    p50 = p95 = fp32_p50 = fp32_p95 = 0.0
    if timed:
        fp32_ms, int8_ms = interleaved_latency(
            fp32.run, candidate.run, latency_tensors, latency_rounds
        )
        f, c = latency_of(fp32_ms), latency_of(int8_ms)
        p50, p95, fp32_p50, fp32_p95 = c.p50_ms, c.p95_ms, f.p50_ms, f.p95_ms
    return Measurement(
        agree=agree,
        total=len(outputs),
        fidelity=fidelity,
        p50_ms=p50,
        p95_ms=p95,
        fp32_p50_ms=fp32_p50,
        fp32_p95_ms=fp32_p95,
        labelled=true_top1(outputs, evaluation.labels),
        timed=timed,
    )


def agreement_on_set(
    fp32: InferenceBackend, candidate: InferenceBackend, images: ImageSet
) -> dict[str, Any]:
    """Agreement with a Wilson 95% interval, and true top-1 of both where labelled."""
    ref = [fp32.run(t)[0] for t in images.tensors]
    cand = [candidate.run(t)[0] for t in images.tensors]
    agree = sum(
        int(np.argmax(r.reshape(-1)) == np.argmax(c.reshape(-1)))
        for r, c in zip(ref, cand, strict=True)
    )
    low, high = wilson_interval(agree, len(cand))
    return {
        "folder": str(images.folder),
        "images": len(cand),
        "agreement": round(agree / len(cand), 4),
        "agreement_ci95": [round(low, 4), round(high, 4)],
        "fp32": true_top1(ref, images.labels),
        "int8": true_top1(cand, images.labels),
    }


def interleaved_latency(
    first: Callable[[Tensor], object],
    second: Callable[[Tensor], object],
    tensors: Sequence[Tensor],
    rounds: int,
    warmup: int = 3,
) -> tuple[list[float], list[float]]:
    """Per-call milliseconds of two models, alternating which runs first on each image, so
    that load on a shared machine hits both alike."""
    for t in list(tensors)[:warmup]:
        first(t)
        second(t)
    a: list[float] = []
    b: list[float] = []
    for r in range(rounds):
        for i, t in enumerate(tensors):
            order = ((first, a), (second, b)) if (i + r) % 2 == 0 else ((second, b), (first, a))
            for call, samples in order:
                t0 = time.perf_counter()
                call(t)
                samples.append((time.perf_counter() - t0) * 1e3)
    return a, b


def merge_blocks(blocks: dict[str, list[str]], max_blocks: int) -> dict[str, list[str]]:
    """Consecutive blocks merged into at most ``max_blocks`` (names ``first..last``)."""
    if len(blocks) <= max_blocks:
        return blocks
    names = list(blocks)
    size = -(-len(names) // max_blocks)
    merged: dict[str, list[str]] = {}
    for start in range(0, len(names), size):
        group = names[start : start + size]
        label = group[0] if len(group) == 1 else f"{group[0]}..{group[-1]}"
        merged[label] = [n for k in group for n in blocks[k]]
    return merged


def retime_together(
    fp32: InferenceBackend,
    candidates: Mapping[Any, InferenceBackend],
    tensors: Sequence[Tensor],
    rounds: int,
) -> dict[Any, Measurement]:
    """FP32 and every candidate timed in one loop, in a rotating order per image, so that
    the finalists of a search are compared under the same load (agreement fields are
    placeholders: the caller keeps the ones measured on the evaluation set)."""
    models: list[tuple[Any, InferenceBackend]] = [(None, fp32), *candidates.items()]
    for t in list(tensors)[:3]:
        for _, model in models:
            model.run(t)
    samples: dict[int, list[float]] = {i: [] for i in range(len(models))}
    step = 0
    for _ in range(rounds):
        for t in tensors:
            for k in range(len(models)):
                i = (k + step) % len(models)
                t0 = time.perf_counter()
                models[i][1].run(t)
                samples[i].append((time.perf_counter() - t0) * 1e3)
            step += 1
    f = latency_of(samples[0])
    out: dict[Any, Measurement] = {}
    for i, (key, _) in enumerate(models[1:], start=1):
        c = latency_of(samples[i])
        out[key] = Measurement(1, 1, 1.0, c.p50_ms, c.p95_ms, f.p50_ms, f.p95_ms)
    return out


class RecipeTrials(ABC):
    """The measuring half of a target's adapter: each recipe is built by the subclass
    (``build``, ``backend``) into ``work`` and measured against the float model the same
    way on every target. The model of every measured recipe stays in ``work``
    (sensitivity probes are deleted at once) so that the chosen one is moved into place,
    not rebuilt."""

    suffix: str
    work: Path
    threads: int
    fp32: InferenceBackend
    reference: list[Tensor]
    evaluation: ImageSet
    latency_tensors: Sequence[Tensor]
    latency_rounds: int
    paths: dict[Recipe, Path]
    _count: int

    @abstractmethod
    def build(self, recipe: Recipe, target: Path) -> None:
        """Write the model of ``recipe`` to ``target``."""

    @abstractmethod
    def backend(self, path: Path) -> InferenceBackend:
        """The target's runtime on a model built by ``build``."""

    def measure(self, recipe: Recipe) -> Measurement:
        self._count += 1
        path = self.work / f"trial-{self._count:03d}{self.suffix}"
        self.build(recipe, path)
        measured = measure_candidate(
            self.fp32,
            self.backend(path),
            self.reference,
            self.evaluation,
            self.latency_tensors,
            self.latency_rounds,
            timed=recipe.only_block is None,
        )
        if recipe.only_block is not None:
            path.unlink()
        else:
            self.paths[recipe] = path
        return measured

    def retime(self, recipes: Sequence[Recipe]) -> dict[Recipe, Measurement]:
        """The finalists re-timed together with the float model (3 rounds)."""
        candidates = {r: self.backend(self.paths[r]) for r in recipes}
        return retime_together(self.fp32, candidates, self.latency_tensors, 3)

    def agreement_on(self, recipe: Recipe, images: ImageSet) -> dict[str, Any]:
        """Agreement of an already measured recipe with the float model on another
        (held-out) set."""
        return agreement_on_set(self.fp32, self.backend(self.paths[recipe]), images)
