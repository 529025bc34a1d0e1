"""ONNX and OpenVINO IR files someone else made, as a recipe's model source."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from compressor.core.config import ModelSource
from compressor.errors import ModelSourceError, RecipeError
from compressor.recipe import validate_document
from tests.conftest import needs_fmnist

pytest.importorskip("onnx")

PRE = {"channels": 1, "mean": [0.286], "std": [0.353]}


def _plain_onnx(path: Path, dynamic_hw: bool = False, metadata: dict[str, Any] | None = None) -> Path:
    """A tiny classifier exported with torch.onnx alone: no metadata of ours unless given."""
    import onnx

    from tests.tinynet import tiny_cnn

    torch.manual_seed(0)
    model = tiny_cnn(10, 1).eval()
    axes = {"x": {0: "n", 2: "h", 3: "w"} if dynamic_hw else {0: "n"}}
    torch.onnx.export(model, (torch.randn(1, 1, 28, 28),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes=axes, dynamo=False, opset_version=17)
    if metadata:
        proto = onnx.load(str(path))
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=json.dumps(value))
        onnx.save(proto, str(path))
    return path


def _doc(tmp_path: Path, model: dict[str, Any], stages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "file", "threads": 1, "output": str(tmp_path / "run"),
            "data": {"source": "fashion-mnist", "train_per_class": 20, "val_per_class": 10, "batch_size": 32,
                     "preprocess": PRE},
            "model": model, "stages": stages, **extra}


BENCH = {"min_iters": 5, "time_budget_s": 0.05, "warmup": 1}


@pytest.mark.parametrize(("stage", "why"), [
    ({"name": "t", "type": "train", "epochs": 1}, 'train "t" needs the PyTorch model'),
    ({"name": "p", "type": "prune"}, 'prune "p" needs the PyTorch model'),
    ({"name": "q", "type": "quantize", "format": "onnx", "mode": "qat"}, r'quantize "q" \(mode: qat\) fine-tunes the PyTorch model'),
])
def test_pytorch_only_stage_refused_at_validation_with_one_line(stage: dict[str, Any], why: str, tmp_path: Path) -> None:
    doc = _doc(tmp_path, {"onnx": str(tmp_path / "m.onnx")},
               [{"name": "int8", "type": "quantize", "format": "onnx"}, stage, {"name": "b", "type": "benchmark"}])
    with pytest.raises(RecipeError) as info:
        validate_document(doc)
    assert len(info.value.problems) == 1
    line = str(info.value.problems[0])
    assert line.startswith("stages[1]")
    assert re.search(why + r", but the recipe's model is an onnx file \(.*m.onnx\); a file source works with .*quantize",
                     line), line


def test_file_source_fields() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="checkpoint, kwargs apply to PyTorch sources only; a onnx file is used"):
        ModelSource(onnx="m.onnx", checkpoint="w.pt", kwargs={"a": 1})
    with pytest.raises(ValidationError, match="input_shape and layout describe onnx / openvino files"):
        ModelSource(arch="resnet18", input_shape=(3, 32, 32))


def test_open_input_size_needs_input_shape(tmp_path: Path) -> None:
    from compressor.runtime.model_files import read_model_file, resolve_input

    path = _plain_onnx(tmp_path / "dyn.onnx", dynamic_hw=True)
    info = read_model_file(ModelSource(onnx=path))
    assert info.input_shape == [None, 1, None, None] and info.outputs == 10 and info.precision == "fp32"
    with pytest.raises(ModelSourceError, match=r"leaves its input size open .* give model.input_shape \[C, H, W\]"):
        resolve_input(ModelSource(onnx=path), info, (1, 28, 28))
    assert resolve_input(ModelSource(onnx=path, input_shape=(1, 28, 28)), info, (1, 28, 28)) == ([1, 28, 28], "NCHW")
    with pytest.raises(ModelSourceError, match=r"takes 1x28x28 .* data.preprocess makes 1x32x32"):
        resolve_input(ModelSource(onnx=path, input_shape=(1, 28, 28)), info, (1, 32, 32))


def test_preprocess_read_from_the_file(tmp_path: Path) -> None:
    pre = {"resize": 32, "crop": 28, "channels": 1, "mean": [0.5], "std": [0.25]}
    path = _plain_onnx(tmp_path / "ours.onnx", metadata={"preprocess": pre})
    doc = _doc(tmp_path, {"onnx": str(path)}, [{"name": "b", "type": "benchmark"}])
    del doc["data"]["preprocess"]
    recipe = validate_document(doc)
    assert recipe.data.preprocess.crop == 28 and recipe.data.preprocess.mean == (0.5,)


@needs_fmnist
def test_onnx_source_through_quantize_benchmark_release(tmp_path: Path) -> None:
    from compressor.release.verify import verify_bundle
    from compressor.releasing import make_release

    path = _plain_onnx(tmp_path / "theirs.onnx")
    doc = _doc(tmp_path, {"onnx": str(path)}, [
        {"name": "int8", "type": "quantize", "format": "onnx", "calibration_images": 64},
        {"name": "ir", "type": "export_openvino", "input": "model", "verify_images": 64},
        {"name": "bench", "type": "benchmark", "inputs": ["model", "int8", "ir"], **BENCH},
    ], gates={"teacher": "model", "checks": [{"type": "max_top1_drop", "artifacts": ["int8"], "max_drop": 5}]})
    recipe = validate_document(doc)
    result = make_release(recipe, "1.0.0", out=tmp_path / "bundle", log=lambda _m: None, show_progress=False)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["releasable"] is True
    run = json.loads((tmp_path / "run" / "manifest.json").read_text())
    stages = {s["name"]: s for s in run["stages"]}
    from compressor.core.artifacts import sha256_file

    assert stages["model"]["artifact"]["kind"] == "onnx"
    assert stages["model"]["metrics"]["file"]["sha256"] == sha256_file(path)
    assert stages["int8"]["metrics"]["top1_agreement"] >= 90
    assert stages["ir"]["metrics"]["top1_agreement"] == 100  # the IR follows the ONNX file it came from
    rows = json.loads((tmp_path / "bundle" / "benchmark.json").read_text())["rows"]
    assert {r["stage"] for r in rows} == {"model", "int8", "ir"}
    assert all(r["status"] == "ok" and r["top1"] is not None for r in rows)
    assert result is not None
    verify_bundle(tmp_path / "bundle", log=lambda _m: None)


@needs_fmnist
def test_openvino_source_quantized_and_benchmarked(tmp_path: Path) -> None:
    import openvino as ov

    path = _plain_onnx(tmp_path / "theirs.onnx")
    xml = tmp_path / "theirs.xml"
    ov.save_model(ov.convert_model(str(path)), str(xml))
    doc = _doc(tmp_path, {"openvino": str(xml)}, [
        {"name": "int8", "type": "quantize", "format": "openvino", "calibration_images": 64},
        {"name": "bench", "type": "benchmark", "inputs": ["model", "int8"], **BENCH},
    ])
    from compressor.engine import run_recipe

    result = run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)
    stages = {s["name"]: s for s in json.loads(result.manifest_path.read_text())["stages"]}
    assert stages["model"]["artifact"]["kind"] == "openvino"
    assert stages["int8"]["artifact"]["meta"]["precision"] == "int8"
    assert stages["int8"]["metrics"]["top1_agreement"] >= 90
