"""Release gates: recipe validation with field paths, and evaluation against benchmark rows."""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compressor.cli import main
from compressor.errors import CompressorError, RecipeError
from compressor.metrics.stats import pack_bits, pack_floats, prediction_outcomes
from compressor.recipe import json_schema, load_recipe, validate_document
from compressor.release.gates import GateSet, combine_seeds, evaluate_gates, gate_table
from compressor.releasing import make_release
from tests.conftest import TINY_RECIPE, write_recipe

GOOD_GATES: dict[str, Any] = {"teacher": "teacher", "checks": [
    {"type": "min_accuracy", "artifacts": ["onnx"], "min": 10},
]}


def with_gates(gates: Any) -> dict[str, Any]:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["gates"] = gates
    return doc


def problems_of(gates: Any) -> list[str]:
    with pytest.raises(RecipeError) as info:
        validate_document(with_gates(gates), "r.yaml")
    return [str(p) for p in info.value.problems]


def test_valid_gates_and_schema() -> None:
    recipe = validate_document(with_gates(GOOD_GATES))
    assert recipe.gates is not None and recipe.gates.shipped() == ["onnx"]
    assert "gates" in json_schema()["properties"]


def test_gate_naming_a_missing_artifact_is_a_recipe_error() -> None:
    assert problems_of({"checks": [{"type": "max_size", "artifacts": ["onx"], "max_mb": 1}]}) == [
        'gates.checks[0].artifacts[0]: "onx" names no stage (did you mean "onnx"?); '
        "stages: model, teacher, evaluate, onnx, bench"
    ]


def test_gate_problems_name_their_field() -> None:
    found = problems_of({"checks": [
        {"type": "min_acuracy", "artifacts": ["onnx"], "min": 1},
        {"type": "max_top1_drop", "artifacts": ["onnx"], "max_dorp": 1},
        {"type": "max_top1_drop", "artifacts": ["onnx"], "max_drop": 1, "min_retained_pct": 99},
        {"type": "max_latency", "artifacts": ["onnx"], "max_ms": 0},
    ]})
    assert found == [
        'gates.checks[0].type: unknown gate type "min_acuracy" (did you mean "min_accuracy"?); known types: '
        "max_top1_drop, min_accuracy, max_latency, min_speedup, max_size, max_regression",
        'gates.checks[1].max_dorp: unknown key (did you mean "max_drop"?)',
        "gates.checks[2]: give exactly one of max_drop (points) or min_retained_pct (percent of the teacher's top-1)",
        "gates.checks[3].max_ms: must be greater than 0 (got 0)",
    ]


def test_gates_need_measured_artifacts_and_a_teacher() -> None:
    found = problems_of({"checks": [
        {"type": "min_speedup", "artifacts": ["evaluate"], "min": 1},
        {"type": "min_accuracy", "artifacts": ["bench"], "min": 1, "backend": "onnxrutnime"},
    ]})
    assert found == [
        "gates.teacher: is required by gates.checks[0] (min_speedup); name the stage of the reference model, "
        "e.g. teacher",
        "gates.checks[0].artifacts[0]: \"evaluate\" is not measured by any benchmark stage; add it to a "
        "benchmark stage's inputs",
        'gates.checks[1].backend: unknown backend "onnxrutnime" (did you mean "onnxruntime"?); known: '
        "onnxruntime, openvino, litert, pytorch, pytorch-compile",
        'gates.checks[1].artifacts[0]: "bench" makes a report, not a model; name a stage whose artifact ships',
    ]


def row(stage: str, top1: float, median: float, *, batch: int = 1, target: str | None = None,
        size: int = 1000, bench: str = "bench", fmt: str = "onnx") -> dict[str, Any]:
    r = {"stage": stage, "format": fmt, "precision": "fp32", "backend": "onnxruntime" if fmt == "onnx" else "pytorch",
         "batch": batch, "size_bytes": size, "status": "ok", "top1": top1, "top5": 99.0,
         "median_ms": median, "p90_ms": median * 1.2, "p99_ms": median * 1.5, "bench": bench}
    if target is not None:
        r["target"] = target
    return r


ROWS = [row("teacher", 90.0, 10.0, fmt="model"), row("int8", 89.2, 2.0),
        row("int8", 89.2, 30.0, target="rpi4")]


def results_of(checks: list[dict[str, Any]], rows: list[dict[str, Any]] = ROWS,
               baseline: list[dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    gates = GateSet.model_validate({"teacher": "teacher", "checks": checks})
    return [(r.measured_on, r.measured, r.status)
            for r in evaluate_gates(gates, rows, {"int8": 2_500_000}, baseline)]


def test_accuracy_gates_against_the_teacher() -> None:
    assert results_of([
        {"type": "max_top1_drop", "artifacts": ["int8"], "max_drop": 1.0},
        {"type": "max_top1_drop", "artifacts": ["int8"], "min_retained_pct": 99.5},  # 89.2/90 = 99.11 %
        {"type": "min_accuracy", "artifacts": ["int8"], "min": 89.5, "target": "local"},
    ]) == [
        ("onnx/fp32 onnxruntime local", "+0.80 pt", "pass"),
        ("onnx/fp32 onnxruntime rpi4", "+0.80 pt", "pass"),
        ("onnx/fp32 onnxruntime local", "99.11%", "fail"),
        ("onnx/fp32 onnxruntime rpi4", "99.11%", "fail"),
        ("onnx/fp32 onnxruntime local", "89.20%", "fail"),
    ]


def test_latency_speedup_and_size_gates_per_target() -> None:
    assert results_of([
        {"type": "max_latency", "artifacts": ["int8"], "max_ms": 5, "statistic": "median"},
        {"type": "min_speedup", "artifacts": ["int8"], "min": 4, "target": "local"},
        {"type": "max_size", "artifacts": ["int8"], "max_mb": 2},
    ]) == [
        ("onnx/fp32 onnxruntime local b1", "2.000 ms", "pass"),
        ("onnx/fp32 onnxruntime rpi4 b1", "30.000 ms", "fail"),
        ("onnx/fp32 onnxruntime local b1", "x5.00", "pass"),
        ("files", "2.500 MB", "fail"),
    ]


def test_gates_versus_their_own_reference() -> None:
    """An INT8 artifact is judged against the FP32 artifact of its own runtime, not the teacher."""
    rows = [*ROWS, row("fp32_onnx", 89.5, 3.5)]
    assert results_of([
        {"type": "min_speedup", "artifacts": ["int8"], "min": 1.5, "versus": "fp32_onnx", "target": "local"},
        {"type": "max_top1_drop", "artifacts": ["int8"], "max_drop": 0.2, "versus": "fp32_onnx", "target": "local"},
        {"type": "min_speedup", "artifacts": ["int8"], "min": 1.5, "versus": "fp32_onnx", "target": "rpi4"},
    ], rows=rows) == [
        ("onnx/fp32 onnxruntime local b1", "x1.75", "pass"),
        ("onnx/fp32 onnxruntime local", "+0.30 pt", "fail"),
        ("onnx/fp32 onnxruntime rpi4 b1", "no reference row", "fail"),
    ]
    found = problems_of({"checks": [
        {"type": "min_speedup", "artifacts": ["onnx"], "min": 1, "versus": "onnxx"},
        {"type": "min_speedup", "artifacts": ["onnx"], "min": 1, "versus": "model"},
    ]})
    assert found[0].startswith('gates.checks[0].versus: "onnxx" names no stage (did you mean "onnx"?)')
    assert found[1] == ('gates.checks[1].artifacts[0]: "onnx" and its reference "model" are not measured by one '
                        "benchmark stage; list both in one benchmark's inputs so they are compared on the same images")


def test_a_gate_without_a_measurement_fails() -> None:
    failed = dict(row("int8", 0, 1), status="failed", reason="backend crashed")
    assert results_of([{"type": "max_latency", "artifacts": ["int8"], "max_ms": 5, "batch": 8}]) == [
        ("-", "not measured", "fail")]
    assert results_of([{"type": "min_accuracy", "artifacts": ["int8"], "min": 1}], rows=[failed]) == [
        ("onnx/fp32 onnxruntime local b1", "failed", "fail")]


def test_regression_against_a_faster_baseline() -> None:
    baseline = [dict(row("int8", 89.0, 1.0))]  # the last release ran in 1 ms; now 2 ms
    gate = [{"type": "max_regression", "artifacts": ["int8"], "target": "local"}]
    assert results_of(gate, baseline=baseline) == [
        ("onnx/fp32 onnxruntime local b1", "-0.20 pt", "pass"),
        ("onnx/fp32 onnxruntime local b1", "+100.0%", "fail"),
        ("onnx/fp32 onnxruntime local b1", "+0.0%", "pass"),
    ]
    assert results_of(gate) == [("-", "-", "skipped")]
    table = gate_table(evaluate_gates(GateSet.model_validate({"checks": gate}), ROWS, {}, baseline))
    assert "| max_regression | int8 | onnx/fp32 onnxruntime local b1 | median +<= 10% vs baseline | +100.0% | - | confident | **FAIL** |" in table


def test_release_refuses_bad_input_before_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["output"] = str(tmp_path / "run")
    no_gates = write_recipe(tmp_path / "plain.yaml", doc)
    assert main(["release", str(no_gates), "--version", "1.0"]) == 2
    assert "declares no gates; a release needs a 'gates:' section" in capsys.readouterr().err
    gated = load_recipe(write_recipe(tmp_path / "gated.yaml", {**doc, "gates": GOOD_GATES}))
    with pytest.raises(CompressorError, match=r'--version "1 0" is not a usable version'):
        make_release(gated, "1 0")
    with pytest.raises(CompressorError, match=r"baseline .*missing does not exist; pass the folder a release wrote"):
        make_release(gated, "1.0", baseline=tmp_path / "missing")
    assert not (tmp_path / "run").exists()  # nothing ran


# -- gates that know their noise -----------------------------------------------------------------

def with_outcomes(r: dict[str, Any], correct: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """A row whose per-image top-1 outcomes are ``correct`` (as a benchmark records them)."""
    pred = np.where(correct, labels, (labels + 1) % 10)
    out = dict(r, top1=round(100 * float(correct.mean()), 3), accuracy_images=len(labels))
    out["outcomes"] = prediction_outcomes(pred, correct, labels)
    return out


def small_sample(n: int = 100) -> list[dict[str, Any]]:
    """Teacher right on 90 of 100 images; the candidate loses two of them and gains one: -1 pt."""
    labels = np.arange(n) % 10
    teacher = np.arange(n) < 90
    cand = teacher.copy()
    cand[[0, 1]] = False
    cand[95] = True
    return [with_outcomes(row("teacher", 0, 10.0, fmt="model"), teacher, labels),
            with_outcomes(row("int8", 0, 2.0), cand, labels)]


def decided(gate: dict[str, Any], rows: list[dict[str, Any]], mode: str) -> list[Any]:
    gates = GateSet.model_validate({"teacher": "teacher", "decide": mode, "checks": [gate]})
    return list(evaluate_gates(gates, rows, {}))


def test_a_drop_gate_passes_point_and_fails_strict_on_a_small_sample() -> None:
    gate = {"type": "max_top1_drop", "artifacts": ["int8"], "max_drop": 2.0}
    point, = decided(gate, small_sample(), "point")
    strict, = decided(gate, small_sample(), "strict")
    confident, = decided(gate, small_sample(), "confident")
    assert (point.status, confident.status, strict.status) == ("pass", "pass", "fail")
    # drop 1 pt; Bonett-Price on b = 2, c = 1, n = 100: 1/102 +- 1.96 sqrt((5/102 - (1/102)^2) / 102), exact McNemar p = 1
    assert strict.value == pytest.approx(1.0) and strict.n == 100
    assert (strict.low, strict.high) == pytest.approx((-3.312, 5.273), abs=0.001)
    assert strict.measured == "+1.00 ± 4.29 pt" and "mcnemar p=1" in str(strict.method)
    # 100 images can never pass a 2 pt gate strictly: a perfect copy needs z sqrt(2) / (n + 2) <= 2%
    assert strict.needed == 137
    assert "100 images cannot pass strict at 2 pt even with no image changed: needs >= 137" in strict.note
    table = gate_table([strict])
    assert "| +1.00 ± 4.29 pt | 100 | strict | **FAIL** |" in table
    # the same gate with 2,000 images of the same kind passes strict
    many = small_sample(2000)
    many[1]["outcomes"] = small_sample(2000)[0]["outcomes"]  # a perfect copy of the teacher
    many[1]["top1"] = many[0]["top1"]
    assert decided(gate, many, "strict")[0].status == "pass"


def test_per_gate_decide_overrides_the_default_and_retained_and_floor_intervals() -> None:
    rows = small_sample()
    gates = GateSet.model_validate({"teacher": "teacher", "decide": "strict", "checks": [
        {"type": "max_top1_drop", "artifacts": ["int8"], "max_drop": 2.0, "decide": "point"},
        {"type": "max_top1_drop", "artifacts": ["int8"], "min_retained_pct": 98},
        {"type": "min_accuracy", "artifacts": ["int8"], "min": 80, "decide": "confident"},
        {"type": "min_accuracy", "artifacts": ["int8"], "min": 80},
    ]})
    drop, kept, floor_confident, floor_strict = evaluate_gates(gates, rows, {})
    assert (drop.decide, drop.status) == ("point", "pass")
    assert kept.decide == "strict" and kept.status == "fail" and kept.value == pytest.approx(98.89, abs=0.01)
    assert kept.low is not None and kept.low < 98 < kept.high
    # 89% of 100 images: Wilson [81.4, 93.8] clears 80; not with a floor of 85
    assert floor_confident.status == floor_strict.status == "pass"
    assert floor_strict.low == pytest.approx(81.37, abs=0.01)


def test_a_target_subset_is_paired_with_its_reference() -> None:
    labels = np.arange(200) % 10
    teacher = np.ones(200, bool)
    keep = np.linspace(0, 199, 50).round().astype(int)
    pred = labels[keep].copy()
    pred[:2] = (pred[:2] + 1) % 10
    device = row("int8", 96.0, 2.0, target="board")
    device["outcomes"] = prediction_outcomes(pred, None, labels[keep], subset_of=200)
    ref = with_outcomes(row("teacher", 0, 10.0, fmt="model"), teacher, labels)
    result, = decided({"type": "max_top1_drop", "artifacts": ["int8"], "max_drop": 5}, [ref, device], "point")
    assert result.n == 50 and result.value == pytest.approx(4.0) and result.low is not None


def test_latency_gates_use_the_interval_of_their_statistic() -> None:
    fast = dict(row("int8", 89.0, 4.8), median_ci_ms=[4.5, 5.4], iterations=200)
    slow = dict(row("teacher", 90.0, 10.0, fmt="model"), median_ci_ms=[9.8, 10.2], iterations=200)
    gate = {"type": "max_latency", "artifacts": ["int8"], "max_ms": 5, "statistic": "median"}
    assert [decided(gate, [fast], m)[0].status for m in ("point", "confident", "strict")] == ["pass", "pass", "fail"]
    assert decided(gate, [fast], "strict")[0].measured == "4.800 ± 0.45 ms"
    speed = {"type": "min_speedup", "artifacts": ["int8"], "min": 2.0}
    # x2.08, interval [9.8 / 5.4, 10.2 / 4.5] = [1.81, 2.27]
    result, = decided(speed, [fast, slow], "strict")
    assert result.status == "fail" and (result.low, result.high) == pytest.approx((1.815, 2.267), abs=0.001)
    assert decided(speed, [fast, slow], "confident")[0].status == "pass"
    # a row without an interval cannot pass strict, and says why
    bare, = decided(gate, [row("int8", 89.0, 4.8)], "strict")
    assert bare.status == "fail" and "no interval recorded" in bare.note


def test_gates_over_seeds_take_the_worst_or_the_mean() -> None:
    """Three seeds drop 0.5, 0.8 and 1.4 pt against a 1 pt ceiling (decided on the estimates)."""
    gates = GateSet.model_validate({"teacher": "teacher", "decide": "point", "checks": [
        {"type": "max_top1_drop", "artifacts": ["int8"], "max_drop": 1.0},
        {"type": "max_top1_drop", "artifacts": ["int8"], "max_drop": 1.0, "over_seeds": "mean"},
    ]})
    per_seed = {seed: evaluate_gates(gates, [row("teacher", 90.0, 10.0, fmt="model"), row("int8", 90.0 - drop, 2.0)],
                                     {}) for seed, drop in ((0, 0.5), (1, 0.8), (2, 1.4))}
    worst, mean = combine_seeds(gates, per_seed)
    assert (worst.status, worst.measured) == ("fail", "+1.40 pt") and "seed 2 of 3" in worst.note
    assert [s["status"] for s in worst.seeds or []] == ["pass", "pass", "fail"]
    assert mean.status == "pass" and mean.value == pytest.approx(0.9)
    assert mean.measured == "0.90 (mean of 3 seeds, sd 0.46)"
    # with per-seed intervals of +-1 pt: the images' +-1 and t(2) sd / sqrt(3) over seeds, in quadrature
    spread = {s: [dataclasses.replace(r, low=r.value - 1, high=r.value + 1) for r in results]
              for s, results in per_seed.items()}
    mean = combine_seeds(gates, spread)[1]
    half = math.hypot(1.0, 4.303 * statistics.stdev([0.5, 0.8, 1.4]) / math.sqrt(3))
    assert (mean.low, mean.high) == pytest.approx((0.9 - half, 0.9 + half))
    assert mean.measured == f"0.90 ± {half:.2f} (mean of 3 seeds, sd 0.46)" and mean.status == "pass"
    # a seed whose row is missing fails the check under worst
    del per_seed[1][0:2]
    assert combine_seeds(gates, per_seed)[0].status == "fail"
    assert "not measured under seed(s) 1" in combine_seeds(gates, per_seed)[0].note


def test_the_issue_rank1_example_is_noise_over_200_queries() -> None:
    """Rank-1 72 -> 69 over 200 queries (8 queries lost, 2 gained) against a 2 pt gate: the point rule
    fails it, the bootstrap over queries says the interval reaches below 2 pt."""
    teacher = np.arange(200) < 144
    student = teacher.copy()
    student[:8] = False
    student[190:192] = True
    ap = np.linspace(0.2, 0.9, 200)

    def embedding_row(stage: str, hits: np.ndarray) -> dict[str, Any]:
        r = {k: v for k, v in row(stage, 0, 2.0).items() if k not in ("top1", "top5")}
        r.update(rank1=round(100 * float(hits.mean()), 3), map=round(100 * float(ap.mean()), 3),
                 outcomes={"unit": "query", "n": 200, "labels": "same", "rank1": pack_bits(hits),
                           "rank5": pack_bits(hits), "map": pack_floats(ap)})
        return r

    rows = [embedding_row("teacher", teacher), embedding_row("int8", student)]
    gate = {"type": "max_top1_drop", "artifacts": ["int8"], "metric": "rank1", "max_drop": 2.0}
    point, = decided(gate, rows, "point")
    confident, = decided(gate, rows, "confident")
    strict, = decided(gate, rows, "strict")
    assert (point.status, confident.status, strict.status) == ("fail", "pass", "fail")
    assert point.value == pytest.approx(3.0) and point.n == 200 and "bootstrap" in str(point.method)
    assert point.low is not None and point.low < 2.0 < 3.0 < point.high
    mean_ap, = decided({"type": "max_top1_drop", "artifacts": ["int8"], "metric": "map", "max_drop": 0.5},
                       rows, "strict")
    assert mean_ap.status == "pass" and mean_ap.low == mean_ap.high == 0.0
