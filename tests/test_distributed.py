"""Distributed training under torchrun: a two-process gloo job on the CPU against a one-process run."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from compressor.core.distributed import DistInfo, from_env
from compressor.engine import run_recipe
from compressor.recipe import load_recipe
from tests.conftest import PYTHON, needs_fmnist, run_checked, write_recipe

# Two ranks see the same images per epoch, but in another order and with batch-norm statistics over
# half batches, so the weights differ. Measured on this recipe (500 validation images): 66.0 vs 65.4
# (teacher), 45.2 vs 44.6 (scratch student); the top-1 of the two runs must agree within this many points.
TOLERANCE_PT = 6.0


def test_dist_info_from_env() -> None:
    assert from_env({}) == DistInfo()
    assert not from_env({"WORLD_SIZE": "1", "RANK": "0"}).enabled
    info = from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert info.enabled and not info.is_main and info.world_size == 2


def _recipe(tmp_path: Path, tiny_recipe: dict[str, Any], name: str) -> Path:
    doc = copy.deepcopy(tiny_recipe)
    doc["output"] = str(tmp_path / name)
    doc["data"].update(train_per_class=100, val_per_class=50, augment=False, batch_size=32)
    doc["model"]["kwargs"] = {"width": 16}
    doc["stages"] = [
        {"name": "teacher", "type": "train", "epochs": 6, "optimizer": "adamw", "lr": 0.01},
        {"name": "evaluate", "type": "evaluate"},
        {"name": "student", "type": "distill", "teacher": "teacher", "epochs": 3, "baseline": True,
         "optimizer": "adamw", "lr": 0.01,
         "student": {"entry_point": "tests.tinynet:tiny_cnn", "kwargs": {"width": 8}},
         "feature": {"teacher_layer": "4", "student_layer": "4", "weight": 0.1}},
    ]
    return write_recipe(tmp_path / f"{name}.yaml", doc)


def _stages(out: Path) -> dict[str, dict[str, Any]]:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    return {s["name"]: s for s in manifest["stages"]}


def _run_cli(path: Path, env: dict[str, str], cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # two gloo ranks of the tiny recipe: about a minute and a half on 2 busy cores
    proc = run_checked([PYTHON, "-m", "compressor.cli", "run", str(path), *extra], expected_s=150, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@needs_fmnist
def test_two_process_gloo_job_matches_one_process(tmp_path: Path, tiny_recipe: dict[str, Any],
                                                  cli_env: dict[str, str]) -> None:
    run_recipe(load_recipe(_recipe(tmp_path, tiny_recipe, "n1")), log=lambda _m: None, show_progress=False)
    one = _stages(tmp_path / "n1")
    proc = _run_cli(_recipe(tmp_path, tiny_recipe, "n2"), cli_env, tmp_path, "--nproc", "2")
    two = _stages(tmp_path / "n2")
    assert "launching 2 processes" in proc.stderr and "on 2 ranks" in proc.stderr
    assert proc.stdout.count("manifest:") == 1  # rank 0 alone reports
    for stage in ("teacher", "student"):
        assert two[stage]["key"] != one[stage]["key"]  # world size joins the key of training stages
        for metric in ("val_top1", "scratch_top1"):
            if metric in one[stage]["metrics"]:
                assert abs(two[stage]["metrics"][metric] - one[stage]["metrics"][metric]) <= TOLERANCE_PT
    assert two["teacher"]["metrics"]["val_top1"] > 50  # it learned (10 classes: chance is 10)
    # evaluate ran on rank 0 alone over the whole split: it agrees with the top-1 reduced over ranks.
    assert two["evaluate"]["metrics"]["top1"] == two["teacher"]["metrics"]["val_top1"]
    cache = tmp_path / "n2" / "cache"
    assert not list(cache.glob("*.tmp-*")) and not list(cache.glob("*.work"))


@needs_fmnist
@pytest.mark.slow
def test_two_process_rerun_reuses_every_stage(tmp_path: Path, tiny_recipe: dict[str, Any],
                                              cli_env: dict[str, str]) -> None:
    path = _recipe(tmp_path, tiny_recipe, "n2")
    _run_cli(path, cli_env, tmp_path, "--nproc", "2")
    again = _run_cli(path, cli_env, tmp_path, "--nproc", "2")
    assert all(s["reused"] for s in _stages(tmp_path / "n2").values())
    assert "running" not in again.stderr


def test_nproc_must_be_positive(tmp_path: Path, tiny_recipe: dict[str, Any],
                                capsys: pytest.CaptureFixture[str]) -> None:
    from compressor.cli import main

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe)
    assert main(["run", str(path), "--nproc", "0"]) == 2
    assert "--nproc must be at least 1 (got 0)" in capsys.readouterr().err
