"""The engine: cache keys, reuse, resume after an exception or kill -9, locking, manifest."""

from __future__ import annotations

import copy
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from compressor.core.artifacts import sha256_file
from compressor.engine import output_lock, run_recipe
from compressor.errors import RunLockedError, StageError
from compressor.recipe import validate_document
from tests.conftest import PYTHON, Child, needs_fmnist, run_checked, write_recipe

pytestmark = needs_fmnist


def run(doc: dict[str, Any]) -> dict[str, Any]:
    result = run_recipe(validate_document(copy.deepcopy(doc)), log=lambda _m: None, show_progress=False)
    return json.loads(result.manifest_path.read_text())


def test_run_writes_manifest_and_reuses_everything(tiny_recipe: dict[str, Any], tmp_path: Path) -> None:
    first = run(tiny_recipe)
    assert first["status"] == "complete"
    assert [s["name"] for s in first["stages"]] == ["model", "teacher", "evaluate", "onnx", "bench"]
    assert not any(s["reused"] for s in first["stages"])
    for key in ("recipe", "environment", "data", "stages", "compressor"):
        assert key in first
    cpu = first["environment"]["cpu"]
    assert {"model", "features", "arch", "int8_dot_product"} <= set(cpu)
    assert first["environment"]["packages"]["torch"]
    assert first["data"]["preprocess"]["mean"] == [0.286]
    onnx = next(s for s in first["stages"] if s["name"] == "onnx")
    [f] = onnx["files"]
    assert sha256_file(tmp_path / "run" / f["path"]) == f["sha256"]
    assert onnx["metrics"]["top1_agreement"] >= 99.9

    second = run(tiny_recipe)
    assert all(s["reused"] for s in second["stages"])
    assert [s["key"] for s in second["stages"]] == [s["key"] for s in first["stages"]]
    assert (tmp_path / "run/report.md").read_text().startswith("# compressor report: tiny")


def test_changed_stage_reuses_earlier_ones(tiny_recipe: dict[str, Any]) -> None:
    first = {s["name"]: s for s in run(tiny_recipe)["stages"]}
    tiny_recipe["stages"][3]["min_iters"] = 6
    second = {s["name"]: s for s in run(tiny_recipe)["stages"]}
    assert second["teacher"]["reused"] and second["onnx"]["reused"]
    assert not second["bench"]["reused"]
    assert second["bench"]["key"] != first["bench"]["key"]
    # A pass-through stage (evaluate) does not change what later stages see.
    tiny_recipe["stages"][1]["images"] = 50
    third = {s["name"]: s for s in run(tiny_recipe)["stages"]}
    assert not third["evaluate"]["reused"] and third["onnx"]["reused"]


def test_exception_keeps_finished_stages(tiny_recipe: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from compressor.registry import STAGES

    entry = STAGES["export_onnx"]

    def explode(cfg: Any, ctx: Any) -> Any:
        msg = "converter blew up"
        raise RuntimeError(msg)

    registry = {**STAGES, "export_onnx": type(entry)(**{**entry.__dict__, "run": explode})}
    recipe = validate_document(copy.deepcopy(tiny_recipe))
    with pytest.raises(RuntimeError, match="converter blew up"):
        run_recipe(recipe, log=lambda _m: None, show_progress=False, registry=registry)
    manifest = json.loads((Path(tiny_recipe["output"]) / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert [s["name"] for s in manifest["stages"]] == ["model", "teacher", "evaluate"]
    cache = Path(tiny_recipe["output"]) / "cache"
    assert not list(cache.glob("*.tmp-*"))
    monkeypatch.undo()
    again = run(tiny_recipe)
    reused = {s["name"]: s["reused"] for s in again["stages"]}
    assert reused == {"model": True, "teacher": True, "evaluate": True, "onnx": False, "bench": False}


def test_stage_error_names_stage_and_keeps_artifacts(tiny_recipe: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import compressor.stages.export_onnx as export_onnx
    from compressor.export.agreement import check_agreement

    def strict(fmt: str, precision: str, cand: Any, ref: Any, _min: float, *_task: Any) -> Any:
        return check_agreement(fmt, precision, cand[:, ::-1], ref, 99.9)

    monkeypatch.setattr(export_onnx, "check_agreement", strict)
    with pytest.raises(StageError, match=r"stage 'onnx': onnx fp32 artifact agrees with PyTorch on only .* requires 99.9%"):
        run(tiny_recipe)
    manifest = json.loads((Path(tiny_recipe["output"]) / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["model", "teacher", "evaluate"]
    assert "agrees with PyTorch" in manifest["error"]


def test_second_run_on_same_folder_is_refused(tiny_recipe: dict[str, Any]) -> None:
    with output_lock(Path(tiny_recipe["output"])), pytest.raises(RunLockedError, match="another run is using"):
        run(tiny_recipe)


def test_kill_9_mid_training_resumes(tiny_recipe: dict[str, Any], tmp_path: Path, cli_env: dict[str, str]) -> None:
    doc = copy.deepcopy(tiny_recipe)
    doc["data"]["train_per_class"] = 400
    doc["stages"] = [
        {"name": "teacher", "type": "train", "epochs": 1},
        {"name": "finetune", "type": "train", "epochs": 4, "lr": 0.01},
        {"name": "onnx", "type": "export_onnx"},
    ]
    path = write_recipe(tmp_path / "r.yaml", doc)
    cmd = [PYTHON, "-m", "compressor.cli", "run", str(path)]
    child = Child(cmd, expected_s=90, env=cli_env, cwd=tmp_path)
    try:
        child.wait_for("finetune: train epoch 1/4")
        child.proc.send_signal(signal.SIGKILL)
    finally:
        code = child.wait(grace_s=30)
    assert code == -signal.SIGKILL
    cache = Path(doc["output"]) / "cache"
    assert list(cache.glob("*.work/train-last.pt")), "epoch checkpoint of the killed stage is kept"

    rerun = run_checked(cmd, expected_s=120, env=cli_env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "teacher (train): reused from cache" in rerun.stderr
    assert "finetune: resuming train from epoch" in rerun.stderr
    manifest = json.loads((Path(doc["output"]) / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    finetune = next(s for s in manifest["stages"] if s["name"] == "finetune")
    assert finetune["metrics"]["resumed_from_epoch"] >= 1
    assert len(finetune["metrics"]["history"]) == 4
    assert not list(cache.glob("*.tmp-*")) and not list(cache.glob("*.work"))
