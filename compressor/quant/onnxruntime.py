"""ONNX INT8: ``onnxruntime.quantization.quantize_static`` or ``nncf.quantize`` on the ONNX graph."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from compressor.core.config import Strict

# GlobalAveragePool: quantized on its own (QLinearGlobalAveragePool), so accuracy control can return it to float.
QUANTIZABLE_ONNX_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose", "GlobalAveragePool")


class OrtQuantOptions(Strict):
    """Options of the ONNX Runtime quantizer (``engine: onnxruntime``)."""

    quant_format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="QDQ (QuantizeLinear/DequantizeLinear pairs, fused by ORT) or QOperator (QLinearConv ...).")
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8 activations with int8 weights is the u8s8 path x86 kernels are built for.")
    reduce_range: bool | Literal["auto"] = Field(
        "auto", description="7-bit weights to avoid int16 saturation on x86 without VNNI; 'auto' reads /proc/cpuinfo.")
    preprocess: bool = Field(True, description="Run quant_pre_process (shape inference, graph optimization) first.")
    op_types: list[str] | None = Field(None, description="Operator types to quantize (default: all ORT supports).")
    extra_options: dict[str, Any] = Field(default_factory=dict, description="Passed to quantize_static as is.")


class _Reader:
    """CalibrationDataReader over an array of NCHW images, one image per call."""

    def __init__(self, name: str, images: np.ndarray):
        self.name = name
        self.images = images
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1 : self.i]}

    def rewind(self) -> None:
        self.i = 0


def quantizable_nodes(model_path: Path) -> list[str]:
    """Names of the weighted nodes (Conv, Gemm, MatMul) and global pools in graph order: the layers accuracy
    control ranks."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in QUANTIZABLE_ONNX_OPS]


def preprocess_onnx(src: Path, dst: Path) -> Path:
    """Shape inference and graph optimization ahead of quantization, then spatial means as global pooling
    (:func:`means_to_global_pool`); falls back to the input on failure."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the original instead
        return src
    means_to_global_pool(dst)
    return dst


def means_to_global_pool(path: Path) -> int:
    """Rewrite ``ReduceMean`` over H and W of a 4-D tensor as ``GlobalAveragePool`` (then ``Flatten`` when
    the mean drops those axes), in place.

    The dynamo exporter writes ``adaptive_avg_pool2d(x, 1)`` and ``x.mean([2, 3])`` as ``ReduceMean``, which
    ONNX Runtime's quantizer leaves in float (a dequantize, a float mean and a quantize before the
    classifier), while ``GlobalAveragePool`` runs as ``QLinearGlobalAveragePool``. Returns the number of
    nodes rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info]
             if v.type.tensor_type.HasField("shape")}
    done = 0
    for node in list(graph.node):
        if node.op_type != "ReduceMean" or not node.input or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in inits:
            axes = inits[node.input[1]].tolist()
        if axes is None or {int(a) % 4 for a in axes} != {2, 3}:
            continue
        keepdims = attrs.get("keepdims", 1) == 1
        del node.input[1:]
        del node.attribute[:]
        node.op_type = "GlobalAveragePool"
        if not keepdims:  # [N, C, 1, 1] -> [N, C], as the mean without keepdims gives
            out = node.output[0]
            node.output[0] = out + "_pooled"
            flat = helper.make_node("Flatten", [node.output[0]], [out], axis=1, name=(node.name or "mean") + "_flatten")
            graph.node.insert(list(graph.node).index(node) + 1, flat)
        done += 1
    if done:
        used = {i for n in graph.node for i in n.input}
        for t in [t for t in graph.initializer if t.name not in used]:
            graph.initializer.remove(t)
        onnx.save(model, str(path))
    return done


def quantize_ort(src: Path, dst: Path, calib: np.ndarray, opts: OrtQuantOptions, per_channel: bool,
                 reduce_range: bool, exclude: Sequence[str] = ()) -> None:
    """Static INT8 with ONNX Runtime; ``exclude`` names nodes kept in float."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    name = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True, **opts.extra_options}
    if opts.calibrate_method == "percentile":
        extra.setdefault("CalibPercentile", 99.99)
    quantize_static(
        str(src), str(dst), _Reader(name, calib),
        quant_format=QuantFormat.QDQ if opts.quant_format == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=opts.op_types, per_channel=per_channel, reduce_range=reduce_range,
        activation_type=QuantType.QUInt8 if opts.activation_type == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[opts.calibrate_method],
        extra_options=extra,
    )


def quantize_onnx_nncf(src: Path, dst: Path, calib: np.ndarray, nncf_kwargs: dict[str, Any],
                       exclude: Sequence[str] = ()) -> None:
    """``nncf.quantize`` on the ONNX graph (QDQ output)."""
    import nncf
    import onnx

    model = onnx.load(str(src))
    name = model.graph.input[0].name
    dataset = nncf.Dataset(list(calib[:, None]), lambda x: {name: x})
    kwargs = dict(nncf_kwargs)
    if exclude:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(exclude), validate=False)
    quantized = nncf.quantize(model, dataset, **kwargs)
    onnx.save(quantized, str(dst))


def quantize_onnx_nncf_ac(src: Path, dst: Path, calib: np.ndarray, val: tuple[np.ndarray, np.ndarray],
                          max_drop_pt: float, nncf_kwargs: dict[str, Any], threads: int,
                          scorer: Any = None) -> None:
    """``nncf.quantize_with_accuracy_control`` on the ONNX graph; accuracy is top-1 (or ``scorer``'s
    metric) in ONNX Runtime."""
    import nncf
    import onnx

    from compressor.quant.runners import onnx_runner, top1

    model = onnx.load(str(src))
    name = model.graph.input[0].name
    images, labels = val

    def validate(candidate: onnx.ModelProto, _data: Any) -> float:
        return top1(onnx_runner(candidate.SerializeToString(), threads), images, labels, scorer) / 100

    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(list(calib[:, None]), lambda x: {name: x}),
        nncf.Dataset(list(images[:, None]), lambda x: {name: x}), validate, max_drop=max_drop_pt / 100,
        drop_type=nncf.DropType.ABSOLUTE, **nncf_kwargs)
    onnx.save(quantized, str(dst))


def op_profile(model: Path, sample: np.ndarray, threads: int, runs: int = 50) -> list[dict[str, Any]]:
    """Per-operator time (microseconds per run) from ONNX Runtime's profiler, slowest first."""
    import json

    from compressor.quant.runners import onnx_runner

    with tempfile.TemporaryDirectory() as tmp:
        run = onnx_runner(model, threads, profile_prefix=str(Path(tmp) / "ort"))
        for _ in range(runs):
            run(sample)
        trace = json.loads(Path(run.session.end_profiling()).read_text())  # type: ignore[attr-defined]
    totals: dict[tuple[str, str], float] = {}
    for event in trace:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            args = event.get("args", {})
            key = (str(event["name"]).removesuffix("_kernel_time"), str(args.get("op_name", "")))
            totals[key] = totals.get(key, 0.0) + float(event.get("dur", 0))
    rows = [{"node": k[0], "op": k[1], "us": round(v / runs, 2)} for k, v in totals.items()]
    return sorted(rows, key=lambda r: -r["us"])
