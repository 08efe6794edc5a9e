"""``python -m converters quantize MODEL --target onnxruntime``: search, then write what it found.

Checks every input first, runs :func:`converters.int8_search.search` over
:class:`converters.int8_onnx.OnnxTrials`, and writes: the JSON report (always, with every
trial, the block sensitivities and the agreement/latency curve), and when the gate is met
the INT8 model, its ``.vision.json`` spec and its model card (generated from the report);
when even the fastest passing recipe is not faster than FP32 here, the verdict (report and
card) is ``keep-fp32``: the release recipe for this target keeps FP32. Exit codes: 0 model
written, 2 bad input, 3 no recipe met the gate (the report names the best one found).
"""

from __future__ import annotations

import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import onnxruntime as ort

from converters.int8_onnx import OnnxTrials, blocks_of, check_spec_fits, load_model, prepare_model
from converters.int8_search import Measurement, Recipe, SearchResult, search, wilson_interval
from converters.int8_trials import ImageSet, SearchInputError, read_image_set
from edge_agent.store import sha256_file
from edge_agent.vision.spec import VisionModelSpec

EXIT_OK, EXIT_BAD_INPUT, EXIT_GATE_NOT_MET = 0, 2, 3
TARGETS = ("onnxruntime", "litert")
SUFFIXES = {"onnxruntime": ".onnx", "litert": ".tflite"}


@dataclass(frozen=True)
class SearchRequest:
    """What the user asked for (all paths as given)."""

    model: Path
    out: Path
    spec: VisionModelSpec
    calibration: Path
    evaluation: Path
    min_agreement: float
    target: str = "onnxruntime"
    report: Path | None = None
    time_budget_s: float | None = None
    seed: int = 0
    calibration_limit: int = 64
    max_blocks: int = 24
    calibrations: tuple[str, ...] = ()  # narrow the search space (default: all the target has)
    weight_bits: tuple[int, ...] = ()
    holdout: Path | None = None
    cards: Path | None = None
    title: str = ""
    source: str = ""
    license: str = "see source"
    command: str = ""

    @property
    def report_path(self) -> Path:
        return self.report or self.out.with_name(self.out.name + ".report.json")

    @property
    def name(self) -> str:
        return self.out.stem


def cpu_facts() -> dict[str, Any]:
    """What decides INT8 speed and saturation on x86: the dot-product instructions."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count(),
        "dot_product_flags": sorted(f for f in wanted if f in flags),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [],
        "onnxruntime": ort.__version__,
    }


def _subset(images: ImageSet, limit: int, seed: int) -> ImageSet:
    if len(images.tensors) <= limit:
        return images
    keep = sorted(random.Random(seed).sample(range(len(images.tensors)), limit))
    return replace(
        images,
        names=tuple(images.names[i] for i in keep),
        tensors=tuple(images.tensors[i] for i in keep),
        labels=tuple(images.labels[i] for i in keep),
    )


def _validate(req: SearchRequest) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    if req.target not in TARGETS:
        raise SearchInputError(f"unknown --target {req.target!r}; known: {', '.join(TARGETS)}")
    if not 0.0 <= req.min_agreement <= 1.0:
        raise SearchInputError(f"--min-agreement must be within 0..1, not {req.min_agreement}")
    if req.max_blocks < 1:
        raise SearchInputError("--max-blocks must be at least 1")
    if req.time_budget_s is not None and req.time_budget_s <= 0:
        raise SearchInputError("--time-budget must be a positive number of seconds")
    suffix = SUFFIXES[req.target]
    if req.out.suffix != suffix:
        raise SearchInputError(f"--out {req.out} must end in {suffix} for --target {req.target}")
    if req.out.resolve() == req.model.resolve():
        raise SearchInputError("--out must not overwrite the float model")
    from converters import int8_litert, int8_search

    space: dict[str, tuple[Sequence[str], Sequence[int]]] = {
        "onnxruntime": (int8_search.CALIBRATIONS, int8_search.WEIGHT_BITS),
        "litert": (int8_litert.CALIBRATIONS, int8_litert.WEIGHT_BITS),
    }
    calibrations, bits = space[req.target]
    if req.calibrations and not set(req.calibrations) & set(calibrations):
        raise SearchInputError(f"--calibration-methods: {req.target} has {', '.join(calibrations)}")
    if req.weight_bits and not set(req.weight_bits) & set(bits):
        raise SearchInputError(f"--weight-bits: {req.target} has {', '.join(map(str, bits))}")
    if req.target == "litert":
        from converters.int8_litert import load_tflite, quantizer_available

        missing = quantizer_available()
        if missing is not None:
            raise SearchInputError(f"--target litert needs {missing}")
        load_tflite(req.model)
    else:
        load_model(req.model)
    calibration = _subset(
        read_image_set(req.calibration, req.spec, "calibration"), req.calibration_limit, req.seed
    )
    evaluation = read_image_set(req.evaluation, req.spec, "evaluation")
    holdout = read_image_set(req.holdout, req.spec, "held-out") if req.holdout else None
    return calibration, evaluation, holdout


def quantize_with_search(
    req: SearchRequest,
    *,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run the whole command; returns its exit code."""
    try:
        calibration, evaluation, holdout = _validate(req)
    except SearchInputError as e:
        say(f"ERROR: {e}")
        return EXIT_BAD_INPUT
    req.out.parent.mkdir(parents=True, exist_ok=True)
    started = clock()
    with tempfile.TemporaryDirectory(dir=req.out.parent, prefix=".int8-search-") as tmp:
        work = Path(tmp)
        try:
            trials, blocks, opsets = _trials_for(req, work, calibration, evaluation, say)
        except SearchInputError as e:
            say(f"ERROR: {e}")
            return EXIT_BAD_INPUT
        say(
            f"{req.model.name} on {req.target}: {len(blocks)} blocks, "
            f"{len(calibration.tensors)} calibration and {len(evaluation.tensors)} evaluation "
            f"images, gate {req.min_agreement}, budget {req.time_budget_s or 'none'} s, "
            f"seed {req.seed}"
        )
        result = search(
            list(blocks),
            trials.measure,
            min_agreement=req.min_agreement,
            clock=clock,
            seed=req.seed,
            time_budget_s=req.time_budget_s,
            report=say,
            calibrations=_narrowed(trials.calibrations, req.calibrations),
            weight_bits=_narrowed(trials.weight_bits, req.weight_bits),
            retime=trials.retime,
        )
        held_out = (
            trials.agreement_on(result.chosen.recipe, holdout)
            if holdout is not None and result.chosen is not None
            else None
        )
        report = _report(req, result, blocks, trials, opsets, held_out)
        report["search_seconds"] = round(clock() - started, 1)
        wrote = result.chosen is not None
        if result.chosen is not None:
            os.replace(trials.paths[result.chosen.recipe], req.out)
            report["artifact"] = str(req.out)
            report["artifact_sha256"] = sha256_file(req.out)
            spec_path = req.out.with_name(req.out.name + ".vision.json")
            spec_path.write_text(json.dumps(req.spec.to_config(), indent=2) + "\n")
        req.report_path.parent.mkdir(parents=True, exist_ok=True)
        req.report_path.write_text(json.dumps(report, indent=2) + "\n")
    say(f"report -> {req.report_path}")
    if req.cards is not None and wrote:
        from converters.cards import card_from_search_report

        card = card_from_search_report(report, req.spec, req.cards)
        say(f"model card -> {card}")
    return _verdict(result, req, say)


def _narrowed(available: Sequence[Any], wanted: Sequence[Any]) -> list[Any]:
    return [v for v in available if v in wanted] if wanted else list(available)


class Trials(Protocol):
    """What the search needs from a target's adapter (OnnxTrials, LiteRTTrials)."""

    @property
    def calibrations(self) -> Sequence[str]: ...
    @property
    def weight_bits(self) -> Sequence[int]: ...
    @property
    def calibration(self) -> ImageSet: ...
    @property
    def evaluation(self) -> ImageSet: ...
    @property
    def fp32_labelled(self) -> dict[str, Any]: ...
    @property
    def paths(self) -> dict[Recipe, Path]: ...

    def measure(self, recipe: Recipe) -> Measurement: ...

    def retime(self, recipes: Sequence[Recipe]) -> dict[Recipe, Measurement]: ...

    def agreement_on(self, recipe: Recipe, images: ImageSet) -> dict[str, Any]: ...


def _trials_for(
    req: SearchRequest,
    work: Path,
    calibration: ImageSet,
    evaluation: ImageSet,
    say: Callable[[str], None],
) -> tuple[Trials, dict[str, list[str]], str]:
    """The target's adapter over a checked model; raises SearchInputError when the spec's
    tensors do not fit the model."""
    if req.target == "litert":
        from converters.int8_litert import (
            LiteRTTrials,
            check_spec_fits_tflite,
            load_tflite,
            tflite_blocks,
        )

        check_spec_fits_tflite(load_tflite(req.model), evaluation)
        blocks = tflite_blocks(req.model, req.max_blocks)
        return (
            LiteRTTrials(req.model, work, blocks, calibration, evaluation, report=say),
            blocks,
            "n/a",
        )
    prepared, before, after = prepare_model(req.model, work)
    check_spec_fits(prepared, evaluation)
    blocks = blocks_of(load_model(prepared), req.max_blocks)
    onnx_trials = OnnxTrials(prepared, work, blocks, calibration, evaluation, report=say)
    return onnx_trials, blocks, f"{before} -> {after}"


def _verdict(result: SearchResult, req: SearchRequest, say: Callable[[str], None]) -> int:
    if result.chosen is None:
        best = result.best
        described = (
            f"{best.recipe.describe()} at {best.measurement.agreement:.4f}" if best else "nothing"
        )
        say(
            f"GATE NOT MET: no recipe reached {req.min_agreement} ({len(result.trials)} trials, "
            f"stopped: {result.stopped}); the best was {described}; no model written"
        )
        return EXIT_GATE_NOT_MET
    m = result.chosen.measurement
    if result.keep_fp32:
        say(
            f"KEEP FP32: the fastest recipe meeting the gate ({result.chosen.recipe.describe()}) "
            f"is {m.latency_ratio:.2f}x FP32's latency on this machine: the release recipe for "
            f"{req.target} here keeps FP32 (the INT8 model is in {req.out} for other devices)"
        )
        return EXIT_OK
    say(
        f"chose {result.chosen.recipe.describe()}: agreement {m.agreement:.4f}, "
        f"{m.latency_ratio:.2f}x FP32 latency ({m.p50_ms:.2f} vs {m.fp32_p50_ms:.2f} ms p50) "
        f"-> {req.out}"
    )
    return EXIT_OK


def _report(
    req: SearchRequest,
    result: SearchResult,
    blocks: dict[str, list[str]],
    trials: Trials,
    opsets: str,
    held_out: dict[str, Any] | None,
) -> dict[str, Any]:
    chosen = result.chosen
    per_block = (
        {b: ("float" if b in chosen.recipe.float_blocks else "int8") for b in blocks}
        if chosen
        else {}
    )
    summary: dict[str, Any] = {}
    if chosen is not None:
        m = chosen.measurement
        low, high = wilson_interval(m.agree, m.total)
        summary = {
            "recipe": chosen.recipe.as_dict(),
            "described": chosen.recipe.describe(),
            "per_block": per_block,
            "agreement": round(m.agreement, 4),
            "agreement_ci95": [round(low, 4), round(high, 4)],
            "evaluation_images": m.total,
            "fidelity": round(m.fidelity, 5),
            "latency_ms": {
                "fp32_p50": round(m.fp32_p50_ms, 3),
                "fp32_p95": round(m.fp32_p95_ms, 3),
                "int8_p50": round(m.p50_ms, 3),
                "int8_p95": round(m.p95_ms, 3),
                "ratio_p50": round(m.latency_ratio, 3),
            },
            "true_top1": {"fp32": trials.fp32_labelled, "int8": m.labelled} if m.labelled else None,
            "held_out": held_out,
        }
    return {
        "kind": "int8-search",
        "name": req.name,
        "title": req.title or f"{req.model.name} - static INT8 (QDQ), recipe found by search",
        "target": req.target,
        "command": req.command,
        "source": req.source or str(req.model),
        "source_sha256": sha256_file(req.model),
        "license": req.license,
        "artifact": None,
        "artifact_sha256": None,
        "opset": opsets,
        "calibration": {"folder": str(req.calibration), "images": len(trials.calibration.tensors)},
        "evaluation": {
            "folder": str(req.evaluation),
            "images": len(trials.evaluation.tensors),
            "labelled": trials.evaluation.labelled,
        },
        "time_budget_s": req.time_budget_s,
        "machine": cpu_facts(),
        "spec": req.spec.to_config(),
        "blocks": {b: nodes for b, nodes in blocks.items()},
        "chosen": summary or None,
        "search": result.as_dict(),
    }
