"""Full-integer TFLite with ai-edge-quantizer, LiteRT's own quantizer (``static_wi8_ai8``).

ai-edge-quantizer comes with ``litert-torch`` (it pins ai-edge-quantizer 0.10), which lives
in its own virtualenv (see :mod:`converters.tflite`), so this module runs there as
``python -m converters.litert_int8`` and needs nothing but numpy and the quantizer. One call
quantizes one recipe: INT8 weights (per channel or per tensor) and INT8 activations
calibrated by min/max on the given tensors, with the ops whose names match
``--float-regex`` left float. The calibration result is cached in ``--qsv-cache``, so later
recipes reuse it. Reading and measuring the result is the agent venv's job (LiteRT).
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any


def quantize_tflite(
    float_model: Path,
    calibration: Any,
    out: Path,
    *,
    per_channel: bool = True,
    float_regexes: tuple[str, ...] = (),
    qsv_cache: Path | None = None,
) -> dict[str, Any]:
    """Write the full-integer model of ``float_model`` to ``out``; returns what was done."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    interpreter = Interpreter(model_path=str(float_model))
    signatures = interpreter.get_signature_list()
    if not signatures:
        raise ValueError(f"{float_model.name} has no signature: export it with litert-torch")
    signature = next(iter(signatures))
    input_name = signatures[signature]["inputs"][0]
    steps: list[dict[str, Any]] = recipe.static_wi8_ai8()
    if not per_channel:
        steps[0]["op_config"]["weight_tensor_config"]["granularity"] = "TENSORWISE"
    steps += [{"regex": r, "operation": "*", "algorithm_key": "no_quantize"} for r in float_regexes]
    qt = quantizer.Quantizer(str(float_model))
    qt.load_quantization_recipe(steps)
    if qsv_cache is not None and qsv_cache.is_file():
        qsvs = pickle.loads(qsv_cache.read_bytes())  # our own cache file, written below
    else:
        samples = [{input_name: calibration[i : i + 1]} for i in range(len(calibration))]
        qsvs = qt.calibrate({signature: samples})
        if qsv_cache is not None:
            qsv_cache.write_bytes(pickle.dumps(qsvs))
    result = qt.quantize(qsvs, enable_progress_report=False)
    tmp = out.with_name(out.name + ".part")
    result.export_model(str(tmp), overwrite=True)
    tmp.replace(out)
    return {"signature": signature, "input": input_name, "recipe": steps}


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description="float .tflite -> full-integer .tflite")
    parser.add_argument("--float", dest="float_model", type=Path, required=True)
    parser.add_argument("--calibration", type=Path, required=True, help=".npy [N, ...] float32")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-tensor", action="store_true")
    parser.add_argument("--float-regex", action="append", default=[])
    parser.add_argument("--qsv-cache", type=Path)
    args = parser.parse_args()
    done = quantize_tflite(
        args.float_model,
        np.load(args.calibration),
        args.out,
        per_channel=not args.per_tensor,
        float_regexes=tuple(args.float_regex),
        qsv_cache=args.qsv_cache,
    )
    print(json.dumps({"wrote": str(args.out), **done}))


if __name__ == "__main__":
    main()
