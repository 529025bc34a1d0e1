"""Reports: the three-line answer, baseline changes and regressions, HTML, results.json, figures; the
benchmark stage with targets keeps the row keys release gates read; ``compressor bench`` on any file."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from compressor.errors import CompressorError
from compressor.report.plots import pareto
from compressor.report.render import write_report
from tests.conftest import PYTHON, needs_fmnist, run_checked


def _row(stage: str, fmt: str, precision: str, top1: float, median: float, target: str = "local",
         size: int = 100_000, **extra: Any) -> dict[str, Any]:
    q = [median * (0.8 + 0.02 * i) for i in range(21)]
    return {"stage": stage, "artifact": stage[:12], "format": fmt, "precision": precision,
            "backend": "pytorch" if fmt == "model" else "onnxruntime", "batch": 1, "mode": "latency",
            "target": target, "status": "ok", "top1": top1, "median_ms": median, "p90_ms": median * 1.1,
            "p99_ms": median * 1.2, "min_ms": median * 0.8, "size_bytes": size, "quantiles_ms": q, **extra}


def _bench_dir(folder: Path, rows: list[dict[str, Any]], budget: float = 1.0) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"rows": rows, "accuracy_budget": budget, "teacher": "teacher"}))
    return folder


ROWS = [
    _row("teacher", "model", "fp32", 90.0, 10.0, size=4_000_000),
    _row("onnx", "onnx", "fp32", 90.0, 5.0, size=4_000_000),
    _row("int8", "onnx", "int8", 89.5, 2.0, size=1_000_000),
    _row("tiny", "onnx", "int8", 80.0, 1.0, size=300_000),  # fastest, but outside a 1-point budget
    _row("int8", "onnx", "int8", 89.4, 400.0, target="arm64-emulated", emulated=True),
]


def test_answer_baseline_regressions_html_and_figures(tmp_path: Path) -> None:
    base = _bench_dir(tmp_path / "base", copy.deepcopy(ROWS))
    now_rows = copy.deepcopy(ROWS)
    now_rows[2].update(median_ms=2.5, top1=89.5)  # int8 25% slower: a regression beyond 10%
    now_rows[1].update(top1=89.0)  # onnx lost a full point: a regression beyond 0.5
    now_rows[4].update(median_ms=900.0)  # emulated latency doubles: never judged
    now = _bench_dir(tmp_path / "now", now_rows)
    text = write_report(now, baseline=base).read_text()
    head = text.splitlines()[2:5]
    assert head[0].startswith("1. **Fastest within the accuracy budget** (top-1 at most 1 pt below teacher `teacher`)")
    assert "local: `int8` (onnx int8, onnxruntime, batch 1) at 2.500 ms" in head[0]
    assert "arm64-emulated: emulated, latency not ranked" in head[0]
    assert head[1] == ("2. **Speed-up over the teacher:** local 4.00x over PyTorch eager (10.000 → 2.500 ms), "
                       "teacher's FP32 onnxruntime not measured (add its export to the benchmark inputs)")
    assert head[2] == "3. **Accuracy loss:** local +0.50 pt (90.00 → 89.50)"
    assert "**2 regression(s)** in 5 matched rows" in text
    assert "median +25.0% (> 10%)" in text and "top-1 -1.00 pt (> 0.5 pt drop)" in text
    assert "(emulated latency not judged)" in text
    doc = json.loads((now / "results.json").read_text())
    assert doc["comparison"]["regressions"] == 2 and doc["answer"]["targets"]["local"]["speedup"] == 4.0
    html = (now / "report.html").read_text()
    assert "<table>" in html and '<img alt="accuracy_vs_latency" src="accuracy_vs_latency.png"' in html
    for name in ("accuracy_vs_latency.png", "size.png", "latency_distribution.png"):
        assert (now / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # a wider budget lets the 80% model win
    assert "local: `tiny`" in write_report(now, budget=15.0, figures=False).read_text().splitlines()[2]
    assert run_checked([PYTHON, "-m", "compressor.cli", "report", str(now), "--baseline", str(base),
                        "--fail-on-regression"], expected_s=30).returncode == 1


def test_slower_int8_is_marked_and_both_speedups_head_the_report(tmp_path: Path) -> None:
    rows = [
        _row("teacher", "model", "fp32", 90.0, 10.0, source="t"),
        _row("teacher_onnx", "onnx", "fp32", 90.0, 4.0, source="t"),
        _row("student_onnx", "onnx", "fp32", 89.8, 1.0, source="s"),
        _row("int8_onnx", "onnx", "int8", 89.6, 1.25, source="s"),  # planted: slower than its own FP32
        _row("int8_fast", "onnx", "int8", 80.0, 0.5, source="s"),
    ]
    run = _bench_dir(tmp_path / "run", rows)
    text = write_report(run, figures=False).read_text()
    head = text.splitlines()[2:6]
    assert head[1] == ("2. **Speed-up over the teacher:** local 10.00x over PyTorch eager (10.000 → 1.000 ms), "
                       "4.00x over the teacher's FP32 onnxruntime `teacher_onnx` (4.000 → 1.000 ms)")
    assert head[3] == ("4. **❎ INT8 slower than its FP32 in the same runtime:** `int8_onnx` (onnx, onnxruntime, "
                       "batch 1) 0.80x vs `student_onnx` (1.000 → 1.250 ms)")
    lines = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| local |")}
    assert lines["int8_onnx"].endswith("| ❎ **INT8 slower than FP32**: 0.80x vs FP32 `student_onnx` |")
    assert lines["int8_fast"].endswith("| ok, 2.00x vs FP32 `student_onnx` |")  # its own FP32, not the teacher's
    assert lines["teacher_onnx"].endswith("| ok |")
    doc = json.loads((run / "results.json").read_text())
    marked = {r["stage"]: r.get("slower_than_fp32") for r in doc["rows"]}
    assert marked == {"teacher": None, "teacher_onnx": None, "student_onnx": None, "int8_onnx": True,
                      "int8_fast": False}
    assert doc["answer"]["targets"]["local"]["runtime_speedup"] == 4.0
    # the teacher's own export wins: 1.00x over itself in that runtime
    only = _bench_dir(tmp_path / "teacher_wins", [r for r in rows if r["stage"] in ("teacher", "teacher_onnx")])
    assert "1.00x over the teacher's FP32 onnxruntime `teacher_onnx` (4.000 → 4.000 ms)" in \
        write_report(only, figures=False).read_text().splitlines()[3]


def test_pareto_front_and_missing_run_folder(tmp_path: Path) -> None:
    assert pareto([(1.0, 80.0), (2.0, 90.0), (3.0, 85.0), (0.5, 70.0)]) == [3, 0, 1]
    with pytest.raises(CompressorError, match=r"has no manifest.json or results.json; pass the output folder"):
        write_report(tmp_path)


@needs_fmnist
def test_benchmark_stage_with_targets_keeps_gate_keys(tiny_recipe: dict[str, Any], tmp_path: Path) -> None:
    from compressor.engine import run_recipe
    from compressor.recipe import validate_document

    doc = copy.deepcopy(tiny_recipe)
    doc["stages"][-1].update(targets=[{"type": "local", "threads": 1}, {"type": "cuda"}],
                             modes=["latency", "throughput"], accuracy_budget=2.0)
    result = run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)
    rows = result.records[-1].metrics["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    gate_keys = {"stage", "format", "precision", "backend", "batch", "top1", "median_ms", "p90_ms", "size_bytes",
                 "target", "mode"}
    assert ok and all(gate_keys <= set(r) for r in ok)
    onnx = [r for r in ok if r["format"] == "onnx"]
    assert {r["mode"] for r in onnx} == {"latency", "throughput"}
    assert all(r["peak_rss_mb"] > 0 and r["top1_agreement"] >= 99 and "cv" in r for r in onnx)
    teacher = next(r for r in ok if r["stage"] == "teacher")
    assert abs(teacher["top1"] - onnx[0]["top1"]) <= 1.0
    report = (Path(doc["output"]) / "report.md").read_text()
    assert report.splitlines()[2].startswith("1. **Fastest within the accuracy budget** (top-1 at most 2 pt")
    assert "## Targets" in report and "- **local** (local): " in report
    assert "- **cuda** (cuda): " in report
    assert (Path(doc["output"]) / "accuracy_vs_latency.png").is_file()


def test_bench_command_on_an_external_file(tmp_path: Path, cli_env: dict[str, str]) -> None:
    import torch

    from tests.tinynet import tiny_cnn

    path = tmp_path / "external.onnx"
    torch.onnx.export(tiny_cnn().eval(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"])  # fixed batch 1, no metadata: not ours
    out = tmp_path / "bench"
    proc = run_checked([PYTHON, "-m", "compressor.cli", "bench", str(path), "--batch-sizes", "1,2",
                        "--min-iters", "5", "--time-budget-s", "0.02", "--out", str(out)], expected_s=45, env=cli_env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "skipped"]
    assert rows[0]["median_ms"] > 0 and "top1" not in rows[0] and rows[0]["input_shape"] == [1, 1, 28, 28]
    proc = run_checked([PYTHON, "-m", "compressor.cli", "bench", str(path), "--data", str(tmp_path)],
                       expected_s=20, env=cli_env)
    assert proc.returncode != 0 and "--data needs --preprocess" in proc.stderr


def test_cpu_info_records_features_and_isa_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports say whether INT8 had a dot-product instruction, and whether a runtime's ISA was capped."""
    from compressor.runtime.envinfo import cpu_info

    fake = tmp_path / "cpuinfo"
    fake.write_text("model name\t: Some CPU\nflags\t\t: sse4_2 avx2 fma avx512f\n")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = cpu_info(fake)
    assert info["model"] == "Some CPU" and info["int8_dot_product"] == "no int8 dot-product"
    assert {"avx2", "avx512f"} <= set(info["features"]) and info["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    fake.write_text("flags\t\t: avx2 avx512f avx512_vnni\n")
    assert cpu_info(fake)["int8_dot_product"] == "vnni/dotprod"
