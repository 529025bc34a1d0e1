"""Release gates: the recipe's ``gates:`` section, its cross-checks, and its evaluation.

A gate names the artifacts (stage names) it applies to and is checked against the rows that
benchmark stages measured (``stage``, ``format``, ``precision``, ``backend``, ``batch``, ``target``,
``top1``, ``median_ms``, ``p90_ms``, ``size_bytes``). A gate with no row to check fails: a release
never passes on a measurement that was not made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from compressor.core.config import Strict
from compressor.errors import Problem, did_you_mean
from compressor.metrics.names import measured

Statistic = Literal["median", "p90", "p99"]
DEFAULT_TARGET = "local"
MB = 1_000_000


class GateBase(Strict):
    """Fields every gate has: what it applies to, and which benchmark rows it reads."""

    name: str | None = Field(None, min_length=1, description="Label in the gate table (default: the gate type).")
    artifacts: list[str] = Field(min_length=1, description="Stages whose artifacts this gate applies to.")
    target: str | None = Field(None, description="Only rows measured on this target (rows without one are 'local').")
    format: str | None = Field(None, description="Only rows of this format (model, onnx, openvino, tflite).")
    backend: str | None = Field(None, description="Only rows measured with this runtime backend.")
    batch: int | None = Field(None, ge=1, description="Only rows of this batch size.")

    needs_teacher: ClassVar[bool] = False
    needs_rows: ClassVar[bool] = True

    @property
    def label(self) -> str:
        return self.name or str(getattr(self, "type", "gate"))

    def reference(self, teacher: str | None) -> str | None:
        """The stage this gate compares against: its own ``versus``, else the gate set's teacher."""
        return getattr(self, "versus", None) or teacher


Accuracy = Literal["top1", "top5", "rank1", "rank5", "map"]


class Versus(GateBase):
    """A gate that compares each artifact with a reference artifact measured in the same benchmark stage."""

    versus: str | None = Field(
        None, description="Stage of the reference for this gate (default: gates.teacher); e.g. the FP32 "
        "artifact of the same runtime, to judge an INT8 artifact against its own float model.")
    needs_teacher: ClassVar[bool] = True


class MaxTop1Drop(Versus):
    """Top-1 (or ``metric``) may drop at most ``max_drop`` points below the reference, or keep
    ``min_retained_pct`` of it."""

    type: Literal["max_top1_drop"]
    metric: Accuracy = Field("top1", description="Accuracy compared: top1, or rank1 / map for embedding models.")
    max_drop: float | None = Field(None, ge=0, le=100, description="Largest drop versus the teacher, in top-1 points.")
    min_retained_pct: float | None = Field(
        None, gt=0, le=100, description="Top-1 must be at least this percent of the teacher's (MLPerf edge: 99).")

    @model_validator(mode="after")
    def _one_threshold(self) -> MaxTop1Drop:
        if (self.max_drop is None) == (self.min_retained_pct is None):
            msg = "give exactly one of max_drop (points) or min_retained_pct (percent of the teacher's top-1)"
            raise ValueError(msg)
        return self


class MinAccuracy(GateBase):
    type: Literal["min_accuracy"]
    metric: Accuracy = Field("top1", description="top1 / top5, or rank1 / rank5 / map for embedding models.")
    min: float = Field(ge=0, le=100, description="Lowest accepted accuracy, percent.")


class MaxLatency(GateBase):
    type: Literal["max_latency"]
    max_ms: float = Field(gt=0, description="Highest accepted latency per batch, milliseconds.")
    statistic: Statistic = Field("p90", description="Latency statistic (MLPerf single-stream uses p90).")


class MinSpeedup(Versus):
    """Reference latency / artifact latency, at the same batch and target, in the same benchmark stage."""

    type: Literal["min_speedup"]
    min: float = Field(gt=0, description="Lowest accepted speed-up versus the teacher (1.0: not slower).")
    statistic: Statistic = "median"


class MaxSize(GateBase):
    type: Literal["max_size"]
    max_mb: float = Field(gt=0, description="Largest accepted size of the artifact's files, in MB (10^6 bytes).")
    needs_rows: ClassVar[bool] = False


class MaxRegression(GateBase):
    """Each metric may get at most this much worse than in the baseline release (``--baseline``)."""

    type: Literal["max_regression"]
    max_top1_drop: float | None = Field(0.5, ge=0, description="Top-1 points below the baseline; null: not checked.")
    max_latency_increase_pct: float | None = Field(10.0, ge=0, description="Percent slower; null: not checked.")
    max_size_increase_pct: float | None = Field(5.0, ge=0, description="Percent larger; null: not checked.")
    statistic: Statistic = "median"

    @model_validator(mode="after")
    def _some_metric(self) -> MaxRegression:
        if self.max_top1_drop is None and self.max_latency_increase_pct is None and self.max_size_increase_pct is None:
            msg = "checks nothing: set at least one of max_top1_drop, max_latency_increase_pct, max_size_increase_pct"
            raise ValueError(msg)
        return self


AnyGate = MaxTop1Drop | MinAccuracy | MaxLatency | MinSpeedup | MaxSize | MaxRegression
Gate = Annotated[AnyGate, Field(discriminator="type")]
GATE_TYPES: dict[str, type[GateBase]] = {
    cls.model_fields["type"].annotation.__args__[0]: cls  # type: ignore[union-attr]
    for cls in (MaxTop1Drop, MinAccuracy, MaxLatency, MinSpeedup, MaxSize, MaxRegression)
}


class GateSet(Strict):
    """The recipe's ``gates:`` section."""

    teacher: str | None = Field(None, description="Stage of the reference model for drop and speed-up gates.")
    ship: list[str] | None = Field(
        None, min_length=1, description="Stages whose artifacts go into a release bundle (default: those gates name).")
    checks: list[Gate] = Field(min_length=1)

    def shipped(self) -> list[str]:
        """Stage names whose artifacts a release bundle holds, in order, without duplicates."""
        if self.ship:
            return list(dict.fromkeys(self.ship))
        # The teacher is the reference, not the product: it ships only when listed in ``ship``.
        return list(dict.fromkeys(a for g in self.checks for a in g.artifacts if a != self.teacher))


# -- recipe cross-checks -------------------------------------------------------------------------

def reference_problems(gates: GateSet, kinds: dict[str, str], measured_by: dict[str, list[str]],
                       backends: Iterable[str], formats: Iterable[str]) -> list[Problem]:
    """Problems with the names a gate set uses: stages that do not exist, are reports, or are not measured.

    Args:
        kinds: stage name -> kind of the artifact it makes (``report`` for benchmarks).
        measured_by: stage name -> benchmark stages whose rows measure it.
        backends: known backend names; formats: known artifact formats.
    """
    problems: list[Problem] = []
    backends, formats = list(backends), list(formats)

    def check_name(name: str, path: str) -> bool:
        if name not in kinds:
            problems.append(Problem(path, f'"{name}" names no stage{did_you_mean(name, kinds)}; stages: {", ".join(kinds)}'))
            return False
        if kinds[name] == "report":
            problems.append(Problem(path, f'"{name}" makes a report, not a model; name a stage whose artifact ships'))
            return False
        return True

    teacher_ok = gates.teacher is not None and check_name(gates.teacher, "gates.teacher")
    for j, name in enumerate(gates.ship or []):
        check_name(name, f"gates.ship[{j}]")
    for i, gate in enumerate(gates.checks):
        where = f"gates.checks[{i}]"
        versus = getattr(gate, "versus", None)
        versus_ok = versus is not None and check_name(versus, f"{where}.versus")
        reference = gate.reference(gates.teacher)
        reference_ok = versus_ok if versus is not None else teacher_ok
        if gate.needs_teacher and reference is None:
            problems.append(Problem("gates.teacher", f"is required by {where} ({gate.type}); name the stage of "
                                                     "the reference model, e.g. teacher"))
        if gate.backend is not None and gate.backend not in backends:
            problems.append(Problem(f"{where}.backend", f'unknown backend "{gate.backend}"'
                                    f"{did_you_mean(gate.backend, backends)}; known: {', '.join(backends)}"))
        if gate.format is not None and gate.format not in formats:
            problems.append(Problem(f"{where}.format", f'unknown format "{gate.format}"'
                                    f"{did_you_mean(gate.format, formats)}; known: {', '.join(formats)}"))
        for j, name in enumerate(gate.artifacts):
            path = f"{where}.artifacts[{j}]"
            if not check_name(name, path) or not gate.needs_rows:
                continue
            benches = measured_by.get(name, [])
            if not benches:
                problems.append(Problem(path, f'"{name}" is not measured by any benchmark stage; add it to a '
                                              "benchmark stage's inputs"))
            elif gate.needs_teacher and reference_ok and not set(benches) & set(measured_by.get(str(reference), [])):
                problems.append(Problem(path, f'"{name}" and its reference "{reference}" are not measured by '
                                              "one benchmark stage; list both in one benchmark's inputs so they "
                                              "are compared on the same images"))
    return problems


# -- evaluation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateResult:
    """One line of the gate table."""

    gate: str
    type: str
    artifact: str
    measured_on: str
    threshold: str
    measured: str
    status: Literal["pass", "fail", "skipped"]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def row_target(row: dict[str, Any]) -> str:
    return str(row.get("target") or DEFAULT_TARGET)


def _where(row: dict[str, Any], with_batch: bool = True) -> str:
    text = f"{row.get('format')}/{row.get('precision')} {row.get('backend')} {row_target(row)}"
    return text + (f" b{row.get('batch')}" if with_batch else "")


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("stage"), row.get("format"), row.get("precision"), row.get("backend"), row.get("batch"),
            row_target(row))


def _matches(gate: GateBase, row: dict[str, Any], artifact: str) -> bool:
    return (row.get("stage") == artifact
            and (gate.target is None or row_target(row) == gate.target)
            and (gate.format is None or row.get("format") == gate.format)
            and (gate.backend is None or row.get("backend") == gate.backend)
            and (gate.batch is None or row.get("batch") == gate.batch))


def _filters(gate: GateBase) -> str:
    parts = [f"{k}={getattr(gate, k)}" for k in ("target", "format", "backend", "batch") if getattr(gate, k) is not None]
    return f" matching {', '.join(parts)}" if parts else ""


def _accuracy_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per measured accuracy: accuracy does not depend on the batch size of the timing."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        seen.setdefault((row.get("bench"), *_row_key(row)[:4], row_target(row)), row)
    return list(seen.values())


class _Evaluator:
    def __init__(self, gates: GateSet, rows: list[dict[str, Any]], sizes: dict[str, int],
                 baseline_rows: list[dict[str, Any]] | None):
        self.gates = gates
        self.rows = rows
        self.sizes = sizes
        self.baseline = {_row_key(r): r for r in baseline_rows} if baseline_rows is not None else None
        self.results: list[GateResult] = []

    def add(self, gate: GateBase, artifact: str, where: str, threshold: str, measured: str, ok: bool | None,
            note: str = "") -> None:
        status: Literal["pass", "fail", "skipped"] = "skipped" if ok is None else "pass" if ok else "fail"
        self.results.append(GateResult(gate.label, str(getattr(gate, "type", "")), artifact, where, threshold,
                                       measured, status, note))

    def teacher_row(self, row: dict[str, Any], timing: bool, reference: str | None) -> dict[str, Any] | None:
        """The reference's row in the same benchmark stage (same images). For timing: same batch and
        target; for accuracy the same target is preferred, else any (the teacher often runs only locally)."""
        candidates = [c for c in self.rows if c.get("bench") == row.get("bench")
                      and c.get("stage") == reference and c.get("status") == "ok"]
        same = [c for c in candidates if row_target(c) == row_target(row)
                and (not timing or c.get("batch") == row.get("batch"))]
        return same[0] if same else None if timing else next(iter(candidates), None)

    def run(self) -> list[GateResult]:
        for gate in self.gates.checks:
            for artifact in gate.artifacts:
                if isinstance(gate, MaxSize):
                    self.size(gate, artifact)
                    continue
                if isinstance(gate, MaxRegression) and self.baseline is None:
                    self.add(gate, artifact, "-", "-", "-", None, "no baseline release given (--baseline)")
                    continue
                rows = [r for r in self.rows if _matches(gate, r, artifact)]
                if not rows:
                    self.add(gate, artifact, "-", "-", "not measured", False,
                             f"no benchmark row for {artifact}{_filters(gate)}")
                    continue
                if not isinstance(gate, MaxLatency | MinSpeedup | MaxRegression):
                    rows = _accuracy_rows(rows)
                for row in rows:
                    if row.get("status") != "ok":
                        self.add(gate, artifact, _where(row), "-", row.get("status", "?"), False,
                                 str(row.get("reason", "the benchmark row did not finish")))
                    else:
                        self.check(gate, artifact, row)
        return self.results

    def size(self, gate: MaxSize, artifact: str) -> None:
        size = self.sizes.get(artifact)
        if size is None:
            self.add(gate, artifact, "files", f"<= {gate.max_mb:g} MB", "not measured", False, "no files recorded")
        else:
            self.add(gate, artifact, "files", f"<= {gate.max_mb:g} MB", f"{size / MB:.3f} MB", size <= gate.max_mb * MB)

    def check(self, gate: GateBase, artifact: str, row: dict[str, Any]) -> None:
        metric = getattr(gate, "metric", None)
        if metric is not None and row.get(metric) is None:
            have = measured(row)
            self.add(gate, artifact, _where(row, False), f"{metric}", "not measured", False,
                     f"the row has no {metric}; it has {', '.join(have) or 'no accuracy'} (set the gate's metric)")
            return
        if isinstance(gate, MinAccuracy):
            value = float(row[gate.metric])
            self.add(gate, artifact, _where(row, False), f"{gate.metric} >= {gate.min:g}%", f"{value:.2f}%",
                     value >= gate.min)
        elif isinstance(gate, MaxLatency):
            value = float(row[f"{gate.statistic}_ms"])
            self.add(gate, artifact, _where(row), f"{gate.statistic} <= {gate.max_ms:g} ms", f"{value:.3f} ms",
                     value <= gate.max_ms)
        elif isinstance(gate, MaxTop1Drop):
            self.top1_drop(gate, artifact, row)
        elif isinstance(gate, MinSpeedup):
            ref = gate.reference(self.gates.teacher)
            teacher = self.teacher_row(row, timing=True, reference=ref)
            threshold = f"x{gate.min:g} vs {ref} ({gate.statistic})"
            if teacher is None:
                self.add(gate, artifact, _where(row), threshold, "no reference row", False,
                         f"reference {ref} has no batch {row.get('batch')} row in {row.get('bench')}")
                return
            mine, theirs = float(row[f"{gate.statistic}_ms"]), float(teacher[f"{gate.statistic}_ms"])
            speedup = theirs / mine if mine > 0 else float("inf")
            self.add(gate, artifact, _where(row), threshold, f"x{speedup:.2f}", speedup >= gate.min,
                     f"{theirs:.3f} ms -> {mine:.3f} ms")
        elif isinstance(gate, MaxRegression):
            self.regression(gate, artifact, row)

    def top1_drop(self, gate: MaxTop1Drop, artifact: str, row: dict[str, Any]) -> None:
        ref = gate.reference(self.gates.teacher)
        teacher = self.teacher_row(row, timing=False, reference=ref)
        if gate.max_drop is not None:
            threshold = f"drop <= {gate.max_drop:g} pt vs {ref}"
        else:
            threshold = f">= {gate.min_retained_pct:g}% of {ref}"
        if gate.metric != "top1":
            threshold = f"{gate.metric} {threshold}"
        if teacher is None:
            self.add(gate, artifact, _where(row, False), threshold, "no reference row", False,
                     f"reference {ref} has no row in {row.get('bench')}")
            return
        if teacher.get(gate.metric) is None:
            self.add(gate, artifact, _where(row, False), threshold, "no reference value", False,
                     f"reference {ref} row has no {gate.metric}")
            return
        mine, theirs = float(row[gate.metric]), float(teacher[gate.metric])
        elsewhere = f" (teacher on {row_target(teacher)})" if row_target(teacher) != row_target(row) else ""
        if gate.max_drop is not None:
            drop = theirs - mine
            self.add(gate, artifact, _where(row, False), threshold, f"{drop:+.2f} pt", drop <= gate.max_drop + 1e-9,
                     f"{theirs:.2f}% -> {mine:.2f}%{elsewhere}")
        else:
            assert gate.min_retained_pct is not None
            kept = 100.0 * mine / theirs if theirs > 0 else 100.0
            self.add(gate, artifact, _where(row, False), threshold, f"{kept:.2f}%",
                     kept >= gate.min_retained_pct - 1e-9, f"{theirs:.2f}% -> {mine:.2f}%{elsewhere}")

    def regression(self, gate: MaxRegression, artifact: str, row: dict[str, Any]) -> None:
        assert self.baseline is not None
        base = self.baseline.get(_row_key(row))
        if base is None or base.get("status") != "ok":
            self.add(gate, artifact, _where(row), "-", "-", None, "not in the baseline release")
            return
        if gate.max_top1_drop is not None:
            drop = float(base["top1"]) - float(row["top1"])
            self.add(gate, artifact, _where(row), f"top-1 drop <= {gate.max_top1_drop:g} pt vs baseline",
                     f"{drop:+.2f} pt", drop <= gate.max_top1_drop + 1e-9, f"{base['top1']:.2f}% -> {row['top1']:.2f}%")
        if gate.max_latency_increase_pct is not None:
            key = f"{gate.statistic}_ms"
            change = 100.0 * (float(row[key]) / float(base[key]) - 1.0) if float(base[key]) > 0 else 0.0
            self.add(gate, artifact, _where(row), f"{gate.statistic} +<= {gate.max_latency_increase_pct:g}% vs baseline",
                     f"{change:+.1f}%", change <= gate.max_latency_increase_pct + 1e-9,
                     f"{float(base[key]):.3f} ms -> {float(row[key]):.3f} ms")
        if gate.max_size_increase_pct is not None:
            old, new = int(base["size_bytes"]), int(row["size_bytes"])
            change = 100.0 * (new / old - 1.0) if old > 0 else 0.0
            self.add(gate, artifact, _where(row), f"size +<= {gate.max_size_increase_pct:g}% vs baseline",
                     f"{change:+.1f}%", change <= gate.max_size_increase_pct + 1e-9, f"{old} -> {new} bytes")


def evaluate_gates(gates: GateSet, rows: list[dict[str, Any]], sizes: dict[str, int],
                   baseline_rows: list[dict[str, Any]] | None = None) -> list[GateResult]:
    """Check every gate against benchmark ``rows`` (each with ``bench``: the benchmark stage's name).

    Args:
        sizes: stage name -> total bytes of its artifact's files (for ``max_size``).
        baseline_rows: the rows recorded in the baseline release, or None when there is none.
    """
    return _Evaluator(gates, rows, sizes, baseline_rows).run()


def gate_table(results: list[GateResult]) -> str:
    """The gate table as Markdown: gate, artifact, where, threshold, measured, result."""
    lines = ["| gate | artifact | measured on | threshold | measured | result | note |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        mark = {"pass": "PASS", "fail": "**FAIL**", "skipped": "skipped"}[r.status]
        lines.append(f"| {r.gate} | {r.artifact} | {r.measured_on} | {r.threshold} | {r.measured} | {mark} | {r.note} |")
    return "\n".join(lines) + "\n"


def summary(results: list[GateResult]) -> str:
    failed = sum(r.status == "fail" for r in results)
    passed = sum(r.status == "pass" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    text = f"gates: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")
    return text
