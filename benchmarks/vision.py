"""Vision benchmark: where a classification request's time goes, and what INT8 costs in accuracy.

One run measures, for EfficientNet-Lite0 and the text-orientation classifier (PP-LCNet):

- **Agreement**: INT8 vs FP32 top-1 agreement on the hard evaluation crops and on a
  natural set (photos, their mirror images and large crops; for the text model: text
  crops turned by 0/90/180/270 degrees).
- **Model latency**: onnxruntime FP32, onnxruntime INT8 and OpenCV DNN FP32 (the peer) on
  the same evaluation tensors, interleaved image by image; OpenCV DNN on the QDQ INT8 model
  is attempted and its error recorded.
- **Endpoint vs in-process** on one sample image, every mode once per round in a random
  order (so machine load hits all of them alike):
  ``onnxruntime_run`` (session.run on the preprocessed tensor), ``raw_pipeline`` (what a
  user writes by hand: cv2.imdecode + the same preprocessing + session.run + numpy
  top-5), ``agent_pipeline`` (the agent's checked decoder + ``VisionModel.classify``, in
  process), ``http_raw_body`` and ``http_multipart`` (the agent's local API with the vision
  router, served by uvicorn in a subprocess, called over loopback with ``http.client``),
  ``http_raw_body_httpx`` (the same with httpx, for the client's share),
  ``http_raw_body_h11_server`` (the same server forced onto uvicorn's pure-Python h11
  parser, to show what httptools buys) and ``http_healthz`` (the floor: one GET without
  a body or a model). The endpoint reports its own
  stage timings, so the breakdown says where each request's time went.

All onnxruntime sessions use the agent's settings (2 intra-op threads, no spinning), so the
comparison isolates what the agent adds.

Usage: ``python benchmarks/vision.py [--requests 150] [--out benchmarks/results/vision.json]``
(prepares the model cache first with ``python -m converters prepare``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.__main__ import main as converters_main
from converters.catalog import preset
from converters.demo import demo_release
from converters.images import (
    list_images,
    load_images,
    natural_variants,
    rotated_text_variants,
)
from converters.measure import latency_of, top1_agreement
from converters.quantize import classifier_details, image_tensors
from converters.sources import cache_root

REPO = Path(__file__).resolve().parent.parent

TOKEN = "benchmark-token-0123456789"
MODELS = {
    "efficientnet-lite0": {"fp32": "efficientnet-lite0-fp32", "int8": "efficientnet-lite0-int8"},
    "text-orientation": {"fp32": "text-orientation-fp32", "int8": "text-orientation-int8"},
}
# (model, precision, sample image, upload encoding)
ENDPOINT_CASES = (
    ("efficientnet-lite0", "fp32", "chelsea.png", "png"),
    ("efficientnet-lite0", "int8", "chelsea.png", "png"),
    ("efficientnet-lite0", "int8", "chelsea.png", "jpeg"),
    ("text-orientation", "fp32", "page.png", "png"),
    ("text-orientation", "int8", "page.png", "png"),
)
NATURAL_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "grace_hopper.jpg",
    "camera.png",
)
TEXT_PHOTOS = ("page.png", "text.png")
SERVER_STAGES = (
    "read_ms",
    "thread_hop_ms",
    "decode_ms",
    "preprocess_ms",
    "inference_ms",
    "postprocess_ms",
)


# --- the server --------------------------------------------------------------------------


def serve(port: int, http_impl: str = "auto") -> None:
    """The agent's local API (auth, error handler) with the vision router, as the daemon runs it."""
    import tempfile

    import uvicorn

    from edge_agent.api import create_local_api
    from edge_agent.runtime import ModelRegistry
    from edge_agent.settings import AgentSettings
    from edge_agent.vision.api import vision_router
    from edge_agent.vision.provider import ReleaseVisionModels

    settings = AgentSettings(state_dir=Path(tempfile.mkdtemp(prefix="outpost-bench-")))
    provider = ReleaseVisionModels(demo_release())
    for name, task in provider.tasks().items():
        provider.vision_model(name, task)  # load before the first request
    router = vision_router(
        provider,
        max_upload_bytes=settings.max_upload_bytes,
        max_image_pixels=settings.max_image_pixels,
    )
    app = create_local_api(
        ModelRegistry(settings, loaders={}), settings, api_token=TOKEN, extra_routers=[router]
    )
    # As the daemon's uvicorn.Config: default ("auto") event loop and HTTP implementation
    # (httptools when installed); "h11" only for the comparison server.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http=http_impl,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_facts() -> dict[str, Any]:
    import importlib.util

    import uvicorn

    return {
        "uvicorn": uvicorn.__version__,
        "http_parser": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "client": "http.client keep-alive (httpx for http_raw_body_httpx)",
    }


# --- measurements ------------------------------------------------------------------------


def _session(path: Path) -> Any:
    """An onnxruntime session with the agent backend's options."""
    from edge_agent.vision.backends import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path)


def _p(samples: Sequence[float]) -> dict[str, Any]:
    return latency_of(samples).as_dict()


def agreement(fp32: Any, int8: Any, tensors: Sequence[Any]) -> dict[str, Any]:
    ref = [fp32.run(t)[0] for t in tensors]
    cand = [int8.run(t)[0] for t in tensors]
    return {
        "images": len(tensors),
        "top1_agreement": round(top1_agreement(ref, cand), 4),
        **classifier_details(ref, cand),
    }


def _opencv_net(path: Path, probe: Any) -> tuple[Any, str | None]:
    """An OpenCV DNN net that ran once on ``probe``, or the error OpenCV gave."""
    import cv2

    try:
        net = cv2.dnn.readNetFromONNX(str(path))
        net.setInput(probe)
        net.forward()
    except cv2.error as e:
        lines = str(e).strip().splitlines()
        return None, " ".join(lines[-2:])[:300]
    return net, None


def model_latency(paths: dict[str, Path], tensors: Sequence[Any]) -> dict[str, Any]:
    """onnxruntime FP32/INT8 and OpenCV DNN FP32/INT8 (when it loads), interleaved per image."""
    fp32, int8 = _session(paths["fp32"]), _session(paths["int8"])
    runs: dict[str, Callable[[Any], Any]] = {
        "onnxruntime_fp32": lambda t: fp32.run(t)[0],
        "onnxruntime_int8": lambda t: int8.run(t)[0],
    }
    errors: dict[str, str] = {}
    for precision in ("fp32", "int8"):
        net, error = _opencv_net(paths[precision], tensors[0])
        if net is None:
            errors[f"opencv_dnn_{precision}"] = error or "unknown error"
            continue

        def opencv(t: Any, net: Any = net) -> Any:
            net.setInput(t)
            return net.forward()

        runs[f"opencv_dnn_{precision}"] = opencv
    samples: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    rng = random.Random(0)
    for t in tensors[:3]:
        for run in runs.values():
            run(t)
    for _ in range(2):
        for t in tensors:
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                runs[k](t)
                samples[k].append((time.perf_counter() - t0) * 1e3)
    out: dict[str, Any] = {k: _p(v) for k, v in samples.items()}
    ref = [fp32.run(t)[0] for t in tensors]
    for k in runs:
        out[k]["top1_agreement_vs_onnxruntime_fp32"] = round(
            top1_agreement(ref, [runs[k](t) for t in tensors]), 4
        )
    for k, error in errors.items():
        out[k] = {"ok": False, "error": error}
    p50 = {k: out[k]["p50_ms"] for k in runs}
    out["int8_speedup_p50"] = round(p50["onnxruntime_fp32"] / p50["onnxruntime_int8"], 3)
    if "opencv_dnn_fp32" in p50:
        out["opencv_dnn_fp32_vs_onnxruntime_fp32_p50"] = round(
            p50["opencv_dnn_fp32"] / p50["onnxruntime_fp32"], 3
        )
    return out


def _multipart(image: bytes, filename: str, content_type: str, model: str) -> tuple[bytes, str]:
    boundary = "outpost-benchmark-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()
    return head + image + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def endpoint_case(
    ports: tuple[int, int],
    provider: Any,
    paths: dict[str, Path],
    name: str,
    image: bytes,
    ctype: str,
    requests: int,
) -> dict[str, Any]:
    """Every mode once per round, in a fresh random order each round."""
    import cv2
    import httpx

    from edge_agent.vision.decode import decode_image
    from edge_agent.vision.preprocess import prepare

    model = provider.vision_model(name, "classify")
    spec = model.spec.preprocess
    raw_session = _session(paths[name])
    tensor = prepare(decode_image(image, max_pixels=40_000_000).pixels, spec)[0]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    path = f"/v1/vision/classify?model={name}&top_k=5"
    form, form_type = _multipart(image, "image." + ctype.split("/")[1], ctype, name)
    port, h11_port = ports
    conn = http.client.HTTPConnection("127.0.0.1", port)
    h11_conn = http.client.HTTPConnection("127.0.0.1", h11_port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth)
    stages: dict[str, dict[str, list[float]]] = {}

    def post(body: bytes, content_type: str, mode: str, via: Any = conn) -> None:
        via.request("POST", path, body=body, headers={**auth, "Content-Type": content_type})
        response = via.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{mode}: HTTP {response.status}: {payload[:300]!r}")
        timings = json.loads(payload)["timings_ms"]
        for k, v in timings.items():
            stages.setdefault(mode, {}).setdefault(k, []).append(v)

    in_process: dict[str, list[float]] = {}

    def agent_pipeline() -> None:
        t0 = time.perf_counter()
        decoded = decode_image(image, max_pixels=40_000_000)
        decode_ms = (time.perf_counter() - t0) * 1e3
        times = model.classify(decoded.pixels, 5).times
        for k, v in (
            ("decode_ms", decode_ms),
            ("preprocess_ms", times.preprocess_ms),
            ("inference_ms", times.inference_ms),
            ("postprocess_ms", times.postprocess_ms),
        ):
            in_process.setdefault(k, []).append(v)

    def raw_pipeline() -> None:
        bgr = np.asarray(cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR), np.uint8)
        logits = raw_session.run(prepare(bgr, spec)[0])[0].reshape(-1).astype(np.float64)
        e = np.exp(logits - logits.max())
        probs = e / e.sum()
        np.argsort(-probs)[:5]

    def httpx_post() -> None:
        client.post(path, content=image, headers={"Content-Type": ctype}).raise_for_status()

    def healthz() -> None:
        conn.request("GET", "/healthz")
        conn.getresponse().read()

    modes: dict[str, Callable[[], None]] = {
        "onnxruntime_run": lambda: raw_session.run(tensor),
        "raw_pipeline": raw_pipeline,
        "agent_pipeline": agent_pipeline,
        "http_raw_body": lambda: post(image, ctype, "http_raw_body"),
        "http_multipart": lambda: post(form, form_type, "http_multipart"),
        "http_raw_body_h11_server": lambda: post(
            image, ctype, "http_raw_body_h11_server", h11_conn
        ),
        "http_raw_body_httpx": httpx_post,
        "http_healthz": healthz,
    }
    for _ in range(5):  # warm every path
        for run in modes.values():
            run()
    stages.clear()
    in_process.clear()
    samples: dict[str, list[float]] = {k: [] for k in modes}
    order = list(modes)
    rng = random.Random(1)
    for _ in range(requests):
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            modes[k]()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    conn.close()
    h11_conn.close()
    client.close()
    return summarize(len(image), ctype, samples, stages, in_process)


def summarize(
    size: int,
    ctype: str,
    samples: dict[str, list[float]],
    stages: dict[str, dict[str, list[float]]],
    in_process: dict[str, list[float]],
) -> dict[str, Any]:
    lat = {k: latency_of(v) for k, v in samples.items()}
    out: dict[str, Any] = {
        "image_bytes": size,
        "upload_type": ctype,
        "latency": {k: v.as_dict() for k, v in lat.items()},
        "agent_pipeline_stage_p50_ms": {
            k: round(float(np.median(v)), 3) for k, v in in_process.items()
        },
    }
    overhead: dict[str, Any] = {}
    for http_mode in ("http_raw_body", "http_multipart", "http_raw_body_h11_server"):
        for base in ("agent_pipeline", "raw_pipeline"):
            a, b = lat[http_mode], lat[base]
            paired = np.asarray(samples[http_mode]) - np.asarray(samples[base])
            overhead[f"{http_mode}_vs_{base}"] = {
                "p50": round(a.p50_ms / b.p50_ms - 1, 4),
                "p95": round(a.p95_ms / b.p95_ms - 1, 4),
                "paired_median_ms": round(float(np.median(paired)), 3),
            }
    out["overhead"] = overhead
    breakdown: dict[str, Any] = {}
    for mode, per_stage in stages.items():
        n = len(samples[mode])
        inside = np.sum([np.asarray(per_stage[s][:n]) for s in SERVER_STAGES], axis=0)
        outside = np.asarray(samples[mode]) - inside
        breakdown[mode] = {
            **{s: round(float(np.median(per_stage[s])), 3) for s in SERVER_STAGES},
            "http_client_and_framework_ms": round(float(np.median(outside)), 3),
        }
    out["endpoint_stage_p50_ms"] = breakdown
    return out


def natural_sets(root: Path) -> dict[str, list[Any]]:
    photos = load_images([root / "images" / n for n in NATURAL_PHOTOS])
    texts = load_images([root / "images" / n for n in TEXT_PHOTOS])
    return {
        "efficientnet-lite0": natural_variants(photos, crops=84, seed=7),
        "text-orientation": rotated_text_variants(texts, crops=12, seed=7),
    }


def int8_recipe(int8_path: Path) -> dict[str, Any]:
    """The recipe the INT8 model was built with, from the converter's report beside it."""
    report_path = int8_path.with_name(int8_path.name + ".report.json")
    if not report_path.is_file():
        return {"unknown": f"no {report_path.name} beside the model"}
    report = json.loads(report_path.read_text())
    recipe: dict[str, Any] = dict(report.get("settings", {}).get("recipe", {}))
    recipe["weights"] = report.get("settings", {}).get("weights")
    recipe["kept_fp32_nodes"] = len(report.get("settings", {}).get("kept_fp32", []))
    return recipe


def rotation_labels(fp32: Any, tensors: Sequence[Any]) -> tuple[list[int], str]:
    """True labels of the rotated text set (upright, 90 clockwise, 180, 90 counter-clockwise
    for every crop, see ``rotated_text_variants``). Which way the model's "90" turns is
    not written down where we got it: the convention FP32 agrees with more is used, and
    named in the result."""
    conventions = {
        "90 = turned clockwise": (0, 1, 2, 3),
        "90 = turned counter-clockwise": (0, 3, 2, 1),
    }
    predicted = [int(np.argmax(fp32.run(t)[0])) for t in tensors]
    best = max(
        conventions,
        key=lambda c: sum(p == conventions[c][i % 4] for i, p in enumerate(predicted)),
    )
    return [conventions[best][i % 4] for i in range(len(tensors))], best


def accuracy(model: Any, tensors: Sequence[Any], labels: Sequence[int]) -> dict[str, Any]:
    right = sum(int(np.argmax(model.run(t)[0]) == y) for t, y in zip(tensors, labels, strict=True))
    return {"top1_accuracy": round(right / len(labels), 4), "correct": right, "images": len(labels)}


def side_by_side(
    entry: dict[str, Any], recipe: dict[str, Any], labelled: dict[str, Any] | None
) -> dict[str, Any]:
    """FP32 and the shipped INT8 recipe in one place, per runtime (onnxruntime here)."""
    lat = entry["model_latency_on_hard_set"]
    agree = entry["agreement_int8_vs_fp32"]
    fp32, int8 = lat["onnxruntime_fp32"], lat["onnxruntime_int8"]
    return {
        "onnxruntime": {
            "fp32": {
                "p50_ms": fp32["p50_ms"],
                "p95_ms": fp32["p95_ms"],
                "true_top1": labelled["fp32"] if labelled else None,
            },
            "int8": {
                "recipe": recipe,
                "p50_ms": int8["p50_ms"],
                "p95_ms": int8["p95_ms"],
                "latency_ratio_p50": round(int8["p50_ms"] / fp32["p50_ms"], 3),
                "slower_than_fp32": int8["p50_ms"] >= fp32["p50_ms"],
                "agreement_hard_set": agree["hard_set"]["top1_agreement"],
                "agreement_natural_set": agree["natural_set"]["top1_agreement"],
                "true_top1": labelled["int8"] if labelled else None,
            },
            "labels": labelled["source"] if labelled else "no labelled set here",
        }
    }


def run(requests: int, out: Path, *, endpoints: bool = True) -> dict[str, Any]:
    import cv2
    import onnxruntime as ort

    from edge_agent.vision.decode import decode_image
    from edge_agent.vision.preprocess import prepare
    from edge_agent.vision.provider import ReleaseVisionModels

    assert converters_main(["prepare"]) == 0
    root = cache_root()
    load_start = [round(x, 2) for x in os.getloadavg()]
    hard_paths = list_images(root / "sets" / "evaluation")
    natural = natural_sets(root)
    natural_kinds = {name: preset(name).natural_set for name in MODELS}
    release = demo_release(root)
    paths = {a.name: a.path for a in release.artifacts}
    provider = ReleaseVisionModels(release)
    port, h11_port = _free_port(), _free_port()
    servers = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve", "--port", str(p), "--http", impl],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        for p, impl in ((port, "auto"), (h11_port, "h11"))
        if endpoints
    ]
    results: dict[str, Any] = {}
    try:
        for p, server in zip((port, h11_port), servers, strict=False):
            _wait_for_server(p, server)
        for model_name, names in MODELS.items():
            spec = preset(model_name).spec
            model_paths = {p: paths[n] for p, n in names.items()}
            hard = image_tensors(hard_paths, spec)
            nat = [prepare(img, spec.preprocess)[0] for img in natural[model_name]]
            fp32, int8 = _session(model_paths["fp32"]), _session(model_paths["int8"])
            entry: dict[str, Any] = {
                "agreement_int8_vs_fp32": {
                    "hard_set": agreement(fp32, int8, hard),
                    "natural_set": agreement(fp32, int8, nat),
                },
                "model_latency_on_hard_set": model_latency(model_paths, hard),
                "endpoint": {},
            }
            labelled = None
            if natural_kinds[model_name] == "rotated_text":
                labels, convention = rotation_labels(fp32, nat)
                labelled = {
                    "source": f"natural set, labels by construction ({convention})",
                    "fp32": accuracy(fp32, nat, labels),
                    "int8": accuracy(int8, nat, labels),
                }
            entry["side_by_side"] = side_by_side(entry, int8_recipe(model_paths["int8"]), labelled)
            results[model_name] = entry
            print(json.dumps({model_name: entry}, indent=1), flush=True)
        for model_name, precision, image_name, encoding in ENDPOINT_CASES if endpoints else ():
            image = (root / "images" / image_name).read_bytes()
            ctype = "image/png"
            if encoding == "jpeg":
                bgr = decode_image(image, max_pixels=40_000_000).pixels
                image = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                ctype = "image/jpeg"
            name = MODELS[model_name][precision]
            key = f"{precision}_{Path(image_name).stem}_{encoding}"
            case = endpoint_case(
                (port, h11_port), provider, {name: paths[name]}, name, image, ctype, requests
            )
            results[model_name]["endpoint"][key] = case
            print(json.dumps({model_name: {key: case}}, indent=1), flush=True)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    report = {
        "benchmark": "vision",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"python benchmarks/vision.py --requests {requests}"
        + ("" if endpoints else " --models-only"),
        "machine": {
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": load_start,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "opencv": cv2.__version__,
            **_server_facts(),
        },
        "rounds_per_endpoint_case": requests,
        "models": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


def _wait_for_server(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=150, help="rounds per endpoint case")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/vision.json")
    parser.add_argument(
        "--models-only",
        action="store_true",
        help="FP32 vs INT8 side by side only (agreement, accuracy, model latency): no HTTP cases",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--http", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.http)
    else:
        run(args.requests, args.out, endpoints=not args.models_only)


if __name__ == "__main__":
    main()
