"""Op composition of INT8 files against their FP32 files: planted float islands and layout ops are caught
and named with their modules; ops kept float on purpose are not counted against the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from compressor.quant import composition
from compressor.quant.composition import Op


class _Net(nn.Module):
    """Conv, residual add, pooling; ``island``: a Softplus in the body, which has no integer kernel in ONNX
    Runtime and so stays float between a dequantize and a quantize."""

    def __init__(self, island: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Softplus() if island else nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(self.body(s) + s)


CALIB = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)


def _export(net: nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    torch.onnx.export(net.eval(), (torch.from_numpy(CALIB[:1]),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return path


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    return _export(_Net(), tmp_path_factory.mktemp("composition") / "fp32.onnx"), CALIB


def _quantize(fp32: Path, calib: np.ndarray, dst: Path, exclude: list[str]) -> Path:
    from compressor.quant.onnxruntime import OrtQuantOptions, quantize_ort

    quantize_ort(fp32, dst, calib, OrtQuantOptions(), per_channel=False, reduce_range=False, exclude=exclude)
    return dst


def test_clean_onnx_int8_is_integer_only(onnx_pair: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    fp32, calib = onnx_pair
    int8 = _quantize(fp32, calib, tmp_path / "int8.onnx", [])
    comp = composition.of_files("onnx", int8, fp32)
    assert comp["problems"] == [] and comp["float_ops"] == 0
    assert comp["op_types"].get("QLinearConv", 0) == 3 and comp["integer_ops"] >= 4
    assert comp["quantize_ops"] == 1 and comp["added_layout_ops"] == {}
    assert comp["summary"].startswith(f"{comp['integer_ops']} integer, 0 float")


def test_planted_float_island_is_named_with_its_module(tmp_path: Path) -> None:
    fp32 = _export(_Net(island=True), tmp_path / "fp32.onnx")
    int8 = _quantize(fp32, CALIB, tmp_path / "island.onnx", [])
    comp = composition.of_files("onnx", int8, fp32)
    islands = comp["float_islands"]
    assert [i["type"] for i in islands] == ["Softplus"] and islands[0]["module"] == "body.1"
    assert comp["dequantize_ops"] > 1 and comp["quantize_ops"] > 1  # the island sits between a DQ and a Q
    assert comp["problems"] == [f"float island: Softplus '{islands[0]['name']}' from module body.1"]
    # the same layer kept float on purpose (accuracy control, ignored scope) is no island
    kept = composition.of_files("onnx", int8, fp32, expected_float=["body.1"])
    assert kept["float_islands"] == [] and [k["type"] for k in kept["kept_float"]] == ["Softplus"]
    assert composition.of_files("onnx", int8, fp32, expected_patterns=["Softplus"])["problems"] == []


def test_planted_transpose_is_an_added_layout_op(onnx_pair: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    fp32, calib = onnx_pair
    int8 = _quantize(fp32, calib, tmp_path / "int8.onnx", [])
    model = onnx.load(str(int8))
    graph = model.graph
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear")  # the input's quantizer
    old = q.output[0]
    q.output[0] = old + "_hw"
    transpose = helper.make_node("Transpose", [old + "_hw"], [old], perm=[0, 1, 3, 2], name="/stem/planted/Transpose")
    graph.node.insert(list(graph.node).index(q) + 1, transpose)
    planted = tmp_path / "transpose.onnx"
    onnx.save(model, str(planted))
    comp = composition.of_files("onnx", planted, fp32)
    assert comp["added_layout_ops"] == {"Transpose": 1}
    assert comp["added_layout"][0]["module"] == "stem.planted"
    assert any(p.startswith("layout op the FP32 file does not have: Transpose") for p in comp["problems"])


def test_compose_counts_layout_against_fp32_and_records_kernels() -> None:
    fp32 = [Op("c1", "CONV_2D", "float"), Op("t", "TRANSPOSE", "layout"), Op("p", "PAD", "layout")]
    int8 = [Op("q", "QUANTIZE", "quantize"), Op("t0", "TRANSPOSE", "layout"), Op("t1", "TRANSPOSE", "layout", "a.b"),
            Op("p", "PAD", "layout"), Op("c1", "CONV_2D", "integer", "a", "brgconv_avx512_amx_1x1_i8"),
            Op("add", "ADD", "float", "a.c", "jit_avx2_f32"), Op("dq", "DEQUANTIZE", "dequantize")]
    comp = composition.compose(int8, fp32)
    assert comp["added_layout_ops"] == {"TRANSPOSE": 1} and comp["added_layout"][0]["name"] == "t1"
    assert [i["name"] for i in comp["float_islands"]] == ["add"]
    assert comp["quantize_ops"] == 1 and comp["dequantize_ops"] == 1 and comp["integer_ops"] == 1
    assert comp["isa"] == {"amx": 1, "avx2": 1}
    assert composition.problems(comp) == ["float island: ADD 'add' from module a.c",
                                          "layout op the FP32 file does not have: TRANSPOSE 't1' from module a.b"]


def test_module_names_from_exporter_and_converter_names() -> None:
    assert composition._scoped_module("/features/features.1/conv/conv.0/conv.0.0/Conv") == "features.1.conv.0.0"
    assert composition._scoped_module("node_Conv_3") == ""
    name = ("torchvision.models.mobilenetv2.MobileNetV2/torch.nn.modules.container.Sequential_features/"
            "torchvision.models.mobilenetv2.InvertedResidual_5;")
    assert composition._tfl_module(name) == "features.5"
    assert composition._tfl_module("pkg.EfficientNet/pkg.MBConvBlock_6/pkg.Conv2d__project_conv;2") == \
        "MBConvBlock_6._project_conv"


def test_tflite_default_engine_is_integer_only_and_keeps_modules_float_on_request(tmp_path: Path) -> None:
    from compressor.quant import tflite as q

    net = _Net().eval()
    fp32, aeq = tmp_path / "fp32.tflite", tmp_path / "aeq.tflite"
    q.convert_fp32(net, torch.from_numpy(CALIB[:1]), fp32)
    q.quantize_aeq(fp32, CALIB, aeq, float_io=False)
    clean = composition.of_files("tflite", aeq, fp32)
    assert clean["problems"] == [] and clean["quantize_ops"] == 0 and clean["xnnpack"]["whole_graph_delegated"]
    assert clean["op_types"] == clean["fp32_op_types"]  # the FP32 graph's ops, each in int8
    # accuracy control's fallback keeps a module float with ai-edge-quantizer too
    kept = tmp_path / "kept.tflite"
    q.quantize_aeq(fp32, CALIB, kept, float_io=False, float_scopes=[q.scope_regex(net, "body.0")])
    ops = composition.tflite_ops(kept)
    assert [(o.type, o.module) for o in ops if o.kind == "float"] == [("CONV_2D", "body.0")]
    assert composition.of_files("tflite", kept, fp32, expected_float=["body.0"])["problems"] == []


def test_backends_record_the_kernels_that_ran(onnx_pair: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    from compressor.quant.openvino import read_ov_model, save_ov_model
    from compressor.runtime.backends import RuntimeOptions, get_backend

    fp32, calib = onnx_pair
    int8 = _quantize(fp32, calib, tmp_path / "int8.onnx", [])
    ort = get_backend("onnxruntime")
    assert ort.load(int8, {}, RuntimeOptions()).describe()["kernels"]["int8_format"] == "qdq"
    assert ort.load(fp32, {}, RuntimeOptions()).describe()["kernels"] == {"int8_format": "float"}
    xml = tmp_path / "fp32.xml"
    save_ov_model(read_ov_model(fp32), xml)
    kernels = get_backend("openvino").load(xml, {}, RuntimeOptions()).describe()["kernels"]
    assert sum(kernels.values()) == 3 and all(k.endswith(("f32", "F32")) for k in kernels), kernels


def test_spatial_mean_becomes_global_pool_exactly(tmp_path: Path) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    from compressor.quant.onnxruntime import means_to_global_pool

    axes = numpy_helper.from_array(np.array([-1, -2], np.int64), "axes")
    rows = numpy_helper.from_array(np.array([1], np.int64), "rows")
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1, name="pool"),
             helper.make_node("ReduceMean", ["x", "axes"], ["k"], keepdims=0, name="squeezed"),
             helper.make_node("ReduceMean", ["x", "rows"], ["r"], keepdims=1, name="kept")]  # not a pool: stays
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 7])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 3, 1, 1]),
                               helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 3]),
                               helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 1, 5, 7])], [axes, rows])
    path = tmp_path / "mean.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 7)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert means_to_global_pool(path) == 2
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == [
        "GlobalAveragePool", "GlobalAveragePool", "Flatten", "ReduceMean"]
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(after, before, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_runner_openvino_matches_the_backend_and_streams_for_throughput(onnx_pair: tuple[Path, np.ndarray],
                                                                        tmp_path: Path) -> None:
    from compressor.quant.openvino import read_ov_model, save_ov_model
    from compressor.runtime.targets import runner

    fp32, calib = onnx_pair
    xml = tmp_path / "fp32.xml"
    save_ov_model(read_ov_model(fp32), xml)
    model = runner.OpenvinoModel(str(xml), 1, "cpu")
    # the same model the benchmark stage times: FP32 kept FP32 (not bf16 on AMX CPUs), latency hint, one stream
    assert str(model.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert int(model.compiled.get_property("NUM_STREAMS")) == 1
    job = {"requests": 2, "min_iters": 4, "max_iters": 50, "time_budget_s": 0.05, "warmup": 1}
    out = runner.throughput(model, calib[:1], job)
    assert out["requests"] == 2 and out["throughput_ips"] > 0
    assert int(runner.OpenvinoModel(str(xml), 1, "cpu", streams=2).compiled.get_property("NUM_STREAMS")) == 2
