"""A small recipe end to end through the CLI on a slice of the embedded data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import PYTHON, REPO, needs_fmnist, write_recipe

pytestmark = [needs_fmnist, pytest.mark.integration]


def test_demo_shaped_recipe_end_to_end(tmp_path: Path, cli_env: dict[str, str]) -> None:
    doc = yaml.safe_load((REPO / "recipes/demo.yaml").read_text())
    doc["data"].update(train_per_class=30, val_per_class=10)
    doc["stages"][0]["epochs"] = 1
    doc["stages"][-1].update(min_iters=5, time_budget_s=0.1, warmup=2)
    doc["output"] = str(tmp_path / "out")
    path = write_recipe(tmp_path / "demo-small.yaml", doc)
    proc = subprocess.run([PYTHON, "-m", "compressor.cli", "run", str(path)], capture_output=True, text=True,
                          env=cli_env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report:   {tmp_path / 'out' / 'report.md'}" in proc.stdout
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    bench = manifest["stages"][-1]
    rows = bench["metrics"]["rows"]
    assert {(r["format"], r["backend"]) for r in rows} == {("model", "pytorch"), ("onnx", "onnxruntime")}
    assert all(r["status"] == "ok" for r in rows)
    assert manifest["stages"][1]["artifact"]["meta"]["macs"] > 1e7  # a real ResNet-18
    report = (tmp_path / "out/report.md").read_text()
    assert "## Benchmark: bench" in report and "features:" in report

    again = subprocess.run([PYTHON, "-m", "compressor.cli", "report", str(tmp_path / "out")],
                           capture_output=True, text=True, env=cli_env, cwd=tmp_path)
    assert again.returncode == 0 and "report.md" in again.stdout


def test_cli_error_for_missing_checkpoint(tmp_path: Path, cli_env: dict[str, str]) -> None:
    doc = yaml.safe_load((REPO / "recipes/demo.yaml").read_text())
    doc["model"]["checkpoint"] = str(tmp_path / "missing.pt")
    doc["output"] = str(tmp_path / "out")
    path = write_recipe(tmp_path / "r.yaml", doc)
    proc = subprocess.run([PYTHON, "-m", "compressor.cli", "run", str(path)], capture_output=True, text=True,
                          env=cli_env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "missing.pt does not exist" in proc.stderr and "Traceback" not in proc.stderr
