"""A tiny float TFLite classifier written with LiteRT's own flatbuffer schema (no converter).

``fc_classifier``: [1, side, side, 3] NHWC float input -> FULLY_CONNECTED + ReLU (``fc1``)
-> FULLY_CONNECTED (``logits``), with a ``serving_default`` signature, as litert-torch
exports write it. Needs ``ai-edge-litert`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def fc_classifier(
    path: Path, *, seed: int = 0, side: int = 4, hidden: int = 16, classes: int = 3
) -> Path:
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.tools import flatbuffer_utils

    rng = np.random.default_rng(seed)
    k = side * side * 3
    buffers: list[Any] = [s.BufferT()]  # buffer 0 is the empty sentinel
    tensors: list[Any] = []

    def tensor(name: str, shape: tuple[int, ...], data: Any = None) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type = name, list(shape), s.TensorType.FLOAT32
        b = s.BufferT()
        if data is not None:
            b.data = np.frombuffer(np.asarray(data, np.float32).tobytes(), np.uint8)
        buffers.append(b)
        t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    x = tensor("input", (1, side, side, 3))
    w1 = tensor("fc1/weights", (hidden, k), rng.normal(0, 0.5, (hidden, k)))
    b1 = tensor("fc1/bias", (hidden,), rng.normal(0, 0.1, (hidden,)))
    h = tensor("fc1/out", (1, hidden))
    w2 = tensor("logits/weights", (classes, hidden), rng.normal(0, 0.5, (classes, hidden)))
    b2 = tensor("logits/bias", (classes,), rng.normal(0, 0.1, (classes,)))
    y = tensor("logits", (1, classes))
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    ops = []
    relu, none = s.ActivationFunctionType.RELU, s.ActivationFunctionType.NONE
    for inputs, out, act in (([x, w1, b1], h, relu), ([h, w2, b2], y, none)):
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, inputs, [out]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        options = s.FullyConnectedOptionsT()
        options.fusedActivationFunction = act
        op.builtinOptions = options
        ops.append(op)
    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs = tensors, [x], [y]
    graph.operators, graph.name = ops, "main"

    def tensor_map(name: str, index: int) -> Any:
        m = s.TensorMapT()
        m.name, m.tensorIndex = name, index
        return m

    signature = s.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs, signature.outputs = [tensor_map("input", x)], [tensor_map("logits", y)]
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers, model.signatureDefs = buffers, [signature]
    model.description = "tiny test classifier"
    flatbuffer_utils.write_model(model, str(path))
    return path
