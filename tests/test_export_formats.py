"""OpenVINO and TFLite export, and the runtime backend contract: one tiny model through every backend."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compressor.engine import run_recipe
from compressor.errors import ExportError, MissingExtraError, StageError
from compressor.export.agreement import verify_artifact
from compressor.export.tflite_metadata import embed_metadata, read_metadata
from compressor.recipe import validate_document
from compressor.runtime.backends import BACKENDS, RuntimeOptions, available_backends, get_backend, installed
from compressor.runtime.backends.litert import quantize
from compressor.train.models import load_model_artifact
from tests.conftest import needs_fmnist
from tests.test_export_bench import ROW_FIELDS
from tests.tinynet import tiny_cnn_histc

EXPORTS = [
    {"name": "onnx", "type": "export_onnx", "input": "teacher"},
    {"name": "ov32", "type": "export_openvino", "input": "teacher"},
    {"name": "ov16", "type": "export_openvino", "input": "onnx", "precision": "fp16"},
    {"name": "tfl32", "type": "export_tflite", "input": "teacher"},
    {"name": "tfl16", "type": "export_tflite", "input": "teacher", "precision": "fp16", "layout": "NHWC"},
]


@needs_fmnist
def test_every_format_on_everyinstalled_backend(tiny_recipe: dict[str, Any]) -> None:
    import openvino as ov

    doc = copy.deepcopy(tiny_recipe)
    doc["stages"] = [doc["stages"][0], *EXPORTS, {
        "name": "bench", "type": "benchmark", "input": "teacher", "inputs": ["teacher", *(e["name"] for e in EXPORTS)],
        "backends": available_backends(), "min_iters": 3, "time_budget_s": 0.01, "warmup": 1, "accuracy_images": 40,
        # eager capture keeps the default suite fast; the inductor path runs in the slow test below.
        "settings": {"pytorch-compile": {"compiler": "eager"}, "openvino": {"hint": "latency", "streams": 1}},
    }]
    result = run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)
    rec = {r.name: r for r in result.records}
    cache = Path(doc["output"]) / "cache"

    # Every artifact is verified, with the precision's default threshold recorded.
    for name, threshold in (("ov32", 99.9), ("ov16", 99.0), ("tfl32", 99.9), ("tfl16", 99.0)):
        assert rec[name].metrics["top1_agreement"] >= threshold, name
        assert rec[name].metrics["min_agreement"] == threshold
    assert rec["ov16"].metrics["converted_from"] == "onnx" and rec["ov32"].metrics["converted_from"] == "pytorch"
    ov32, ov16 = rec["ov32"].artifact, rec["ov16"].artifact
    assert ov32.files == {"xml": "model.xml", "bin": "model.bin"} and ov16.meta["precision"] == "fp16"
    assert ov16.path(cache, "bin").stat().st_size < ov32.path(cache, "bin").stat().st_size
    ir = ov.Core().read_model(str(ov16.path(cache, "xml")))
    assert json.loads(ir.get_rt_info(["compressor", "class_names"]).astype(str))[0] == "T-shirt/top"
    assert json.loads(ir.get_rt_info(["compressor", "preprocess"]).astype(str))["mean"] == [0.286]
    assert any(op.get_type_name() == "Convert" and op.get_input_element_type(0).get_type_name() == "f16"
               for op in ir.get_ops()), "fp16 weights decompressed at load"
    tfl16 = rec["tfl16"].artifact
    assert tfl16.files == {"model": "model.tflite"} and tfl16.meta["layout"] == "NHWC"
    meta = read_metadata(tfl16.path(cache))
    assert meta is not None and meta["class_names"][0] == "T-shirt/top" and meta["input_layout"] == "NHWC"
    assert tfl16.path(cache).stat().st_size < rec["tfl32"].artifact.path(cache).stat().st_size
    assert rec["tfl32"].artifact.meta["source_model"]["id"] == rec["teacher"].artifact.id
    assert ov16.meta["source_model"]["id"] == rec["teacher"].artifact.id

    # The benchmark: one row per artifact and backend that runs its format, all fields, all agreeing.
    rows = json.loads((cache / rec["bench"].key / "results.json").read_text())["rows"]
    assert all(r["status"] == "ok" for r in rows), [r.get("reason") for r in rows]
    assert {r["backend"] for r in rows} == set(available_backends())
    assert {(r["format"], r["precision"]) for r in rows} == {
        ("model", "fp32"), ("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"),
        ("tflite", "fp32"), ("tflite", "fp16")}
    for row in rows:
        assert ROW_FIELDS | {"device"} <= set(row), ROW_FIELDS - set(row)
        assert row["device"] == "cpu" and row["top1_agreement"] >= 99.0 and row["median_ms"] > 0
    assert "| ov16 | openvino | fp16 | openvino | 1 | cpu |" in (Path(doc["output"]) / "report.md").read_text()

    # Contract: the same batch through every backend gives PyTorch's logits.
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    teacher = rec["teacher"].artifact
    with torch.inference_mode():
        expected = load_model_artifact(teacher.meta, teacher.path(cache, "weights"))(torch.from_numpy(x)).numpy()
    for name in available_backends():
        art = next(rec[r["stage"]].artifact for r in rows if r["backend"] == name)
        settings = {"compiler": "eager"} if name == "pytorch-compile" else {}
        session = get_backend(name).load(art.path(cache), art.meta, RuntimeOptions(threads=1, settings=settings))
        out = session.run(x)
        assert out.dtype == np.float32 and out.shape == expected.shape, name
        np.testing.assert_allclose(out, expected, atol=2e-3, rtol=1e-3, err_msg=name)
        assert {"runtime", "version", "provider", "device", "threads", "layout"} <= set(session.describe()), name

    # Constants stored after the flatbuffer (as ai-edge-quantizer writes large FP16 weights) survive embedding.
    tfl32 = rec["tfl32"].artifact
    moved = embed_metadata(with_external_buffer(tfl32.path(cache).read_bytes()), {"k": 1})
    (tmp := Path(doc["output"]) / "moved.tflite").write_bytes(moved)
    assert read_metadata(tmp) == {"k": 1}
    session = get_backend("litert").load(tmp, tfl32.meta, RuntimeOptions(threads=1))
    np.testing.assert_allclose(session.run(x), expected, atol=1e-4, rtol=1e-4)

    # Verification failures name format, precision and figures, and honour the configured threshold.
    images = np.random.default_rng(1).standard_normal((8, 1, 28, 28)).astype(np.float32)
    wrong = np.eye(8, 10, k=1, dtype=np.float32) * 10
    with pytest.raises(ExportError, match=r"openvino fp16 artifact agrees with PyTorch on only .* requires 99.0%"):
        verify_artifact("openvino", ov16.path(cache), ov16.meta, wrong, images, None, 1)
    with pytest.raises(ExportError, match=r"tflite fp16 artifact agrees with PyTorch on only .* requires 50%"):
        verify_artifact("litert", tfl16.path(cache), tfl16.meta, wrong, images, 50, 1)


def with_external_buffer(model_bytes: bytes) -> bytes:
    """The same model with its largest constant moved after the flatbuffer, addressed by offset and size."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    def pack(model: Any) -> bytes:
        builder = flatbuffers.Builder(0)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    buf = max(model.buffers, key=lambda b: 0 if b.data is None else len(b.data))
    data = bytes(np.asarray(buf.data, dtype=np.uint8))
    buf.data, buf.offset, buf.size = None, 1 << 40, len(data)  # placeholder offset of the same width
    start = -(-len(pack(model)) // 16) * 16
    buf.offset = start
    head = pack(model)
    return head + b"\0" * (start - len(head)) + data


@pytest.mark.parametrize("fmt", ["openvino", "tflite"])
def test_converter_failure_names_format_op_and_module(fmt: str) -> None:
    from compressor.export.openvino import convert_to_openvino
    from compressor.export.tflite import convert_to_tflite

    model = tiny_cnn_histc().eval()
    example = torch.randn(1, 1, 28, 28)
    with pytest.raises(ExportError, match=rf"^{fmt} export failed: the converter cannot handle operator "
                                          r"aten::histc in module 'odd' \(Histogram\)"):
        if fmt == "openvino":
            convert_to_openvino(model, example, dynamic_batch=True)
        else:
            convert_to_tflite(model, example, "fp32", "NCHW")


@needs_fmnist
def test_failed_export_keeps_earlier_artifacts_and_onnx_source_needs_onnx(tiny_recipe: dict[str, Any]) -> None:
    doc = copy.deepcopy(tiny_recipe)
    doc["model"] = {"entry_point": "tests.tinynet:tiny_cnn_histc"}
    doc["stages"] = [doc["stages"][0], {"name": "ov", "type": "export_openvino"}]
    with pytest.raises(StageError, match=r"stage 'ov': openvino export failed: .*aten::histc in module 'odd'"):
        run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)
    manifest = json.loads((Path(doc["output"]) / "manifest.json").read_text())
    teacher = next(s for s in manifest["stages"] if s["name"] == "teacher")
    assert (Path(doc["output"]) / "cache" / teacher["key"] / "model.pt").exists()

    doc["stages"][1] = {"name": "ov", "type": "export_openvino", "source": "onnx"}
    doc["output"] += "-onnx-source"
    with pytest.raises(StageError, match=r"source: onnx needs 'input' to name an export_onnx stage"):
        run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)


def test_litert_quantizes_int_inputs_and_backends_are_registered() -> None:
    x = np.array([-1.0, 0.0, 0.26, 100.0], np.float32)
    assert quantize(x, np.dtype(np.int8), 0.5, 3).tolist() == [1, 3, 4, 127]
    assert quantize(x, np.dtype(np.uint8), 0.5, 3).tolist() == [1, 3, 4, 203]
    assert {"openvino", "litert", "pytorch-compile"} <= set(BACKENDS)
    assert installed(BACKENDS["litert"])
    fake = type(BACKENDS["litert"])("x", ("tflite",), "m:C", "no_such_module_a|no_such_module_b", "tflite")
    assert not installed(fake)
    with pytest.raises(MissingExtraError, match=r"needs the Python package 'no_such_module_a'.*compressor\[tflite\]"):
        get_backend("x", {**BACKENDS, "x": fake})
    with pytest.raises(TypeError):
        BACKENDS["x"] = fake  # type: ignore[index]  # the module's table is read-only


@pytest.mark.slow
@needs_fmnist
def test_pytorch_compile_inductor_matches_eager(tiny_recipe: dict[str, Any]) -> None:
    doc = copy.deepcopy(tiny_recipe)
    doc["stages"] = [doc["stages"][0], {"name": "bench", "type": "benchmark", "backends": ["pytorch", "pytorch-compile"],
                                        "min_iters": 3, "time_budget_s": 0.01}]
    result = run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)
    rows = result.records[-1].metrics["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[1]["top1_agreement"] >= 99.9 and "inductor" in rows[1]["runtime"]["provider"]
