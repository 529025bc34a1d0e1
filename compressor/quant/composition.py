"""What an INT8 file is made of, against its own FP32 file: integer ops, float ops, quantize and
dequantize ops, and layout ops (transposes, pads, reorders) the FP32 file does not have.

Each runtime is read where it decides what runs:

- ONNX: the graph ONNX Runtime optimizes (``ORT_ENABLE_EXTENDED``: QDQ groups fused into QLinearConv,
  QLinearAdd ...; the hardware-specific NCHWc/NHWC layout passes of the ``all`` level are left out so
  that the FP32 and INT8 graphs compare like for like), with element types propagated from the inputs.
- OpenVINO: the compiled model's runtime graph (``get_runtime_model()``): each node's layer type, runtime
  precision, output precision and the oneDNN primitive that runs it (which names the ISA: ``_amx_``,
  ``avx512``, ``avx2``).
- TFLite: the flatbuffer's operators with their tensors' types, read by the LiteRT interpreter; the
  XNNPACK delegate's partitions are counted.

A **float island** is a compute op (convolution, matmul, add, pooling ...) that runs on float data in an
INT8 file; an **added layout op** is a transpose, pad or reorder beyond the count of its FP32 file.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from compressor.errors import StageError

Kind = Literal["integer", "float", "quantize", "dequantize", "layout", "shape"]


@dataclass(frozen=True)
class Op:
    """One operation of a runtime graph."""

    name: str
    type: str
    kind: Kind
    module: str = ""
    kernel: str = ""


# --- ONNX (the graph ONNX Runtime runs after its portable fusions) ---------------------------------

_ONNX_LAYOUT = {"Transpose", "Pad", "ReorderInput", "ReorderOutput"}
_ONNX_SHAPE = {"Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat", "Gather", "Slice",
               "Split", "Constant", "Expand", "Tile", "Cast", "DepthToSpace", "SpaceToDepth"}
# Ops whose output has the element type of their first input (they run on int8 data as well as float).
_ONNX_PASSTHROUGH = _ONNX_LAYOUT | _ONNX_SHAPE | {"MaxPool", "Resize", "Relu"} - {"Shape", "Constant", "Cast"}
_INTEGER_TYPES = {2, 3, 4, 5, 6, 7, 12, 13}  # onnx.TensorProto uint8, int8, uint16, int16, int32, int64 ...
_FLOAT_TYPES = {1, 10, 11, 16}


def _onnx_integer_op(op_type: str) -> bool:
    return op_type.startswith(("QLinear", "QGemm", "QAttention", "QEmbed", "QOrdered")) or op_type in (
        "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")


def _onnx_module(node: Any) -> str:
    """The PyTorch module a node came from: the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata
    (``['', 'classifier', 'classifier.1', 'linear']``: the module, then the op), or the TorchScript
    exporter's ``/a/a.0/Conv`` names."""
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [str(x) for x in ast.literal_eval(prop.value)]
            except (ValueError, SyntaxError):
                return ""
            return scopes[-2] if len(scopes) >= 2 else ""
    return _scoped_module(node.name)


def _scoped_module(name: str) -> str:
    """``/features/features.1/conv/conv.0/Conv`` (each scope spelled from its parent) -> ``features.1.conv.0``."""
    if not name.startswith("/"):
        return ""
    path: list[str] = []
    prev = ""
    for part in [p for p in name.split("/") if p][:-1]:
        path.append(part[len(prev) + 1:] if prev and part.startswith(prev + ".") else part)
        prev = part
    return ".".join(path)


def onnx_optimized(path: Path, level: str = "extended") -> Any:
    """The ``onnx.ModelProto`` ONNX Runtime builds from ``path`` at an optimization level."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def onnx_ops(path: Path, level: str = "extended") -> list[Op]:
    """Ops of the optimized graph, each classed by the element type of the data it runs on."""
    import onnx

    modules = {n.name: m for n in onnx.load(str(path), load_external_data=False).graph.node
               if n.name and (m := _onnx_module(n))}  # ONNX Runtime's saved graph drops node metadata
    graph = onnx_optimized(path, level).graph
    dtype: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
    for v in [*graph.input, *graph.value_info]:
        dtype.setdefault(v.name, v.type.tensor_type.elem_type)
    consts = {t.name for t in graph.initializer}
    ops = []
    for node in graph.node:
        data = [i for i in node.input if i and i not in consts]
        first = dtype.get(data[0] if data else (node.input[0] if node.input else ""), 0)
        t = node.op_type
        if t in ("QuantizeLinear", "DynamicQuantizeLinear"):
            kind: Kind = "quantize"
            zp = dtype.get(node.input[2], 2) if len(node.input) > 2 and node.input[2] else 2
            out = zp
        elif t == "DequantizeLinear":
            kind, out = "dequantize", 1
        elif _onnx_integer_op(t):
            kind = "integer"
            out = 6 if t in ("ConvInteger", "MatMulInteger") else (1 if t.endswith("ToFloat") else 2)
            if t == "QGemm" and (len(node.input) < 8 or not node.input[7]):
                out = 1  # QGemm without an output scale returns float
        elif t in _ONNX_LAYOUT:
            kind, out = "layout", first
        elif t in _ONNX_SHAPE:
            kind, out = "shape", (7 if t == "Shape" else first)
        else:
            is_int = first in _INTEGER_TYPES
            kind = "integer" if is_int else "float"
            out = first if t in _ONNX_PASSTHROUGH else (first if is_int else 1)
        for o in node.output:
            dtype[o] = out
        ops.append(Op(node.name or t, t if node.domain in ("", "ai.onnx") else f"{node.domain}:{t}", kind,
                      _onnx_module(node) or modules.get(node.name, "")))
    return ops


# --- OpenVINO (the compiled model's runtime graph) --------------------------------------------------

_OV_SKIP = {"Input", "Output", "Const", "Parameter", "Result"}
_OV_LAYOUT = {"Reorder", "Transpose", "Pad"}
_OV_SHAPE = {"Reshape", "Squeeze", "Unsqueeze", "Concatenation", "Split", "Gather", "StridedSlice", "ShapeOf",
             "Broadcast"}
_INT_PRECISIONS = {"i8", "u8", "i32", "u32", "i4", "u4", "i16", "u16", "boolean", "i64", "u1"}


def _ov_module(names: str) -> str:
    return _scoped_module(names.split(",")[0])


def openvino_ops(path: Path, threads: int = 1, hint: str = "LATENCY") -> list[Op]:
    """Nodes of the compiled CPU model with the precision they run at and the primitive that runs them."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint})
    ops = []
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()

        def get(key: str, rt: Any = info) -> str:
            return str(rt[key].astype(str)) if key in rt else ""

        layer = get("layerType")
        if layer in _OV_SKIP:
            continue
        precision = get("runtimePrecision").lower()
        outputs = {p.strip().lower() for p in get("outputPrecisions").split(",") if p.strip()}
        int_out = bool(outputs) and outputs <= _INT_PRECISIONS
        if layer in _OV_LAYOUT:
            kind: Kind = "layout"
        elif layer in _OV_SHAPE:
            kind = "shape"
        elif layer == "FakeQuantize" or (precision not in _INT_PRECISIONS and int_out):
            kind = "quantize"  # float in, int8 out: the input quantizer (often a Subgraph)
        elif precision in _INT_PRECISIONS:
            kind = "integer"
        else:
            kind = "float"
        ops.append(Op(node.get_friendly_name(), layer, kind, _ov_module(get("originalLayersNames")),
                      get("primitiveType")))
    return ops


# --- TFLite (the flatbuffer's operators, read by the LiteRT interpreter) ----------------------------

_TFL_LAYOUT = {"TRANSPOSE", "PAD", "PADV2", "MIRROR_PAD"}
_TFL_SHAPE = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "GATHER", "STRIDED_SLICE", "SLICE", "SPLIT",
              "SHAPE", "PACK", "UNPACK"}


def _tfl_module(name: str) -> str:
    """``pkg.Net/pkg.Sequential_features/pkg.InvertedResidual_1/...;`` -> ``features.1...``."""
    scopes = [s for s in name.split(";") if "/" in s]  # fused ops list several scopes; ";2" numbers outputs
    segments = scopes[-1].split("/")[1:] if scopes else []
    attrs: list[str] = []
    for seg in segments:
        cls = seg.rsplit(".", 1)[-1]
        kind, sep, attr = cls.partition("_")
        if sep and attr:
            # a ModuleList's own name is not in the path: keep the class so that "6" reads MBConvBlock_6
            attrs.append(f"{kind}_{attr}" if attr.isdigit() and not attrs else attr)
    return ".".join(attrs)


def tflite_ops(path: Path) -> list[Op]:
    """Operators of the flatbuffer, each classed by the types of its non-constant tensors."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    details = interp._get_ops_details()  # noqa: SLF001 - the interpreter's only listing of operators
    produced = {o for op in details for o in op["outputs"]}
    graph_inputs = {d["index"] for d in interp.get_input_details()}
    ops = []
    for n, op in enumerate(details):
        name = op["op_name"]
        data = [i for i in op["inputs"] if i >= 0 and (i in produced or i in graph_inputs)]
        kinds = {np.dtype(tensors[i]["dtype"]).kind for i in data if i in tensors}
        outs = [tensors[i] for i in op["outputs"] if i in tensors]
        out_kinds = {np.dtype(t["dtype"]).kind for t in outs}
        if name == "QUANTIZE":
            kind: Kind = "quantize"
        elif name == "DEQUANTIZE":
            kind = "dequantize"
        elif name in _TFL_LAYOUT:
            kind = "layout"
        elif name in _TFL_SHAPE:
            kind = "shape"
        elif "f" in kinds or ("f" in out_kinds and not kinds):
            kind = "float"
        else:
            kind = "integer"
        out_name = outs[0]["name"] if outs else ""
        ops.append(Op(f"op{n}", name, kind, _tfl_module(out_name)))
    _attribute_unnamed(ops)
    return ops


def _attribute_unnamed(ops: list[Op]) -> None:
    """Ops the converter named after its own tracing wrapper take the module of the next named op."""
    nxt = ""
    for i in range(len(ops) - 1, -1, -1):
        if ops[i].module:
            nxt = ops[i].module
        elif nxt:
            ops[i] = Op(ops[i].name, ops[i].type, ops[i].kind, nxt, ops[i].kernel)


def tflite_delegation(path: Path, threads: int = 1) -> dict[str, Any]:
    """XNNPACK partitions after the interpreter applied its default delegate: one partition holding the
    whole graph means every operator ran in XNNPACK."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    details = interp._get_ops_details()  # noqa: SLF001
    delegates = [op for op in details if op["op_name"] == "DELEGATE"]
    outputs = {d["index"] for d in interp.get_output_details()}
    covered = {o for d in delegates for o in d["outputs"]}
    return {"xnnpack_partitions": len(delegates), "ops": len(details) - len(delegates),
            "whole_graph_delegated": len(delegates) == 1 and outputs <= covered}


# --- composition and the check ----------------------------------------------------------------------


def ops_of(fmt: str, path: Path, threads: int = 1) -> list[Op]:
    if fmt == "onnx":
        return onnx_ops(path)
    if fmt == "openvino":
        return openvino_ops(path, threads)
    if fmt == "tflite":
        return tflite_ops(path)
    msg = f"no op reader for format {fmt}"
    raise ValueError(msg)


def _isa(kernel: str) -> str | None:
    """The instruction set a oneDNN primitive name spells (``brgconv_avx512_amx_1x1_i8`` -> amx)."""
    k = kernel.lower()
    for isa in ("amx", "vnni", "avx512", "avx2", "sse41", "ref", "mlas"):
        if isa in k:
            return isa
    return None


def compose(int8: list[Op], fp32: list[Op], expected_float: Sequence[str] = (),
            expected_patterns: Sequence[str] = ()) -> dict[str, Any]:
    """Counts and findings of an INT8 graph against its FP32 graph.

    Args:
        int8: ops of the INT8 file.
        fp32: ops of the FP32 file it was made from.
        expected_float: node names or module names kept float on purpose (ignored scope, accuracy
            control); their float ops are listed under ``kept_float``, not as islands.
        expected_patterns: regular expressions over node names, as NNCF's ignored-scope patterns.
    """
    counts = Counter(op.kind for op in int8)
    layout8 = Counter(op.type for op in int8 if op.kind == "layout")
    layout32 = Counter(op.type for op in fp32 if op.kind == "layout")
    added = {t: n - layout32.get(t, 0) for t, n in layout8.items() if n > layout32.get(t, 0)}
    added_ops = []
    for t, n in added.items():
        of_type = [op for op in int8 if op.kind == "layout" and op.type == t]
        added_ops += of_type[-n:]
    patterns = [re.compile(p) for p in expected_patterns]
    floats = [op for op in int8 if op.kind == "float"]
    kept = [op for op in floats if _expected(op, expected_float, patterns)]
    islands = [op for op in floats if op not in kept]
    out: dict[str, Any] = {
        "integer_ops": counts.get("integer", 0), "float_ops": counts.get("float", 0),
        "quantize_ops": counts.get("quantize", 0), "dequantize_ops": counts.get("dequantize", 0),
        "layout_ops": dict(layout8), "fp32_layout_ops": dict(layout32), "added_layout_ops": added,
        "op_types": dict(Counter(op.type for op in int8)), "fp32_op_types": dict(Counter(op.type for op in fp32)),
        "float_islands": [_brief(op) for op in islands], "kept_float": [_brief(op) for op in kept],
        "added_layout": [_brief(op) for op in added_ops],
    }
    out.update(kernels(int8, fp32))
    return out


def kernels(int8: list[Op], fp32: list[Op]) -> dict[str, Any]:
    """The primitives that run the compute ops (OpenVINO names them) and the ISA they name."""
    compute = [op for op in int8 if op.kernel and op.kind in ("integer", "float")]
    if not compute:
        return {}
    isas = Counter(i for op in compute if (i := _isa(op.kernel)))
    return {"kernels": dict(Counter(op.kernel for op in compute).most_common()),
            "fp32_kernels": dict(Counter(op.kernel for op in fp32 if op.kernel and op.kind in ("integer", "float"))),
            "isa": dict(isas)}


def _expected(op: Op, names: Sequence[str], patterns: Sequence[re.Pattern[str]]) -> bool:
    for e in names:
        if e and (e == op.name or e in op.name or (op.module and (op.module == e or op.module.startswith(e + ".")))):
            return True
    return any(p.search(op.name) for p in patterns)


def _brief(op: Op) -> dict[str, str]:
    return {k: v for k, v in asdict(op).items() if v}


def problems(comp: dict[str, Any]) -> list[str]:
    """One line per float island and per added layout op, naming the op and its module."""
    lines = [f"float island: {_label(o)}" for o in comp["float_islands"]]
    lines += [f"layout op the FP32 file does not have: {_label(o)}" for o in comp["added_layout"]]
    return lines


def _label(o: dict[str, str]) -> str:
    where = f" from module {o['module']}" if o.get("module") else ""
    return f"{o['type']} '{o['name']}'{where}"


def summary(comp: dict[str, Any]) -> str:
    """One line: ``52 integer, 0 float, 1 Q / 1 DQ, +0 layout ops vs FP32``."""
    added = sum(comp["added_layout_ops"].values())
    return (f"{comp['integer_ops']} integer, {comp['float_ops']} float, {comp['quantize_ops']} Q / "
            f"{comp['dequantize_ops']} DQ, +{added} layout ops vs FP32")


def of_files(fmt: str, int8: Path, fp32: Path, threads: int = 1, expected_float: Sequence[str] = (),
             expected_patterns: Sequence[str] = ()) -> dict[str, Any]:
    """The composition of an INT8 file against its FP32 file, with ``problems`` and ``summary`` filled in
    (and, for TFLite, the XNNPACK partitions of the INT8 file)."""
    comp = compose(ops_of(fmt, int8, threads), ops_of(fmt, fp32, threads), expected_float, expected_patterns)
    if fmt == "tflite":
        comp["xnnpack"] = tflite_delegation(int8, threads)
    comp["problems"] = problems(comp)
    comp["summary"] = summary(comp)
    return comp


def kept_float_names(ignored_names: Sequence[str], plan: Any, excluded: Sequence[str]) -> list[str]:
    """Names of the layers kept float on purpose: accuracy control's, the ignored scope's, and for OpenVINO
    the layers of the ignored types (float depthwise convolutions on CPUs without VNNI)."""
    names = [*excluded, *ignored_names]
    scope = getattr(plan, "nncf_args", {}).get("ignored_scope")
    if scope is not None:
        names += list(scope.names)
        if scope.types and hasattr(plan, "model"):
            names += [op.get_friendly_name() for op in plan.model.get_ops() if op.get_type_name() in scope.types]
    return names


def check_composition(fmt: str, int8: Path, fp32: Path, fail: bool, stage: str, threads: int,
                      kept_float: Sequence[str], patterns: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    """The quantize stage's check: the composition, logged; float islands and added layout ops are a
    warning, or with ``fail`` a :class:`StageError` naming the ops and their modules."""
    comp = of_files(fmt, int8, fp32, threads, kept_float, patterns)
    log(f"{stage}: {fmt} INT8 op composition: {comp['summary']}")
    found = comp["problems"]
    if found:
        text = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
        if fail:
            raise StageError(stage, f"{fmt} INT8 file is not integer-only against its FP32 file "
                                    f"(require_integer: fail): {text}. Keep such layers float on purpose with "
                                    "ignored_scope, change the engine, or set require_integer: warn")
        log(f"{stage}: warning: {len(found)} op(s) of the INT8 file are not integer: {text}")
    return comp
