"""A small recipe end to end through the CLI on a slice of the embedded data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import PYTHON, REPO, needs_fmnist, run_checked, write_recipe

pytestmark = [needs_fmnist, pytest.mark.integration]


def test_demo_recipe_end_to_end_on_a_small_slice(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """The shipped demo chain (train, prune, distil, 3 formats, INT8 x3, benchmark, gates) on a tiny slice."""
    doc = yaml.safe_load((REPO / "recipes/demo.yaml").read_text())
    doc["data"].update(train_per_class=40, val_per_class=20)
    stages = {s["name"]: s for s in doc["stages"]}
    stages["teacher"].update(epochs=1, warmup_epochs=0)
    stages["pruned"]["finetune"]["epochs"] = 1
    stages["student"].update(epochs=1, warmup_epochs=0)
    for name in ("int8_onnx", "int8_openvino", "int8_tflite"):
        stages[name]["calibration_images"] = 40
    stages["bench"].update(min_iters=5, time_budget_s=0.05, warmup=2)
    doc["output"] = str(tmp_path / "out")
    path = write_recipe(tmp_path / "demo-small.yaml", doc)
    # the demo recipe shrunk: 4 to 9 minutes on 2 cores, depending on what else runs there
    proc = run_checked([PYTHON, "-m", "compressor.cli", "run", str(path)], expected_s=600, env=cli_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report:   {tmp_path / 'out' / 'report.md'}" in proc.stdout
    assert "| gate | artifact |" in proc.stdout  # the gate table is printed at the end
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    rows = manifest["stages"][-1]["metrics"]["rows"]
    assert {(r["format"], r["precision"]) for r in rows} == {
        ("model", "fp32"), ("onnx", "fp32"), ("openvino", "fp32"), ("tflite", "fp32"),
        ("onnx", "int8"), ("openvino", "int8"), ("tflite", "int8"),
    }
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    by_name = {s["name"]: s for s in manifest["stages"]}
    assert by_name["pruned"]["artifact"]["meta"]["macs"] < 0.6 * by_name["teacher"]["artifact"]["meta"]["macs"]
    for name in ("onnx", "openvino", "tflite"):
        assert by_name[name]["metrics"]["top1_agreement"] >= 99.9
    report = (tmp_path / "out/report.md").read_text()
    assert "## Benchmark: bench" in report and "features:" in report
    speed = next(line for line in report.splitlines() if line.startswith("2. **Speed-up over the teacher:**"))
    print(speed)
    for r in rows:  # every INT8 row is compared with its own FP32 in the same runtime
        if r["precision"] == "int8":
            assert r["fp32_stage"] in ("onnx", "openvino", "tflite") and r["int8_speedup"] > 0, r

    again = run_checked([PYTHON, "-m", "compressor.cli", "report", str(tmp_path / "out")], expected_s=30,
                        env=cli_env, cwd=tmp_path)
    assert again.returncode == 0 and "report.md" in again.stdout


def test_cli_error_for_missing_checkpoint(tmp_path: Path, cli_env: dict[str, str]) -> None:
    doc = yaml.safe_load((REPO / "recipes/demo.yaml").read_text())
    doc["model"]["checkpoint"] = str(tmp_path / "missing.pt")
    doc["output"] = str(tmp_path / "out")
    path = write_recipe(tmp_path / "r.yaml", doc)
    proc = run_checked([PYTHON, "-m", "compressor.cli", "run", str(path)], expected_s=30, env=cli_env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "missing.pt does not exist" in proc.stderr and "Traceback" not in proc.stderr
