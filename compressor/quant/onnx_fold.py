"""Make a QAT ONNX export (NNCF fake-quantizers through the TorchScript exporter) fast in ONNX Runtime.

The exporter writes each fake-quantized weight as ``DequantizeLinear(QuantizeLinear(W_float))`` and
keeps every BatchNormalization after its convolution: the weight is no longer a constant, so the
exporter cannot fold BN into it. ONNX Runtime fuses ``DQ -> Conv -> Q`` into an integer convolution
only when the weight's DequantizeLinear reads an integer initializer and the convolution's output
goes straight to the next quantizer; otherwise it runs every convolution in float with a
quantize/dequantize round trip on top, several times slower than the FP32 model.

:func:`fold_qat_onnx` rewrites the graph the way a PTQ export looks:
- the weight's QuantizeLinear is computed once: an int8 initializer feeds the DequantizeLinear;
- a BatchNormalization that is the only reader of a convolution with per-output-channel symmetric
  weights is folded into it exactly: each channel's scale is multiplied by ``|gamma / sigma|`` and the
  integer weights take the sign of ``gamma``, so the integer values (and the model's arithmetic) stay
  those NNCF trained; BN's shift becomes the convolution's bias;
- Identity nodes the exporter left between quantizers and their parameters are removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

_INT_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


class _Graph:
    def __init__(self, model: Any):
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.counter = 0

    def producer(self, name: str) -> Any:
        return next((n for n in self.graph.node if name in n.output), None)

    def readers(self, name: str) -> list[Any]:
        return [n for n in self.graph.node if name in n.input]

    def is_output(self, name: str) -> bool:
        return any(o.name == name for o in self.graph.output)

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.counter += 1
        name = f"{base}__folded{self.counter}"
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.values[name] = value
        return name

    def remove(self, node: Any) -> None:
        self.graph.node.remove(node)

    def rename_input(self, old: str, new: str) -> None:
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new


def _drop_identities(g: _Graph) -> int:
    removed = 0
    for node in list(g.graph.node):
        if node.op_type == "Identity" and not g.is_output(node.output[0]):
            g.rename_input(node.output[0], node.input[0])
            g.remove(node)
            removed += 1
    return removed


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _per_axis(value: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    if value.ndim == 0:
        return value
    shape = [1] * ndim
    shape[axis] = value.size
    return value.reshape(shape)


def _fold_weight(g: _Graph, layer: Any) -> str | None:
    """Replace ``DQ(Q(W))`` on ``layer``'s weight by ``DQ(W_int)``; returns the new DQ output or None."""
    dq = g.producer(layer.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or len(g.readers(dq.output[0])) != 1:
        return None
    q = g.producer(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in g.values:
        return None
    if len(q.input) < 3 or any(name not in g.values for name in (*q.input[1:3], *dq.input[1:3])):
        return None
    weight = g.values[q.input[0]].astype(np.float32)
    scale, zero = g.values[q.input[1]].astype(np.float32), g.values[q.input[2]]
    if zero.dtype not in _INT_RANGES:
        return None
    axis = _attr(q, "axis", 1) % weight.ndim
    lo, hi = _INT_RANGES[zero.dtype]
    integers = np.clip(np.round(weight / _per_axis(scale, axis, weight.ndim))
                       + _per_axis(zero.astype(np.int32), axis, weight.ndim), lo, hi).astype(zero.dtype)
    dq.input[0] = g.add_initializer(q.input[0], integers)
    if len(g.readers(q.output[0])) == 0:
        g.remove(q)
    return str(dq.output[0])


def _fold_batchnorm(g: _Graph, conv: Any) -> bool:
    """Fold the BatchNormalization that alone reads ``conv``'s output into its quantized weight."""
    readers = g.readers(conv.output[0])
    if len(readers) != 1 or readers[0].op_type != "BatchNormalization" or g.is_output(conv.output[0]):
        return False
    bn = readers[0]
    dq = g.producer(conv.input[1])
    if (len(bn.output) != 1 or _attr(bn, "training_mode", 0) or dq is None or dq.op_type != "DequantizeLinear"
            or any(name not in g.values for name in (*bn.input[1:5], *dq.input[:3]))):
        return False
    integers, scale, zero = (g.values[n] for n in dq.input[:3])
    out_channels = integers.shape[0]
    if _attr(dq, "axis", 1) % integers.ndim != 0 or scale.size != out_channels or np.any(zero != 0):
        return False  # only per-output-channel symmetric weights fold exactly
    gamma, beta, mean, var = (g.values[n].astype(np.float64) for n in bn.input[1:5])
    k = gamma / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
    sign = np.where(k < 0, -1, 1).astype(np.int32)
    lo, hi = _INT_RANGES[integers.dtype]
    flipped = np.clip(integers.astype(np.int32) * _per_axis(sign, 0, integers.ndim), lo, hi).astype(integers.dtype)
    new_scale = (scale.astype(np.float64) * np.abs(k)).astype(np.float32)
    new_scale[new_scale == 0] = np.float32(1e-12)
    bias = g.values[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
    new_bias = ((bias - mean) * k + beta).astype(np.float32)
    dq.input[0] = g.add_initializer(dq.input[0], flipped)
    dq.input[1] = g.add_initializer(dq.input[1], new_scale)
    bias_name = g.add_initializer(f"{conv.name or 'conv'}_bias", new_bias)
    if len(conv.input) > 2:
        conv.input[2] = bias_name
    else:
        conv.input.append(bias_name)
    conv.output[0] = bn.output[0]
    g.remove(bn)
    return True


def _prune_initializers(g: _Graph) -> None:
    used = {name for node in g.graph.node for name in node.input} | {o.name for o in g.graph.output}
    for init in list(g.graph.initializer):
        if init.name not in used:
            g.graph.initializer.remove(init)


def fold_qat_onnx(src: Path, dst: Path) -> dict[str, int]:
    """Rewrite ``src`` into ``dst`` (see the module docstring); returns what was folded."""
    import onnx

    model = onnx.load(str(src))
    g = _Graph(model)
    stats = {"identities_removed": _drop_identities(g), "weights_folded": 0, "batchnorms_folded": 0}
    for node in list(g.graph.node):
        if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose") and len(node.input) > 1:
            if _fold_weight(g, node) is not None:
                stats["weights_folded"] += 1
                if node.op_type == "Conv" and _fold_batchnorm(g, node):
                    stats["batchnorms_folded"] += 1
    _prune_initializers(g)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return stats
