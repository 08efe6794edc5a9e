"""``python -m converters <subcommand>``: fetch, export, quantize and convert vision models.

Subcommands: fetch, image-sets, export-efficientnet, quantize, coreml, tflite, card, prepare.
Run ``python -m converters <subcommand> --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from converters.sources import cache_root, fetch_all
from edge_agent.store import sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CARDS = REPO_ROOT / "models"


def _say(message: str) -> None:
    print(f"[converters] {message}", flush=True)


def _command_line() -> str:
    return "python -m converters " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _sets(root: Path) -> tuple[Path, Path]:
    return root / "sets" / "calibration", root / "sets" / "evaluation"


def cmd_fetch(args: argparse.Namespace) -> int:
    fetch_all(args.cache)
    return 0


def cmd_image_sets(args: argparse.Namespace) -> int:
    from converters.images import write_image_set

    root = args.cache or cache_root()
    fetch_all(root)
    if getattr(args, "natural", None):
        return _write_natural_set(root, args.natural, args.out or root / "sets" / args.natural)
    cal, ev = _sets(root)
    n_cal = write_image_set(root / "images", cal, count=args.calibration_count, seed=0)
    n_ev = write_image_set(
        root / "images", ev, count=args.evaluation_count, seed=1, include_sources=True
    )
    _say(f"{len(n_cal)} calibration images in {cal}, {len(n_ev)} evaluation images in {ev}")
    return 0


def _write_natural_set(root: Path, kind: str, folder: Path) -> int:
    """The natural set (photos, mirror images, large crops) as PNGs: a held-out folder for
    ``quantize --holdout`` that the gate never sees."""
    import cv2

    from converters.images import natural_set

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    images = natural_set(root / "images", kind)
    for i, img in enumerate(images):
        if not cv2.imwrite(str(folder / f"{i:04d}.png"), img):
            raise OSError(f"could not write {folder / f'{i:04d}.png'}")
    _say(f"{len(images)} {kind} images in {folder}")
    return 0


def efficientnet_fp32(root: Path, cards: Path | None) -> Path:
    """Export EfficientNet-Lite0 to ONNX once (reused when the export is up to date)."""
    from converters.catalog import preset

    p = preset("efficientnet-lite0")
    target = p.path(root)
    if target.exists():
        return target
    import numpy as np
    import onnxruntime as ort
    import torch

    from converters.efficientnet_lite import export_onnx, load_pretrained, weights_path

    _say("exporting EfficientNet-Lite0 PyTorch -> ONNX (opset 17)")
    model = load_pretrained()
    export_onnx(model, target)
    probe = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(probe)).numpy()
    got = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(
        None, {"input": probe}
    )[0]
    diff = float(np.abs(expected - got).max())
    _say(f"ONNX vs PyTorch max |diff| = {diff:.2e}")
    spec_path = target.with_name(target.name + ".vision.json")
    spec_path.write_text(json.dumps(p.spec.to_config(), indent=2) + "\n")
    if cards is not None:
        _card(
            "efficientnet-lite0-fp32",
            p.title,
            target,
            "onnx",
            "vision-classify",
            f"{p.source}; weights sha256 {sha256_file(weights_path())}",
            p.license,
            p.spec,
            {"onnx_vs_pytorch_max_abs_diff": diff, "opset": 17},
            cards,
        )
    return target


def _card(
    name: str,
    title: str,
    artifact: Path,
    fmt: str,
    kind: str,
    source: str,
    license_: str,
    spec: Any,
    measurements: dict[str, Any],
    cards: Path,
    notes: tuple[str, ...] = (),
) -> None:
    from converters.cards import ModelCard

    if artifact.is_dir():
        size = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
        digest = "(directory; sha256 of the zipped package is in the release)"
    else:
        size, digest = artifact.stat().st_size, sha256_file(artifact)
    card = ModelCard(
        name=name,
        title=title,
        artifact=artifact.name,
        format=fmt,
        kind=kind,
        sha256=digest,
        size_bytes=size,
        source=source,
        license=license_,
        spec=spec,
        produced_by=_command_line(),
        measurements=measurements,
        notes=notes,
    )
    _say(f"model card -> {card.write(cards)}")


def cmd_export_efficientnet(args: argparse.Namespace) -> int:
    root = args.cache or cache_root()
    target = efficientnet_fp32(root, args.cards)
    _say(f"FP32 ONNX: {target}")
    return 0


def _spec_for(args: argparse.Namespace) -> Any:
    from converters.catalog import preset
    from edge_agent.vision.spec import VisionModelSpec

    if args.spec is not None:
        return VisionModelSpec.from_config(json.loads(args.spec.read_text()))
    return preset(args.preset).spec


def run_quantize(
    model: Path,
    out: Path,
    spec: Any,
    calibration: Path,
    evaluation: Path,
    threshold: float,
    *,
    name: str,
    title: str,
    source: str,
    license_: str,
    cards: Path | None,
    recipe: Any = None,
    natural: Any = (),
) -> int:
    from converters.images import list_images
    from converters.quantize import PLAIN_RECIPE, QuantizationRefused, quantize_onnx

    recipe = recipe or PLAIN_RECIPE
    _say(
        f"quantizing {model.name} -> {out.name} (static QDQ, U8 activations, S8 per-channel"
        f"{', 7-bit weights' if recipe.reduce_range else ''}"
        f"{', first/last layers float' if recipe.keep_first_and_last_fp32 else ''}, "
        f"{recipe.calibration_method} calibration)"
    )
    try:
        report = quantize_onnx(
            model,
            out,
            spec,
            list_images(calibration),
            list_images(evaluation),
            threshold=threshold,
            recipe=recipe,
            natural=natural,
        )
    except QuantizationRefused as e:
        _say(f"REFUSED: {e}; report in {out.name}.report.json, no model written")
        return 3
    d = report.as_dict()
    _say(
        f"{report.metric} {report.agreement} (threshold {threshold}); p50 FP32 "
        f"{d['fp32_latency']['p50_ms']:.2f} ms -> INT8 {d['int8_latency']['p50_ms']:.2f} ms"
    )
    if cards is not None:
        measured = {k: d[k] for k in ("metric", "agreement", "threshold", "details")}
        measured.update(
            {
                "evaluation_images": report.evaluation_images,
                "calibration_images": report.calibration_images,
                "fp32_latency": report.fp32_latency,
                "int8_latency": report.int8_latency,
                "speedup_p50": report.speedup_p50,
                "opset": f"{report.opset_before} -> {report.opset_after}",
                "settings": report.settings,
            }
        )
        _card(
            name,
            title,
            out,
            "onnx",
            f"vision-{spec.task}",
            f"{source}; FP32 sha256 {report.source_sha256}",
            license_,
            spec,
            measured,
            cards,
            notes=_recipe_notes(recipe, report.settings.get("kept_fp32", [])),
        )
    return 0


def _recipe_notes(recipe: Any, kept: list[str]) -> tuple[str, ...]:
    notes = []
    if recipe.reduce_range:
        notes.append(
            "7-bit weights (reduce_range): on x86 without VNNI (AVX2 only) onnxruntime "
            "multiplies U8 activations by S8 weights with VPMADDUBSW, whose 16-bit sums "
            "saturate with full 8-bit weights. On the x86 build machine that cut "
            "EfficientNet-Lite0's top-1 agreement to 0.60 (hard set) / 0.78 (natural set), "
            "while the same 8-bit model simulated in float agrees 0.82 / 0.98. Devices with "
            "VNNI or ARM dot-product instructions do not saturate: build for them with "
            "--no-reduce-range."
        )
    if kept:
        notes.append(f"Kept in float (sensitive first/last layers): {', '.join(kept)}.")
    notes.append(
        "Agreement is INT8 vs FP32 top-1; the hard set is random crops of all sample images "
        "(textures, pages, gray images), the natural set is photos, mirror images and large "
        "crops (or, for text orientation, text turned by 0/90/180/270 degrees)."
    )
    return tuple(notes)


def _default_spec_path(model: Path) -> Path:
    return model.with_name(model.name + ".vision.json")


def cmd_quantize(args: argparse.Namespace) -> int:
    from converters.catalog import Int8Recipe, preset

    model = args.source or args.model
    if model is None or (args.source and args.model):
        _say("ERROR: name the FP32 model once (python -m converters quantize MODEL.onnx ...)")
        return 2
    args.model = model
    if args.preset is None and args.spec is None:
        if not _default_spec_path(model).is_file():
            _say(
                f"ERROR: no vision spec for {model.name}: pass --spec SPEC.json or --preset "
                f"(or put the release config entry in {_default_spec_path(model).name})"
            )
            return 2
        args.spec = _default_spec_path(model)
    if args.out is None:
        stem = model.name.removesuffix(model.suffix).removesuffix("-fp32")
        args.out = model.with_name(stem + "-int8" + model.suffix)
    if args.target is not None:
        return _quantize_search(args)
    root = args.cache or cache_root()
    cal, ev = _sets(root)
    p = preset(args.preset) if args.preset else None
    recipe = Int8Recipe(
        calibration_method=args.calibration_method,
        reduce_range=args.reduce_range,
        keep_first_and_last_fp32=args.keep_first_last_fp32,
        min_agreement=args.min_agreement,
    )
    return run_quantize(
        args.model,
        args.out,
        _spec_for(args),
        args.calibration or cal,
        args.evaluation or args.calibration or ev,
        args.min_agreement,
        name=args.out.name.removesuffix(".onnx"),
        title=(p.title if p else args.model.name) + " - static INT8 (QDQ)",
        source=p.source if p else str(args.model),
        license_=p.license if p else "see source",
        cards=args.cards,
        recipe=recipe,
    )


def _quantize_search(args: argparse.Namespace) -> int:
    from converters.autoquant import SearchRequest, quantize_with_search
    from converters.catalog import preset

    root = args.cache or cache_root()
    cal, ev = _sets(root)
    p = preset(args.preset) if args.preset else None
    try:
        spec = _spec_for(args)
    except Exception as e:  # a spec file that is not JSON or not a vision config
        _say(f"ERROR: the vision spec cannot be read: {e}")
        return 2
    request = SearchRequest(
        model=args.model,
        out=args.out,
        spec=spec,
        calibration=args.calibration or cal,
        evaluation=args.evaluation or ev,
        min_agreement=args.min_agreement,
        target=args.target,
        report=args.report,
        time_budget_s=args.time_budget,
        seed=args.seed,
        calibration_limit=args.calibration_limit,
        max_blocks=args.max_blocks,
        calibrations=tuple(m for m in args.calibration_methods.split(",") if m),
        weight_bits=tuple(int(b) for b in args.weight_bits.split(",") if b.strip()),
        holdout=args.holdout,
        cards=args.cards,
        title=(p.title + " - static INT8 (QDQ), recipe found by search") if p else "",
        source=p.source if p else "",
        license=p.license if p else "see source",
        command=_command_line(),
    )
    return quantize_with_search(request, say=_say)


def cmd_coreml(args: argparse.Namespace) -> int:
    from converters.catalog import preset
    from converters.coreml import convert_to_mlpackage, weight_dtypes
    from converters.efficientnet_lite import load_pretrained

    p = preset("efficientnet-lite0")
    out = args.out or (root_of(args) / "efficientnet-lite0" / "efficientnet-lite0-int8w.mlpackage")
    _say(f"converting EfficientNet-Lite0 PyTorch -> Core ML {out.name} (int8 weights)")
    convert_to_mlpackage(load_pretrained(), out)
    counts = weight_dtypes(out)
    _say(f"ML program constants: {counts}")
    if args.cards is not None:
        _card(
            "efficientnet-lite0-coreml-int8w",
            p.title + " - Core ML ML program, int8 linear weights",
            out,
            "mlpackage",
            "vision-classify",
            p.source,
            p.license,
            p.spec,
            {"ml_program_constants": counts},
            args.cards,
            notes=(
                "Converted and saved on Linux with coremltools 9; prediction needs macOS, so "
                "accuracy and latency are measured by the macOS test, not here.",
            ),
        )
    return 0


def root_of(args: argparse.Namespace) -> Path:
    root: Path = args.cache or cache_root()
    return root


def cmd_tflite(args: argparse.Namespace) -> int:
    from converters.catalog import preset

    p = preset("efficientnet-lite0")
    out = args.out or (root_of(args) / "efficientnet-lite0" / "efficientnet-lite0-fp32.tflite")
    from converters.efficientnet_lite import weights_path
    from converters.tflite import create_venv

    python = args.python
    if python is None:
        venv = root_of(args) / "litert-venv"
        _say(f"preparing the litert-torch venv in {venv}")
        python = str(create_venv(venv))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    _say(f"converting EfficientNet-Lite0 PyTorch -> TFLite with {python}")
    cmd = [python, "-m", "converters.tflite", "--out", str(out), "--weights", str(weights_path())]
    done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0:
        _say("TFLite conversion failed (see the error above)")
        return 4
    measured = compare_backends(root_of(args), p.path(root_of(args)), out, p.spec)
    _say(f"TFLite vs ONNX FP32: {measured}")
    if args.cards is not None:
        _card(
            "efficientnet-lite0-fp32-tflite",
            p.title + " - TFLite (litert-torch), float32, NCHW input",
            out,
            "tflite",
            "vision-classify",
            p.source,
            p.license,
            p.spec,
            measured,
            args.cards,
        )
    return 0


def compare_backends(root: Path, onnx_path: Path, other: Path, spec: Any) -> dict[str, Any]:
    """Top-1 agreement and latency of another format (LiteRT) against ONNX FP32."""
    from functools import partial

    from converters.images import list_images
    from converters.measure import time_calls, top1_agreement
    from converters.quantize import image_tensors
    from edge_agent.vision.backends import open_backend

    tensors = image_tensors(list_images(_sets(root)[1]), spec)
    reference = open_backend("onnx", onnx_path)
    candidate = open_backend(other.suffix.lstrip("."), other)
    ref = [reference.run(t)[0] for t in tensors]
    cand = [candidate.run(t)[0] for t in tensors]
    return {
        "evaluation_images": len(tensors),
        "top1_agreement_vs_onnx_fp32": round(top1_agreement(ref, cand), 4),
        "max_abs_logit_diff": round(
            max(float(abs(a - b).max()) for a, b in zip(ref, cand, strict=True)), 5
        ),
        "onnxruntime_latency": time_calls([partial(reference.run, t) for t in tensors]).as_dict(),
        f"{candidate.name}_latency": time_calls(
            [partial(candidate.run, t) for t in tensors]
        ).as_dict(),
    }


def cmd_card(args: argparse.Namespace) -> int:
    """A card for a source model shipped as-is (e.g. BlazeFace .tflite), or regenerated from
    a search report (``--from-report``)."""
    from converters.catalog import preset

    if args.from_report is not None:
        from converters.cards import card_from_search_report
        from edge_agent.vision.spec import VisionModelSpec

        report = json.loads(args.from_report.read_text())
        if "spec" in report:
            spec = VisionModelSpec.from_config(report["spec"])
        elif args.preset:
            spec = preset(args.preset).spec
        else:
            _say("ERROR: this report holds no vision spec: pass --preset")
            return 2
        if args.artifact is not None:
            report["artifact"] = str(args.artifact)
            if sha256_file(args.artifact) != report["artifact_sha256"]:
                _say(f"ERROR: {args.artifact} is not the artifact the report measured (sha256)")
                return 2
        _say(f"model card -> {card_from_search_report(report, spec, args.cards)}")
        return 0
    if not args.preset:
        _say("ERROR: card needs --preset (or --from-report)")
        return 2
    p = preset(args.preset)
    fmt = p.relative_path.rsplit(".", 1)[-1]
    kind = f"vision-{p.spec.task}"
    _card(
        p.name, p.title, p.path(args.cache), fmt, kind, p.source, p.license, p.spec, {}, args.cards
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Everything the demo, tests and benchmark need, reusing what is already in the cache."""
    from converters.catalog import preset

    root = args.cache or cache_root()
    fetch_all(root)
    cal, ev = _sets(root)
    if not ev.exists() or not cal.exists():
        cmd_image_sets(argparse.Namespace(cache=root, calibration_count=48, evaluation_count=96))
    efficientnet_fp32(root, args.cards)
    from converters.catalog import INT8_PRESETS
    from converters.images import natural_set

    for name in INT8_PRESETS:
        p = preset(name)
        if p.int8_is_current(root):
            continue
        code = run_quantize(
            p.path(root),
            p.int8_path(root),
            p.spec,
            cal,
            ev,
            p.int8.min_agreement,
            name=f"{name}-int8",
            title=p.title + " - static INT8 (QDQ)",
            source=p.source,
            license_=p.license,
            # a searched recipe's card comes from its search report, never from a rebuild
            cards=None if p.int8.found_by else args.cards,
            recipe=p.int8,
            natural=natural_set(root / "images", p.natural_set),
        )
        if code:
            return code
    _say(f"ready: {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m converters", description=__doc__)
    parser.add_argument("--cache", type=Path, default=None, help="model cache (default env)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("fetch", help="fetch source models and sample images").set_defaults(
        func=cmd_fetch
    )

    p = sub.add_parser("image-sets", help="write calibration/evaluation crop sets")
    p.add_argument("--calibration-count", type=int, default=48)
    p.add_argument("--evaluation-count", type=int, default=96)
    p.add_argument(
        "--natural",
        choices=("photos", "rotated_text"),
        help="write this natural set instead (a held-out folder for quantize --holdout)",
    )
    p.add_argument("--out", type=Path, help="folder for --natural (default: sets/<kind>)")
    p.set_defaults(func=cmd_image_sets)

    p = sub.add_parser("export-efficientnet", help="PyTorch -> ONNX FP32 (EfficientNet-Lite0)")
    p.add_argument("--cards", type=Path, default=DEFAULT_CARDS)
    p.set_defaults(func=cmd_export_efficientnet)

    p = sub.add_parser(
        "quantize",
        help="ONNX FP32 -> static QDQ INT8 with an agreement gate (--target: search the recipe)",
    )
    p.add_argument("source", type=Path, nargs="?", help="the FP32 .onnx model (or --model)")
    p.add_argument("--model", type=Path, help="the FP32 .onnx model (older spelling)")
    p.add_argument("--out", type=Path, help="INT8 model (default: <model>-int8.onnx beside it)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--preset", help="efficientnet-lite0, text-orientation, pp-ocr-cls")
    group.add_argument(
        "--spec", type=Path, help="vision spec JSON (default: <model>.vision.json beside it)"
    )
    p.add_argument("--calibration", type=Path, help="folder of calibration images")
    p.add_argument("--evaluation", "--eval", type=Path, help="folder of evaluation images")
    p.add_argument("--min-agreement", type=float, required=True, help="refuse below this")
    p.add_argument(
        "--target",
        choices=("onnxruntime", "litert"),
        help="search recipes for this runtime: the fastest one meeting --min-agreement",
    )
    p.add_argument("--report", type=Path, help="search report JSON (default: <out>.report.json)")
    p.add_argument("--time-budget", type=float, help="seconds the search may take")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling and tie order")
    p.add_argument("--calibration-limit", type=int, default=64, help="calibration images used")
    p.add_argument(
        "--calibration-methods",
        default="",
        help="comma list to narrow the search (default: minmax,entropy,percentile)",
    )
    p.add_argument("--weight-bits", default="", help="comma list to narrow the search (8,7)")
    p.add_argument(
        "--max-blocks", type=int, default=24, help="merge blocks into at most this many groups"
    )
    p.add_argument(
        "--holdout", type=Path, help="held-out images: reported for the pick, never tuned on"
    )
    p.add_argument(
        "--calibration-method", choices=("minmax", "percentile", "entropy"), default="minmax"
    )
    p.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="7-bit weights: needed on x86 without VNNI (AVX2), where 8-bit U8xS8 saturates",
    )
    p.add_argument(
        "--keep-first-last-fp32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave the first convolution and the last Gemm/MatMul in float",
    )
    p.add_argument("--cards", type=Path, default=DEFAULT_CARDS)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("coreml", help="PyTorch -> Core ML .mlpackage with int8 weights")
    p.add_argument("--out", type=Path)
    p.add_argument("--cards", type=Path, default=DEFAULT_CARDS)
    p.set_defaults(func=cmd_coreml)

    p = sub.add_parser("tflite", help="PyTorch -> TFLite via litert-torch")
    p.add_argument("--out", type=Path)
    p.add_argument("--python", help="python of a venv with litert-torch (default: make one)")
    p.add_argument("--cards", type=Path, default=DEFAULT_CARDS)
    p.set_defaults(func=cmd_tflite)

    p = sub.add_parser("card", help="write the model card of a source model used as-is")
    p.add_argument("--preset")
    p.add_argument("--from-report", type=Path, help="regenerate a card from a search report")
    p.add_argument("--artifact", type=Path, help="with --from-report: the artifact's path now")
    p.add_argument("--cards", type=Path, default=DEFAULT_CARDS)
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("prepare", help="fetch + export + quantize what demo/tests/bench need")
    p.add_argument("--cards", type=Path, default=None, help="also write model cards here")
    p.set_defaults(func=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
