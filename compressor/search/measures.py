"""What a finished trial measured: its objective values and, for each constraint, by how much it misses.

Rows are the benchmark rows of the trial's run (``compressor.release.bundle.benchmark_rows``), the same
rows release gates read. Whether a constraint holds is the gates' own verdict; the amounts here only rank
how far a failing plan is from passing (Optuna's constrained sampling and the "closest trial").
"""

from __future__ import annotations

from typing import Any

from compressor.errors import CompressorError
from compressor.recipe import Recipe
from compressor.release.gates import (
    MB,
    GateBase,
    MaxLatency,
    MaxSize,
    MaxTop1Drop,
    MinAccuracy,
    MinSpeedup,
    row_target,
)
from compressor.search_config import AccuracyObjective, LatencyObjective, SearchConfig


def accuracy_metric(cfg: SearchConfig, recipe: Recipe) -> str:
    chosen = cfg.objectives.accuracy.metric if cfg.objectives.accuracy is not None else None
    if chosen is not None:
        return chosen
    return str(recipe.embedding.metric) if recipe.task == "embedding" and recipe.embedding is not None else "top1"


def _rows(rows: list[dict[str, Any]], artifact: str, spec: AccuracyObjective | LatencyObjective | GateBase,
          ) -> list[dict[str, Any]]:
    bench, batch = getattr(spec, "bench", None), getattr(spec, "batch", None)
    return [r for r in rows if r.get("stage") == artifact and r.get("status") == "ok"
            and (bench is None or r.get("bench") == bench)
            and (spec.target is None or row_target(r) == spec.target)
            and (spec.format is None or r.get("format") == spec.format)
            and (spec.backend is None or r.get("backend") == spec.backend)
            and (batch is None or r.get("batch") == batch)]


def _filters(spec: Any) -> str:
    parts = [f"{k}={getattr(spec, k)}" for k in ("bench", "target", "format", "backend", "batch")
             if getattr(spec, k, None) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _objective_rows(cfg: SearchConfig, recipe: Recipe, rows: list[dict[str, Any]]
                    ) -> dict[str, tuple[str, dict[str, Any]]]:
    """The benchmark row each of the accuracy and latency objectives is read from, with the key it is read
    at. Several matching rows (backends, targets) give the worst: a plan is as good as its worst runtime."""
    chosen: dict[str, tuple[str, dict[str, Any]]] = {}
    objectives = cfg.objectives
    if objectives.accuracy is not None:
        artifact = objectives.accuracy.artifact or cfg.artifact
        metric = accuracy_metric(cfg, recipe)
        found = [r for r in _rows(rows, artifact, objectives.accuracy) if r.get(metric) is not None]
        if not found:
            msg = f"no benchmark row of {artifact}{_filters(objectives.accuracy)} has {metric}"
            raise CompressorError(msg)
        chosen["accuracy"] = metric, min(found, key=lambda r: float(r[metric]))
    if objectives.latency is not None:
        lat = objectives.latency
        artifact = lat.artifact or cfg.artifact
        key = f"{lat.statistic}_ms"
        found = [r for r in _rows(rows, artifact, lat) if r.get(key) is not None]
        if not found:
            msg = f"no benchmark row of {artifact}{_filters(lat)} has {key}"
            raise CompressorError(msg)
        chosen["latency"] = key, max(found, key=lambda r: float(r[key]))
    return chosen


def objective_values(cfg: SearchConfig, recipe: Recipe, rows: list[dict[str, Any]],
                     sizes: dict[str, int]) -> dict[str, float]:
    """``{"accuracy": points, "latency": ms, "size": bytes}`` for the objectives the search has.

    Several matching rows (backends, targets) give the worst value: a plan is as good as its worst runtime.
    """
    values = {name: float(row[key]) for name, (key, row) in _objective_rows(cfg, recipe, rows).items()}
    if cfg.objectives.size is not None:
        artifact = cfg.objectives.size.artifact or cfg.artifact
        if artifact not in sizes:
            msg = f"no files were recorded for {artifact}"
            raise CompressorError(msg)
        values["size"] = float(sizes[artifact])
    return values


def objective_evidence(cfg: SearchConfig, recipe: Recipe, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What trials are compared by, beyond their values: the per-image outcomes of the row the accuracy
    objective took (paired intervals on the same images) and the interval of the latency statistic."""
    evidence: dict[str, Any] = {}
    for name, (key, row) in _objective_rows(cfg, recipe, rows).items():
        if name == "accuracy":
            evidence[name] = {"metric": key, key: row[key], "outcomes": row.get("outcomes"),
                              "accuracy_images": row.get("accuracy_images")}
        else:
            statistic = key.removesuffix("_ms")
            evidence[name] = {"statistic": statistic, key: row[key], f"{statistic}_ci_ms": row.get(f"{statistic}_ci_ms"),
                              "iterations": row.get("iterations")}
    return evidence


def _reference_row(rows: list[dict[str, Any]], row: dict[str, Any], reference: str | None, timing: bool,
                   ) -> dict[str, Any] | None:
    same = [c for c in rows if c.get("bench") == row.get("bench") and c.get("stage") == reference
            and c.get("status") == "ok" and (not timing or (row_target(c) == row_target(row)
                                                            and c.get("batch") == row.get("batch")))]
    return same[0] if same else None


def violation(gate: GateBase, teacher: str | None, rows: list[dict[str, Any]], sizes: dict[str, int],
              ) -> tuple[float, float | None]:
    """How far the worst artifact misses ``gate``, relative to its threshold (0: it holds), and the
    reference's accuracy for accuracy-drop gates (None otherwise)."""
    worst, ref_value = 0.0, None
    reference = gate.reference(teacher)
    for artifact in gate.artifacts:
        if isinstance(gate, MaxSize):
            if artifact in sizes:
                worst = max(worst, sizes[artifact] / (gate.max_mb * MB) - 1)
            continue
        for row in _rows(rows, artifact, gate):
            if isinstance(gate, MaxLatency):
                worst = max(worst, float(row[f"{gate.statistic}_ms"]) / gate.max_ms - 1)
            elif isinstance(gate, MinAccuracy) and row.get(gate.metric) is not None:
                worst = max(worst, (gate.min - float(row[gate.metric])) / 100)
            elif isinstance(gate, MaxTop1Drop | MinSpeedup):
                ref = _reference_row(rows, row, reference, timing=isinstance(gate, MinSpeedup))
                if ref is None:
                    continue
                if isinstance(gate, MinSpeedup):
                    mine, theirs = float(row[f"{gate.statistic}_ms"]), float(ref[f"{gate.statistic}_ms"])
                    worst = max(worst, 1 - (theirs / mine if mine > 0 else float("inf")) / gate.min)
                elif row.get(gate.metric) is not None and ref.get(gate.metric) is not None:
                    mine, theirs = float(row[gate.metric]), float(ref[gate.metric])
                    ref_value = theirs
                    floor = theirs - gate.max_drop if gate.max_drop is not None else \
                        theirs * (gate.min_retained_pct or 0) / 100
                    worst = max(worst, (floor - mine) / 100)
    return max(0.0, worst), ref_value
