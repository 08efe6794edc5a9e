"""Vision benchmark: FP32 vs INT8, raw onnxruntime vs the agent's HTTP endpoint, OpenCV DNN.

One run measures, for EfficientNet-Lite0 and the text-orientation classifier:
- onnxruntime FP32 and static INT8 (QDQ) latency p50/p95 on the evaluation crops, and
  top-1 agreement of INT8 with FP32;
- OpenCV DNN as a peer on the same tensors (it cannot load QDQ INT8 models: the error
  is recorded);
- the agent's ``/v1/vision/classify`` served by uvicorn in a separate process, over
  loopback, against the same pipeline (decode + preprocess + inference + postprocess)
  called in-process on the same image bytes, in interleaved blocks; the endpoint's
  own stage timings say where the time goes.

Usage: ``python benchmarks/vision.py [--requests 200] [--out benchmarks/results/vision.json]``
(prepares the model cache first with ``python -m converters prepare``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from converters.__main__ import main as converters_main  # noqa: E402
from converters.catalog import preset  # noqa: E402
from converters.demo import demo_release  # noqa: E402
from converters.images import list_images  # noqa: E402
from converters.measure import latency_of, time_calls, top1_agreement  # noqa: E402
from converters.quantize import image_tensors  # noqa: E402
from converters.sources import cache_root  # noqa: E402

MODELS = {
    "efficientnet-lite0": {
        "fp32": "efficientnet-lite0-fp32",
        "int8": "efficientnet-lite0-int8",
        "image": "chelsea.png",
    },
    "text-orientation": {
        "fp32": "text-orientation-fp32",
        "int8": "text-orientation-int8",
        "image": "page.png",
    },
}


def serve(port: int) -> None:
    """The agent's vision routes behind the same error handling as the local API."""
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from edge_agent.errors import AgentError
    from edge_agent.vision.api import vision_router
    from edge_agent.vision.provider import ReleaseVisionModels

    provider = ReleaseVisionModels(demo_release())
    for name, task in provider.tasks().items():
        provider.vision_model(name, task)  # load before the first request
    app = FastAPI()

    @app.exception_handler(AgentError)
    async def _agent_error(_: Request, exc: AgentError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content={"error": str(exc)})

    app.include_router(vision_router(provider))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def opencv_dnn(path: Path, tensors: list[Any], reference: list[Any]) -> dict[str, Any]:
    import cv2

    try:
        net = cv2.dnn.readNetFromONNX(str(path))

        def run(t: Any) -> Any:
            net.setInput(t)
            return net.forward()

        outs = [run(t) for t in tensors]
    except cv2.error as e:
        first = str(e).strip().splitlines()
        return {"ok": False, "error": " ".join(first[-2:])[:300]}
    return {
        "ok": True,
        "latency": time_calls([partial(run, t) for t in tensors]).as_dict(),
        "top1_agreement_vs_onnxruntime_fp32": round(top1_agreement(reference, outs), 4),
    }


def raw_and_endpoint(
    url: str, model: Any, name: str, image: bytes, requests: int, block: int = 20
) -> dict[str, Any]:
    """Interleave blocks of in-process pipeline calls and HTTP requests on the same bytes."""
    import httpx

    from edge_agent.vision.decode import decode_image
    from edge_agent.vision.preprocess import prepare

    def pipeline() -> None:
        img = decode_image(image, max_pixels=40_000_000)
        model.classify(img.pixels, 5)

    tensor = prepare(decode_image(image, max_pixels=40_000_000).pixels, model.spec.preprocess)[0]
    raw_infer: list[float] = []
    raw_pipe: list[float] = []
    http: list[float] = []
    stages: dict[str, list[float]] = {}
    files = {"file": ("image.png", image, "image/png")}
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(5):  # warm both paths
            pipeline()
            client.post("/v1/vision/classify", files=files, data={"model": name})
        for _ in range(max(1, requests // block)):
            for _ in range(block):
                t0 = time.perf_counter()
                model.infer(tensor)
                raw_infer.append((time.perf_counter() - t0) * 1e3)
                t0 = time.perf_counter()
                pipeline()
                raw_pipe.append((time.perf_counter() - t0) * 1e3)
            for _ in range(block):
                t0 = time.perf_counter()
                r = client.post("/v1/vision/classify", files=files, data={"model": name})
                http.append((time.perf_counter() - t0) * 1e3)
                r.raise_for_status()
                for k, v in r.json()["timings_ms"].items():
                    stages.setdefault(k, []).append(v)
    e2e = latency_of(http)
    pipe = latency_of(raw_pipe)
    stage_p50 = {k: round(float(np.median(v)), 4) for k, v in stages.items()}
    in_handler = sum(stage_p50.values())
    return {
        "image_bytes": len(image),
        "raw_onnxruntime_inference": latency_of(raw_infer).as_dict(),
        "raw_pipeline_in_process": pipe.as_dict(),
        "http_endpoint": e2e.as_dict(),
        "endpoint_overhead_vs_pipeline_p50": round(e2e.p50_ms / pipe.p50_ms - 1, 4),
        "endpoint_overhead_vs_pipeline_p95": round(e2e.p95_ms / pipe.p95_ms - 1, 4),
        "endpoint_stage_p50_ms": stage_p50,
        "endpoint_http_and_multipart_p50_ms": round(e2e.p50_ms - in_handler, 4),
    }


def run(requests: int, out: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from edge_agent.vision.provider import ReleaseVisionModels

    assert converters_main(["prepare"]) == 0
    root = cache_root()
    evaluation = list_images(root / "sets" / "evaluation")
    release = demo_release(root)
    paths = {a.name: a.path for a in release.artifacts}
    provider = ReleaseVisionModels(release)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--port", str(port)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/docs", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.2)
        results: dict[str, Any] = {}
        for model_name, names in MODELS.items():
            spec = preset(model_name).spec
            tensors = image_tensors(evaluation, spec)
            entry: dict[str, Any] = {"evaluation_images": len(tensors)}
            outputs: dict[str, list[Any]] = {}
            for precision in ("fp32", "int8"):
                session = ort.InferenceSession(
                    str(paths[names[precision]]), providers=["CPUExecutionProvider"]
                )
                input_name = session.get_inputs()[0].name
                outputs[precision] = [session.run(None, {input_name: t})[0] for t in tensors]
                calls = [partial(session.run, None, {input_name: t}) for t in tensors]
                entry[f"onnxruntime_{precision}"] = time_calls(calls, rounds=2).as_dict()
            entry["int8_top1_agreement_vs_fp32"] = round(
                top1_agreement(outputs["fp32"], outputs["int8"]), 4
            )
            entry["int8_speedup_p50"] = round(
                entry["onnxruntime_fp32"]["p50_ms"] / entry["onnxruntime_int8"]["p50_ms"], 3
            )
            entry["opencv_dnn_fp32"] = opencv_dnn(paths[names["fp32"]], tensors, outputs["fp32"])
            entry["opencv_dnn_int8"] = opencv_dnn(paths[names["int8"]], tensors, outputs["fp32"])
            if entry["opencv_dnn_fp32"]["ok"]:
                entry["opencv_dnn_fp32_vs_onnxruntime_fp32_p50"] = round(
                    entry["opencv_dnn_fp32"]["latency"]["p50_ms"]
                    / entry["onnxruntime_fp32"]["p50_ms"],
                    3,
                )
            image = (root / "images" / names["image"]).read_bytes()
            entry["endpoint"] = {
                precision: raw_and_endpoint(
                    url,
                    provider.vision_model(names[precision], "classify"),
                    names[precision],
                    image,
                    requests,
                )
                for precision in ("fp32", "int8")
            }
            results[model_name] = entry
            print(json.dumps({model_name: entry}, indent=2), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    import cv2

    report = {
        "benchmark": "vision",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "opencv": cv2.__version__,
        },
        "requests_per_endpoint_measurement": requests,
        "models": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/vision.json")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port)
    else:
        run(args.requests, args.out)


if __name__ == "__main__":
    main()
