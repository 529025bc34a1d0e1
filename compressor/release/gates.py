"""Release gates: the recipe's ``gates:`` section, its cross-checks, and its evaluation.

A gate names the artifacts (stage names) it applies to and is checked against the rows that
benchmark stages measured (``stage``, ``format``, ``precision``, ``backend``, ``batch``, ``target``,
``top1``, ``median_ms``, ``p90_ms``, ``size_bytes``). A gate with no row to check fails: a release
never passes on a measurement that was not made.

Every accuracy a gate compares is given with a 95% interval computed on the images both rows saw
(see :mod:`compressor.metrics.stats`), every latency with the bootstrap interval of its statistic,
and each gate decides by its ``decide`` mode: ``point`` (the estimate alone), ``confident`` (fail
only when the whole interval is on the wrong side: noise never fails a gate) or ``strict`` (pass only
when the whole interval is on the right side: noise never passes one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from compressor.core.config import Strict
from compressor.errors import Problem, did_you_mean
from compressor.metrics.names import measured
from compressor.metrics.stats import (
    DEFAULT_LEVEL,
    Decide,
    Interval,
    accuracy_of,
    drop_interval,
    images_for_floor,
    images_needed,
    images_to_pass_strict,
    latency_interval,
    paired_outcomes,
    retained_interval,
    t_value,
)
from compressor.metrics.stats import (
    decide as decide_by,
)

Statistic = Literal["median", "p90", "p99"]
DEFAULT_TARGET = "local"
DEFAULT_DECIDE: Decide = "confident"
OverSeeds = Literal["mean", "worst"]
MB = 1_000_000


class GateBase(Strict):
    """Fields every gate has: what it applies to, and which benchmark rows it reads."""

    name: str | None = Field(None, min_length=1, description="Label in the gate table (default: the gate type).")
    artifacts: list[str] = Field(min_length=1, description="Stages whose artifacts this gate applies to.")
    target: str | None = Field(None, description="Only rows measured on this target (rows without one are 'local').")
    format: str | None = Field(None, description="Only rows of this format (model, onnx, openvino, tflite).")
    backend: str | None = Field(None, description="Only rows measured with this runtime backend.")
    batch: int | None = Field(None, ge=1, description="Only rows of this batch size.")
    decide: Decide | None = Field(
        None, description="point: the estimate alone; confident: fail only when the whole 95% interval is "
        "past the threshold; strict: pass only when the whole interval is within it (default: gates.decide).")
    over_seeds: OverSeeds | None = Field(
        None, description="Runs under several seeds: mean decides the seeds' mean; worst fails when any "
        "seed fails (default: gates.over_seeds).")

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
    decide: Decide = Field(
        DEFAULT_DECIDE, description="Default decide mode of every check: point, confident (noise never fails "
        "a gate) or strict (noise never passes one; the release mode).")
    over_seeds: OverSeeds = Field("worst", description="Default over_seeds of every check (runs with seeds).")
    confidence: float = Field(DEFAULT_LEVEL, ge=0.5, lt=1, description="Level of the intervals gates decide by.")
    checks: list[Gate] = Field(min_length=1)

    def mode(self, gate: GateBase) -> Decide:
        return gate.decide or self.decide

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
    """One line of the gate table.

    ``value``/``low``/``high``: the estimate and its interval in the threshold's unit (None: not
    measured, or no interval); ``n``: the images (queries, timing samples) behind the interval.
    """

    gate: str
    type: str
    artifact: str
    measured_on: str
    threshold: str
    measured: str
    status: Literal["pass", "fail", "skipped"]
    note: str = ""
    decide: str = DEFAULT_DECIDE
    value: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    method: str | None = None
    needed: int | None = None
    limit: float | None = None
    upper: bool | None = None
    seeds: list[dict[str, Any]] | None = None
    check: int = -1

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


@dataclass(frozen=True)
class _Measure:
    """What a check measured: the estimate, its interval (None: none known) and how it was shown."""

    value: float
    interval: Interval | None
    unit: str
    fmt: str = "{:+.2f}"

    def text(self) -> str:
        shown = self.fmt.format(self.value)
        if self.interval is not None and self.interval.method != "exact":
            half = self.interval.half_width
            return f"{shown} ± {abs(half):.2f}{self.unit}" if self.unit != "x" else f"x{self.value:.2f} ± {half:.2f}"
        return f"x{self.value:.2f}" if self.unit == "x" else f"{shown}{self.unit}"


def _ratio_interval(num: Interval | None, den: Interval | None, value: float, factor: float = 1.0,
                    offset: float = 0.0) -> Interval | None:
    """Interval of factor * num / den + offset from two independent intervals (bounds crossed:
    conservative); used for speed-ups and latency changes."""
    if num is None or den is None or num.low <= 0 or den.low <= 0:
        return None
    return Interval(value, factor * num.low / den.high + offset, factor * num.high / den.low + offset,
                    min(num.n, den.n), "bootstrap ratio")


class _Evaluator:
    def __init__(self, gates: GateSet, rows: list[dict[str, Any]], sizes: dict[str, int],
                 baseline_rows: list[dict[str, Any]] | None):
        self.gates = gates
        self.rows = rows
        self.sizes = sizes
        self.baseline = {_row_key(r): r for r in baseline_rows} if baseline_rows is not None else None
        self.results: list[GateResult] = []
        self.level = gates.confidence
        self.check_index = -1

    def add(self, gate: GateBase, artifact: str, where: str, threshold: str, measured: str, ok: bool | None,
            note: str = "", measure: _Measure | None = None, needed: int | None = None,
            limit: float | None = None, upper: bool | None = None) -> None:
        status: Literal["pass", "fail", "skipped"] = "skipped" if ok is None else "pass" if ok else "fail"
        iv = measure.interval if measure is not None else None
        self.results.append(GateResult(
            gate.label, str(getattr(gate, "type", "")), artifact, where, threshold, measured, status, note,
            self.gates.mode(gate), measure.value if measure is not None else None,
            iv.low if iv is not None else None, iv.high if iv is not None else None,
            iv.n if iv is not None else None, iv.method if iv is not None else None, needed, limit, upper,
            check=self.check_index))

    def judge(self, gate: GateBase, artifact: str, where: str, threshold: str, measure: _Measure, limit: float,
              upper: bool, note: str = "", needed: int | None = None) -> None:
        """Decide ``measure`` against ``limit`` (a ceiling when ``upper``) by the gate's mode, and record it."""
        mode = self.gates.mode(gate)
        iv = measure.interval
        ok = decide_by(measure.value, iv.low if iv else None, iv.high if iv else None, limit, upper, mode)
        notes = [note] if note else []
        if iv is None and mode == "strict":
            notes.append("no interval recorded: strict cannot pass it (re-run the benchmark)")
        elif iv is not None and not (iv.high <= limit + 1e-9 if upper else iv.low >= limit - 1e-9) and \
                not (iv.low > limit if upper else iv.high < limit):
            notes.append(f"undecided: the {self.level:.0%} interval [{iv.low:.2f}, {iv.high:.2f}] spans the threshold")
        self.add(gate, artifact, where, threshold, measure.text(), ok, "; ".join(notes), measure, needed, limit, upper)

    def teacher_row(self, row: dict[str, Any], timing: bool, reference: str | None) -> dict[str, Any] | None:
        """The reference's row in the same benchmark stage (same images). For timing: same batch and
        target; for accuracy the same target is preferred, else any (the teacher often runs only locally)."""
        candidates = [c for c in self.rows if c.get("bench") == row.get("bench")
                      and c.get("stage") == reference and c.get("status") == "ok"]
        same = [c for c in candidates if row_target(c) == row_target(row)
                and (not timing or c.get("batch") == row.get("batch"))]
        return same[0] if same else None if timing else next(iter(candidates), None)

    def run(self) -> list[GateResult]:
        for index, gate in enumerate(self.gates.checks):
            self.check_index = index
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
            return
        mb = size / MB  # an exact count of bytes: its interval is the value itself
        self.judge(gate, artifact, "files", f"<= {gate.max_mb:g} MB",
                   _Measure(mb, Interval(mb, mb, mb, 1, "exact"), " MB", "{:.3f}"), gate.max_mb, True)

    def latency(self, row: dict[str, Any], statistic: str) -> _Measure:
        return _Measure(float(row[f"{statistic}_ms"]), latency_interval(row, statistic), " ms", "{:.3f}")

    def noisy(self, *rows: dict[str, Any]) -> str:
        flagged = list(dict.fromkeys(f"{r.get('stage')} cv {r.get('cv')}" for r in rows if r.get("noisy")))
        return f"noisy timing ({', '.join(flagged)})" if flagged else ""

    def check(self, gate: GateBase, artifact: str, row: dict[str, Any]) -> None:
        metric = getattr(gate, "metric", None)
        if metric is not None and row.get(metric) is None:
            have = measured(row)
            self.add(gate, artifact, _where(row, False), f"{metric}", "not measured", False,
                     f"the row has no {metric}; it has {', '.join(have) or 'no accuracy'} (set the gate's metric)")
            return
        if isinstance(gate, MinAccuracy):
            iv = accuracy_of(row, gate.metric, self.level)
            value = float(row[gate.metric])
            need = images_for_floor(gate.min, self.level)
            note = ""
            if iv is not None and need is not None and iv.n < need:
                note = (f"{iv.n} images cannot pass strict at {gate.min:g}% even with all right: "
                        f"needs >= {need}")
            self.judge(gate, artifact, _where(row, False), f"{gate.metric} >= {gate.min:g}%",
                       _Measure(value, iv, "%", "{:.2f}"), gate.min, False, note, need)
        elif isinstance(gate, MaxLatency):
            self.judge(gate, artifact, _where(row), f"{gate.statistic} <= {gate.max_ms:g} ms",
                       self.latency(row, gate.statistic), gate.max_ms, True, self.noisy(row))
        elif isinstance(gate, MaxTop1Drop):
            self.top1_drop(gate, artifact, row)
        elif isinstance(gate, MinSpeedup):
            self.speedup(gate, artifact, row)
        elif isinstance(gate, MaxRegression):
            self.regression(gate, artifact, row)

    def speedup(self, gate: MinSpeedup, artifact: str, row: dict[str, Any]) -> None:
        ref = gate.reference(self.gates.teacher)
        teacher = self.teacher_row(row, timing=True, reference=ref)
        threshold = f"x{gate.min:g} vs {ref} ({gate.statistic})"
        if teacher is None:
            self.add(gate, artifact, _where(row), threshold, "no reference row", False,
                     f"reference {ref} has no batch {row.get('batch')} row in {row.get('bench')}")
            return
        mine, theirs = self.latency(row, gate.statistic), self.latency(teacher, gate.statistic)
        speedup = theirs.value / mine.value if mine.value > 0 else float("inf")
        iv = _ratio_interval(theirs.interval, mine.interval, speedup)
        note = "; ".join(x for x in (f"{theirs.value:.3f} ms -> {mine.value:.3f} ms", self.noisy(row, teacher)) if x)
        self.judge(gate, artifact, _where(row), threshold, _Measure(speedup, iv, "x"), gate.min, False, note)

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
        note = f"{theirs:.2f}% -> {mine:.2f}%{elsewhere}"
        if gate.max_drop is not None:
            iv = drop_interval(teacher, row, gate.metric, self.level)
            limit = gate.max_drop
            measure = _Measure(theirs - mine, iv, " pt")
            self.judge(gate, artifact, _where(row, False), threshold, measure, limit, True,
                       self.small_sample(note, iv, limit, teacher, row, gate.metric), self.needed(iv, limit))
        else:
            assert gate.min_retained_pct is not None
            kept = 100.0 * mine / theirs if theirs > 0 else 100.0
            iv = retained_interval(teacher, row, gate.metric, self.level)
            # the same floor as a drop in points, to say how many images could ever decide it
            limit_pt = theirs * (1 - gate.min_retained_pct / 100)
            drop_iv = drop_interval(teacher, row, gate.metric, self.level)
            self.judge(gate, artifact, _where(row, False), threshold, _Measure(kept, iv, "%", "{:.2f}"),
                       gate.min_retained_pct, False,
                       self.small_sample(note, drop_iv, limit_pt, teacher, row, gate.metric),
                       self.needed(drop_iv, limit_pt))

    def needed(self, iv: Interval | None, limit_pt: float) -> int | None:
        return images_to_pass_strict(limit_pt, self.level) if iv is not None else None

    def small_sample(self, note: str, iv: Interval | None, limit_pt: float, teacher: dict[str, Any],
                     row: dict[str, Any], metric: str) -> str:
        """The note of a drop gate, plus what its sample size can decide at this threshold."""
        if iv is None:
            return note
        parts = [note, f"{iv.low:+.2f} .. {iv.high:+.2f} pt"]
        floor = images_to_pass_strict(limit_pt, self.level)
        if floor is not None and iv.n < floor:
            parts.append(f"{iv.n} images cannot pass strict at {limit_pt:.2g} pt even with no image changed: "
                         f"needs >= {floor}")
        elif iv.low <= limit_pt < iv.high:
            pair = paired_outcomes(teacher, row, metric)
            if pair is not None and metric in ("top1", "top5"):
                ref, mine = pair
                more = images_needed(float((ref > mine).mean()), float((mine > ref).mean()), limit_pt,
                                     level=self.level)
                if more is not None:
                    parts.append(f"about {more} images would decide it at the observed changes")
        return "; ".join(parts)

    def regression(self, gate: MaxRegression, artifact: str, row: dict[str, Any]) -> None:
        assert self.baseline is not None
        base = self.baseline.get(_row_key(row))
        if base is None or base.get("status") != "ok":
            self.add(gate, artifact, _where(row), "-", "-", None, "not in the baseline release")
            return
        if gate.max_top1_drop is not None:
            iv = drop_interval(base, row, "top1", self.level)
            drop = float(base["top1"]) - float(row["top1"])
            self.judge(gate, artifact, _where(row), f"top-1 drop <= {gate.max_top1_drop:g} pt vs baseline",
                       _Measure(drop, iv, " pt"), gate.max_top1_drop, True,
                       f"{base['top1']:.2f}% -> {row['top1']:.2f}%" + (f" ({iv.method})" if iv else ""))
        if gate.max_latency_increase_pct is not None:
            now, then = self.latency(row, gate.statistic), self.latency(base, gate.statistic)
            change = 100.0 * (now.value / then.value - 1.0) if then.value > 0 else 0.0
            iv = _ratio_interval(now.interval, then.interval, change, 100.0, -100.0)
            note = "; ".join(x for x in (f"{then.value:.3f} ms -> {now.value:.3f} ms", self.noisy(row, base)) if x)
            self.judge(gate, artifact, _where(row),
                       f"{gate.statistic} +<= {gate.max_latency_increase_pct:g}% vs baseline",
                       _Measure(change, iv, "%", "{:+.1f}"), gate.max_latency_increase_pct, True, note)
        if gate.max_size_increase_pct is not None:
            old, new = int(base["size_bytes"]), int(row["size_bytes"])
            change = 100.0 * (new / old - 1.0) if old > 0 else 0.0
            self.judge(gate, artifact, _where(row), f"size +<= {gate.max_size_increase_pct:g}% vs baseline",
                       _Measure(change, Interval(change, change, change, 1, "exact"), "%", "{:+.1f}"),
                       gate.max_size_increase_pct, True, f"{old} -> {new} bytes")


def evaluate_gates(gates: GateSet, rows: list[dict[str, Any]], sizes: dict[str, int],
                   baseline_rows: list[dict[str, Any]] | None = None) -> list[GateResult]:
    """Check every gate against benchmark ``rows`` (each with ``bench``: the benchmark stage's name).

    Args:
        sizes: stage name -> total bytes of its artifact's files (for ``max_size``).
        baseline_rows: the rows recorded in the baseline release, or None when there is none.
    """
    return _Evaluator(gates, rows, sizes, baseline_rows).run()


def gate_table(results: list[GateResult]) -> str:
    """The gate table as Markdown: gate, artifact, where, threshold, measured (± half-width of the 95%
    interval), n, decide mode, result."""
    lines = ["| gate | artifact | measured on | threshold | measured (± 95%) | n | decide | result | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mark = {"pass": "PASS", "fail": "**FAIL**", "skipped": "skipped"}[r.status]
        n = str(r.n) if r.n is not None and r.method != "exact" else "-"
        lines.append(f"| {r.gate} | {r.artifact} | {r.measured_on} | {r.threshold} | {r.measured} | {n} | "
                     f"{r.decide} | {mark} | {r.note} |")
    return "\n".join(lines) + "\n"


def summary(results: list[GateResult]) -> str:
    failed = sum(r.status == "fail" for r in results)
    passed = sum(r.status == "pass" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    text = f"gates: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")
    return text


def combine_seeds(gates: GateSet, per_seed: dict[int, list[GateResult]]) -> list[GateResult]:
    """One result per check and row over several seeds' runs, by each check's ``over_seeds``:
    ``worst`` fails when any seed fails (the worst seed's line is shown); ``mean`` decides the mean
    of the seeds' estimates by the gate's decide mode, with an interval whose half-width joins the
    seeds' mean half-width (the images' noise, which averaging over seeds on the same images does not
    shrink) and Student's t interval of the mean over seeds (the training noise), in quadrature."""
    grouped: dict[tuple[Any, ...], list[tuple[int, GateResult]]] = {}
    for seed, results in per_seed.items():
        for r in results:
            grouped.setdefault((r.check, r.artifact, r.measured_on, r.threshold), []).append((seed, r))
    combined = []
    for (check, *_), items in grouped.items():
        gate = gates.checks[check] if 0 <= check < len(gates.checks) else None
        how = (gate.over_seeds if gate is not None else None) or gates.over_seeds
        per = [{"seed": s, "status": r.status, "value": r.value, "low": r.low, "high": r.high, "measured": r.measured}
               for s, r in items]
        missing = sorted(set(per_seed) - {s for s, _ in items})
        values = [r.value for _, r in items]
        first = items[0][1]
        if how == "mean" and not missing and all(v is not None for v in values) and first.limit is not None:
            mean = sum(v for v in values if v is not None) / len(values)
            sd = (sum((v - mean) ** 2 for v in values if v is not None) / max(1, len(values) - 1)) ** 0.5
            bounds = [(r.low, r.high) for _, r in items]
            low = high = None
            if all(lo is not None and hi is not None for lo, hi in bounds):
                images = sum((hi - lo) / 2 for lo, hi in bounds if lo is not None and hi is not None) / len(bounds)
                seeds = t_value(len(values) - 1, gates.confidence) * sd / len(values) ** 0.5 if len(values) > 1 else 0.0
                half_width = (images**2 + seeds**2) ** 0.5
                low, high = mean - half_width, mean + half_width
            ok = decide_by(mean, low, high, first.limit, bool(first.upper), first.decide)  # type: ignore[arg-type]
            half = f" ± {(high - low) / 2:.2f}" if low is not None and high is not None else ""
            combined.append(replace(first, measured=f"{mean:.2f}{half} (mean of {len(values)} seeds, sd {sd:.2f})",
                                    status="pass" if ok else "fail", value=mean, low=low, high=high, seeds=per,
                                    note=f"over_seeds: mean; {first.note}".rstrip("; ")))
            continue
        bad = [r for _, r in items if r.status == "fail"]
        if bad or missing:
            worst = bad[0] if bad else first
            why = f"not measured under seed(s) {', '.join(map(str, missing))}" if missing else ""
            seed_of = next(s for s, r in items if r is worst)
            note = "; ".join(x for x in (f"over_seeds: worst (seed {seed_of} of {len(per_seed)})", why, worst.note) if x)
            combined.append(replace(worst, status="fail", seeds=per, note=note))
        else:
            worst = max((r for _, r in items), key=lambda r: _badness(r))
            seed_of = next(s for s, r in items if r is worst)
            note = "; ".join(x for x in (f"over_seeds: worst (seed {seed_of} of {len(per_seed)})", worst.note) if x)
            combined.append(replace(worst, seeds=per, note=note))
    return combined


def _badness(result: GateResult) -> float:
    """How close a passing result came to its threshold (higher: worse)."""
    if result.value is None or result.limit is None:
        return 0.0
    return result.value - result.limit if result.upper else result.limit - result.value
