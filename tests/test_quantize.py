"""The quantize stage on a tiny CNN: INT8 in all three formats, accuracy control, sensitivity report."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compressor.engine import run_recipe
from compressor.errors import AccuracyGoalError, RecipeError, StageError
from compressor.recipe import validate_document
from tests.conftest import TINY_RECIPE, needs_fmnist

pytestmark = needs_fmnist


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One output folder for the module: the engine's cache reuses the trained and exported tiny CNN."""
    return tmp_path_factory.mktemp("quantize") / "run"


def _doc(out: Path, stages: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["output"] = str(out)
    doc["data"].update(train_per_class=30, val_per_class=10)
    doc["stages"] = [{"name": "teacher", "type": "train", "epochs": 2, "lr": 0.05},
                     {"name": "onnx", "type": "export_onnx"}, *stages]
    return doc


def _run(doc: dict[str, Any]) -> dict[str, Any]:
    result = run_recipe(validate_document(copy.deepcopy(doc)), log=lambda _m: None, show_progress=False)
    return {s["name"]: s for s in json.loads(result.manifest_path.read_text())["stages"]}


def test_ptq_all_three_formats_are_int8_and_agree_with_fp32(shared_out: Path) -> None:
    doc = _doc(shared_out, [
        {"name": "q_onnx", "type": "quantize", "input": "onnx", "format": "onnx", "calibration_images": 32,
         "sensitivity_report": True, "min_agreement": 60},
        {"name": "q_ov", "type": "quantize", "input": "onnx", "format": "openvino", "calibration_images": 32,
         "min_agreement": 60},
        {"name": "q_tfl", "type": "quantize", "input": "teacher", "format": "tflite", "calibration_images": 32,
         "min_agreement": 60},
    ])
    stages = _run(doc)
    out = Path(doc["output"])

    def path(stage: dict[str, Any], role: str) -> Path:
        return out / next(f["path"] for f in stage["files"] if f["role"] == role)

    import onnx

    q = stages["q_onnx"]
    assert q["artifact"]["kind"] == "onnx" and q["artifact"]["meta"]["precision"] == "int8"
    ops = {n.op_type for n in onnx.load(str(path(q, "model"))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    report = json.loads(path(q, "sensitivity_json").read_text())
    mses = [r["relative_mse"] for r in report["layers"]]
    assert len(mses) == 4 and mses == sorted(mses, reverse=True)  # 2 convs, the linear, the global pool
    assert "| 1 |" in path(q, "sensitivity_md").read_text()

    ov = stages["q_ov"]
    assert ov["artifact"]["kind"] == "openvino" and {f["role"] for f in ov["files"]} == {"xml", "bin"}
    xml = path(ov, "xml").read_text()
    assert "FakeQuantize" in xml

    tfl = stages["q_tfl"]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path(tfl, "model")))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert q["metrics"]["size_bytes"] < q["metrics"]["fp32_size_bytes"]
    assert tfl["metrics"]["size_bytes"] < tfl["metrics"]["fp32_size_bytes"]
    for s in (q, ov, tfl):
        m = s["metrics"]
        assert m["top1_agreement"] >= 60 and abs(m["drop"]) <= 15, m  # a 2-epoch tiny CNN has small margins
        assert s["artifact"]["meta"]["source_model"]["kind"] == "model"
        comp = s["artifact"]["meta"]["op_composition"]  # every INT8 artifact records what it is made of
        assert comp["integer_ops"] >= 3 and comp["summary"] == m["op_composition"]["summary"], comp
    # the FP32-vs-INT8 composition: the ONNX file runs integer-only, the TFLite file (the default engine) too
    assert q["metrics"]["op_composition"]["problems"] == []
    assert tfl["metrics"]["op_composition"]["problems"] == [], tfl["metrics"]["op_composition"]
    assert tfl["artifact"]["meta"]["op_composition"]["xnnpack"]["whole_graph_delegated"]
    assert "Convolution" in ov["artifact"]["meta"]["op_composition"]["op_types"]
    assert ov["artifact"]["meta"]["op_composition"]["isa"]  # the oneDNN ISA that ran the convolutions


def test_require_integer_fail_names_the_float_op(shared_out: Path) -> None:
    # Quantizing only the convolutions leaves the classifier's Gemm (and the pooling) in float.
    stage = {"name": "q_conv_only", "type": "quantize", "input": "onnx", "format": "onnx", "calibration_images": 8,
             "ort": {"op_types": ["Conv"]}, "min_agreement": 0}
    warned = _run(_doc(shared_out, [stage]))["q_conv_only"]["metrics"]["op_composition"]  # default: warn
    assert any(p.startswith("float island: Gemm") for p in warned["problems"]), warned
    with pytest.raises(StageError, match=r"onnx INT8 file is not integer-only against its FP32 file "
                       r"\(require_integer: fail\): .*float island: Gemm '[^']+' from module 9"):
        _run(_doc(shared_out, [{**stage, "require_integer": "fail"}]))


def test_accuracy_goal_missed_fails_with_table(shared_out: Path) -> None:
    # Two calibration images and per-tensor 7-bit weights lose accuracy; with no layer allowed back
    # in float, the fallback must fail with its table (and the sensitivity report still written).
    doc = _doc(shared_out, [
        {"name": "q", "type": "quantize", "format": "onnx", "calibration_images": 2,
         "ort": {"calibrate_method": "minmax", "reduce_range": True}, "per_channel": False,
         "max_accuracy_drop": 0.0, "accuracy_control": "fallback", "max_float_layers": 0, "min_agreement": 0},
    ])
    with pytest.raises(StageError, match=r"(?s)onnx INT8 cannot stay within max_accuracy_drop 0.0 pt.*"
                       r"layers in float \| top-1 %.*raise max_float_layers") as info:
        _run(doc)
    assert isinstance(info.value.__cause__, AccuracyGoalError) and info.value.__cause__.attempts
    report = Path(str(info.value).rsplit("per-layer sensitivity: ", 1)[1].strip())
    assert report.name == "sensitivity.md" and "| 1 |" in report.read_text()


def test_fallback_returns_layers_to_float_until_within(shared_out: Path) -> None:
    doc = _doc(shared_out, [
        {"name": "q", "type": "quantize", "format": "onnx", "calibration_images": 2, "per_channel": False,
         "max_accuracy_drop": 0.0, "accuracy_control": "fallback", "max_float_layers": 3, "min_agreement": 0},
    ])
    m = _run(doc)["q"]["metrics"]
    assert m["drop"] <= 0.0
    # with every layer back in float the model is the FP32 one, so the goal is always reachable
    assert len(m["float_layers"]) <= 3 and m["most_sensitive"]


def test_config_errors_are_pinned(shared_out: Path) -> None:
    bad = _doc(shared_out, [{"name": "q", "type": "quantize", "format": "openvino", "engine": "pt2e"}])
    with pytest.raises(RecipeError, match="engine 'pt2e' does not make format 'openvino'"):
        validate_document(bad)
    bad = _doc(shared_out, [{"name": "q", "type": "quantize", "format": "tflite", "engine": "pt2e", "float_io": True}])
    with pytest.raises(RecipeError, match="float_io needs engine: ai_edge_quantizer"):
        validate_document(bad)
    bad = _doc(shared_out, [{"name": "q", "type": "quantize", "mode": "qat", "bias_correction": "full"}])
    with pytest.raises(RecipeError, match="bias_correction full is not available with mode qat"):
        validate_document(bad)
    ok = validate_document(_doc(shared_out, [{"name": "q", "type": "quantize", "format": "tflite", "input": "onnx"}]))
    assert ok.stages[-1].config.format == "tflite"


@pytest.mark.slow
def test_qat_exports_int8_onnx_and_openvino(shared_out: Path) -> None:
    # Builds NNCF's torch extension on first use (make setup does it once; minutes on 2 busy cores).
    doc = _doc(shared_out, [
        {"name": "qat_ov", "type": "quantize", "input": "teacher", "mode": "qat", "format": "openvino",
         "calibration_images": 32, "qat": {"epochs": 1}, "min_agreement": 0},
        {"name": "qat_onnx", "type": "quantize", "input": "teacher", "mode": "qat", "format": "onnx",
         "calibration_images": 32, "qat": {"epochs": 1, "distill": False}, "min_agreement": 0},
    ])
    stages = _run(doc)
    out = Path(doc["output"])
    import onnx

    onnx_file = out / next(f["path"] for f in stages["qat_onnx"]["files"] if f["role"] == "model")
    ops = [n.op_type for n in onnx.load(str(onnx_file)).graph.node]
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops) and "FakeQuantize" not in ops
    # Deployable by ONNX Runtime's integer kernels: BN folded into the int8 weights, and every
    # convolution of the tiny CNN runs as QLinearConv after ORT's graph optimisation.
    assert "BatchNormalization" not in ops and stages["qat_onnx"]["metrics"]["settings"]["batchnorms_folded"] == 2
    assert _optimized_ops(onnx_file).count("QLinearConv") == 2
    xml = out / next(f["path"] for f in stages["qat_ov"]["files"] if f["role"] == "xml")
    assert "FakeQuantize" in xml.read_text()
    for name in ("qat_ov", "qat_onnx"):
        m = stages[name]["metrics"]
        assert m["qat_history"] and abs(m["drop"]) <= 15, m  # a 2-epoch tiny CNN (~25% top-1) has small margins
        versus = m["qat_versus_ptq"]  # the paired change against the PTQ start, on the same images
        assert versus["verdict"] in ("within noise", "beyond noise") and versus["low_pt"] <= versus["change_pt"]
        assert abs(versus["change_pt"] - (m["qat_top1"] - m["ptq_top1"])) <= 0.002, m


def _optimized_ops(path: Path) -> list[str]:
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(path.with_name(path.stem + ".ort-optimized.onnx"))
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def _fake_quant_conv_bn(path: Path, gamma: np.ndarray) -> None:
    """x -> Q/DQ -> Conv(weight DQ(Q(W)) per channel) -> BatchNormalization -> Q/DQ -> y, as NNCF exports it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    inits = {
        # Weights in half the int8 range, as NNCF's overflow fix exports them for x86 without VNNI, where
        # ONNX Runtime's u8 x s8 kernel would saturate full-range ones (the folded file runs that kernel).
        "w": w, "w_scale": (np.abs(w).reshape(4, -1).max(1) / 63).astype(np.float32), "w_zp": np.zeros(4, np.int8),
        "x_scale": np.array(0.02, np.float32), "y_scale": np.array(0.05, np.float32), "x_zp": np.array(128, np.uint8), "gamma": gamma.astype(np.float32),
        "beta": rng.normal(size=4).astype(np.float32), "mean": rng.normal(size=4).astype(np.float32),
        "var": rng.uniform(0.5, 2, 4).astype(np.float32),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
        helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], axis=0),
        helper.make_node("Identity", ["wq"], ["wq_id"]),
        helper.make_node("DequantizeLinear", ["wq_id", "w_scale", "w_zp"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], epsilon=1e-5),
        helper.make_node("QuantizeLinear", ["b", "y_scale", "x_zp"], ["bq"]),
        helper.make_node("DequantizeLinear", ["bq", "y_scale", "x_zp"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_qat_onnx_fold_is_exact_and_fuses(tmp_path: Path) -> None:
    """Weight Q/DQ becomes an int8 initializer and BN (a negative gamma included) folds in exactly."""
    from compressor.quant.onnx_fold import fold_qat_onnx
    from compressor.quant.runners import onnx_runner

    src, dst = tmp_path / "fq.onnx", tmp_path / "folded.onnx"
    _fake_quant_conv_bn(src, np.array([1.5, -0.7, 0.3, -2.0]))
    stats = fold_qat_onnx(src, dst)
    assert stats == {"identities_removed": 1, "weights_folded": 1, "batchnorms_folded": 1}
    x = np.random.default_rng(1).uniform(-2, 2, size=(1, 3, 8, 8)).astype(np.float32)
    before, after = onnx_runner(src, 1)(x), onnx_runner(dst, 1)(x)
    # Same quantized arithmetic: outputs agree to within one output quantization step (0.05).
    assert np.abs(before - after).max() <= 0.05 + 1e-6 and np.mean(before == after) > 0.95
    assert "QLinearConv" not in _optimized_ops(src) and "QLinearConv" in _optimized_ops(dst)


def test_qat_refuses_dynamo_export() -> None:
    from torch import nn

    from compressor.errors import ExportError
    from compressor.quant.qat import export_onnx

    with pytest.raises(ExportError, match="needs exporter: torchscript"):
        export_onnx(nn.Identity(), None, Path("unused.onnx"), "dynamo", 17)  # type: ignore[arg-type]


def test_stale_nncf_build_lock_is_cleared(tmp_path: Path) -> None:
    import os

    from compressor.quant.qat import clear_stale_locks

    build = tmp_path / "nncf" / "quantized_functions_cpu" / "2.14"
    build.mkdir(parents=True)
    lock = build / "lock"
    lock.touch()
    assert clear_stale_locks(tmp_path) == []  # no library yet: a build may be running
    lib = build / "quantized_functions_cpu.so"
    lib.touch()
    os.utime(lock, (1, 1))  # the lock predates the finished library
    assert clear_stale_locks(tmp_path) == [lock] and not lock.exists()


def test_float_depthwise_auto_follows_the_int8_dot_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO keeps depthwise convolutions float only where oneDNN lacks VNNI (or is capped below it)."""
    import platform

    from compressor.quant import runners as evaluate
    from compressor.stages.quantize import resolve_float_depthwise

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(evaluate, "cpu_has_vnni", lambda: True)
    assert resolve_float_depthwise("auto") is False and resolve_float_depthwise(True) is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert resolve_float_depthwise("auto") is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert resolve_float_depthwise("auto") is False
    monkeypatch.setattr(evaluate, "cpu_has_vnni", lambda: False)
    assert resolve_float_depthwise("auto") is True and resolve_float_depthwise(False) is False
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert resolve_float_depthwise("auto") is False


def test_qat_freezer_fixes_batchnorm_statistics_then_quantizer_ranges() -> None:
    import torch
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.torch.quantization.layers import PTQuantizerSpec, SymmetricQuantizer
    from torch import nn

    from compressor.quant.qat import qat_freezer

    spec = PTQuantizerSpec(num_bits=8, mode=QuantizationScheme.SYMMETRIC, signedness_to_force=None,
                           narrow_range=False, half_range=False, scale_shape=(1,), logarithm_scale=False)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), SymmetricQuantizer(spec))
    record: list[dict[str, Any]] = []
    freeze = qat_freezer(bn_after=1, quantizers_after=2, record=record)
    bn, quantizer = model[1], model[2]
    x = torch.randn(8, 1, 6, 6)
    model.train()
    freeze(0, model)  # epoch 1: statistics still follow the data
    model[:2](x)
    assert bn.training and record == [] and int(bn.num_batches_tracked) == 1
    model.train()
    freeze(1, model)  # epoch 2: BatchNorm fixed, ranges still trained
    before = bn.running_mean.clone()
    model[:2](x + 5)
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert quantizer.scale.requires_grad and record == [{"epoch": 2, "batchnorm": 1}]
    freeze(2, model)  # epoch 3: the quantizer ranges stop training too
    assert not quantizer.scale.requires_grad and record[-1] == {"epoch": 3, "batchnorm": 1, "quantizers": 1}


def test_qat_versus_ptq_is_paired_and_says_whether_the_change_is_beyond_noise() -> None:
    from compressor.stages.quantize import qat_versus_ptq

    labels = np.zeros(1000, dtype=int)

    def logits(correct: np.ndarray) -> np.ndarray:
        out = np.zeros((1000, 2), dtype=np.float32)
        out[np.arange(1000), np.where(correct, 0, 1)] = 1
        return out

    base = np.arange(1000) < 700
    fp32 = logits(base)
    few = base.copy()
    few[700:703] = True  # QAT gains 3 images: +0.3 pt, inside the paired interval
    small = qat_versus_ptq(fp32, logits(base), logits(few), labels)
    assert small["change_pt"] == 0.3 and small["low_pt"] < 0 < small["high_pt"] and small["verdict"] == "within noise"
    assert small["ptq_agreement_with_fp32"] == 100.0 and small["qat_agreement_with_fp32"] == 99.7
    many = base.copy()
    many[:60] = False  # QAT loses 60 images: -6 pt
    large = qat_versus_ptq(fp32, logits(base), logits(many), labels)
    assert large["change_pt"] == -6.0 and large["high_pt"] < 0 and large["verdict"] == "beyond noise"


@pytest.mark.parametrize(("features", "caps", "ov", "ort"), [
    (["avx2", "fma"], {}, "enable", "enable"),                                     # AVX2 only: both saturate
    (["avx2", "avx512f"], {}, "enable", "enable"),                                 # AVX-512 without VNNI
    (["avx2", "avx512f", "avx512_vnni"], {}, "first_layer", "first_layer"),
    (["avx2", "avx512f", "avx512_vnni"], {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "enable", "first_layer"),
])
def test_overflow_fix_auto_follows_the_cpu_and_the_isa_cap(
        monkeypatch: pytest.MonkeyPatch, features: list[str], caps: dict[str, str], ov: str, ort: str) -> None:
    """7-bit weights exactly where the runtime's x86 int8 kernels saturate full 8-bit ones."""
    import platform

    from compressor.runtime import envinfo
    from compressor.stages.quantize import QuantizeConfig, resolve_overflow_fix

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(envinfo, "cpu_info", lambda: {"features": features, "isa_caps": caps})
    assert resolve_overflow_fix("auto", "openvino") == ov
    assert resolve_overflow_fix("auto", "onnx") == ort
    assert resolve_overflow_fix("disable", "openvino") == "disable"
    assert QuantizeConfig.model_fields["overflow_fix"].default == "auto"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert resolve_overflow_fix("auto", "openvino") == "first_layer"


def test_nncf_kwargs_carry_the_overflow_fix_to_both_nncf_entry_points() -> None:
    from nncf.quantization.advanced_parameters import OverflowFix

    from compressor.quant.plans import accuracy_control_kwargs, nncf_kwargs

    kwargs = nncf_kwargs("performance", "fast", 32, {}, overflow_fix="enable")
    assert kwargs["advanced_parameters"].overflow_fix == OverflowFix.ENABLE
    ac = accuracy_control_kwargs(kwargs)  # quantize_with_accuracy_control names it differently
    assert "advanced_parameters" not in ac and ac["advanced_quantization_parameters"].overflow_fix == OverflowFix.ENABLE
    assert nncf_kwargs("mixed", "full", 8, {})["advanced_parameters"].overflow_fix == OverflowFix.FIRST_LAYER
