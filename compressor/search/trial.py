"""One trial: the recipe with the sampled options applied, run by the engine into the shared stage cache,
then judged: objective values, constraints (the release gates' own evaluation) and early stopping."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.engine import Engine, RunStopped, StageRecord
from compressor.recipe import SOURCE_STAGE, Recipe, validate_document
from compressor.registry import STAGES, StageEntry
from compressor.release.bundle import artifact_sizes, benchmark_rows
from compressor.release.gates import GateSet, MaxTop1Drop, MinAccuracy, evaluate_gates
from compressor.search import space
from compressor.search.measures import accuracy_metric, objective_evidence, objective_values, violation
from compressor.search.study import optuna_module, worker_id
from compressor.search_config import SearchConfig

# Metrics a training stage records for the accuracy it ends with, most specific first
# (distill: the student; prune: after its last fine-tune; train: the best epoch).
PROGRESS_KEYS = ("student_{m}", "top1_finetuned", "val_{m}")


def progress_value(record: StageRecord, metric: str) -> float | None:
    for key in PROGRESS_KEYS:
        value = record.metrics.get(key.format(m=metric))
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def ancestors(recipe: Recipe, name: str) -> set[str]:
    """The stages (and the model source) whose artifacts ``name``'s artifact is made from."""
    refs = {s.name: [r for v in s.refs.values() for r in (v if isinstance(v, list) else [v])] for s in recipe.stages}
    seen: set[str] = set()
    todo = list(refs.get(name, []))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += refs.get(current, [])
    return seen | {SOURCE_STAGE}


@dataclass
class TrialRunner:
    """Optuna's objective: run one trial, return its objective values."""

    doc: dict[str, Any]          # the recipe as written (after command-line overrides)
    recipe: Recipe
    cfg: SearchConfig
    out_dir: Path
    cache_dir: Path
    log: Callable[[str], None]
    registry: Mapping[str, StageEntry] = field(default_factory=lambda: STAGES)

    def __call__(self, trial: Any) -> tuple[float, ...]:
        trial.set_user_attr("worker", worker_id())
        start = time.perf_counter()
        try:
            chosen = space.sample(trial, self.cfg.space)
            trial.set_user_attr("options", chosen)
            self.log(f"trial {trial.number}: " + (", ".join(f"{k.removeprefix('stages.')}={v}"
                                                            for k, v in chosen.items()) or "the recipe as written"))
            return self._run(trial, chosen)
        except RunStopped as err:
            trial.set_user_attr("stopped", str(err))
            self.log(f"trial {trial.number}: stopped early: {err}")
            raise optuna_module().TrialPruned(str(err)) from err
        except Exception as err:
            trial.set_user_attr("error", str(err) or type(err).__name__)
            self.log(f"trial {trial.number}: failed: {err}")
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))

    def trial_doc(self, number: int, chosen: dict[str, Any]) -> dict[str, Any]:
        doc = space.apply(self.doc, chosen)
        doc.pop("search", None)
        doc["output"] = str(self.out_dir / "trials" / str(number))
        doc["cache_dir"] = str(self.cache_dir)
        return doc

    def _run(self, trial: Any, chosen: dict[str, Any]) -> tuple[float, ...]:
        recipe = validate_document(self.trial_doc(trial.number, chosen), f"trial {trial.number}", self.registry)
        trial.set_user_attr("run_dir", str(recipe.output_dir))
        result = Engine(recipe, log=lambda m: self.log(f"trial {trial.number}: {m}"), show_progress=False,
                        registry=self.registry, on_stage=_Stopper(self, trial)).run()
        stages = json.loads(result.manifest_path.read_text())["stages"]
        keys = {s["name"]: s["key"] for s in stages}
        trial.set_user_attr("keys", keys)
        trial.set_user_attr("reused", [s["name"] for s in stages if s["reused"] and s["name"] != SOURCE_STAGE])
        rows, sizes = benchmark_rows(stages), artifact_sizes(stages)
        values = objective_values(self.cfg, self.recipe, rows, sizes)
        trial.set_user_attr("metrics", values)
        trial.set_user_attr("evidence", objective_evidence(self.cfg, self.recipe, rows))
        self._judge(trial, rows, sizes, keys)
        return tuple(float(values[name]) for name in self.cfg.objectives.names())

    @property
    def teacher(self) -> str | None:
        return self.cfg.teacher or (self.recipe.gates.teacher if self.recipe.gates is not None else None)

    def _judge(self, trial: Any, rows: list[dict[str, Any]], sizes: dict[str, int], keys: dict[str, str]) -> None:
        """Each constraint through the gates' own evaluation; how far it misses, for ranking."""
        checks: list[dict[str, Any]] = []
        violations: list[float] = []
        base = self.recipe.gates  # its decide mode, confidence and over_seeds apply, as in release
        for i, gate in enumerate(self.cfg.constraints):
            gates = (base.model_copy(update={"teacher": self.teacher, "checks": [gate], "ship": None})
                     if base is not None else GateSet(teacher=self.teacher, checks=[gate]))
            results = evaluate_gates(gates, rows, sizes)
            amount, reference = violation(gate, self.teacher, rows, sizes)
            failed = any(r.status == "fail" for r in results)
            violations.append(max(amount, 1e-6) if failed else 0.0)  # the gate's verdict decides, as in release
            trial.set_constraint(f"{i}:{gate.label}", violations[-1])  # what the samplers rank by
            checks += [r.to_json() for r in results]
            ref = gate.reference(self.teacher)
            if reference is not None and ref is not None:
                trial.set_user_attr("reference_accuracy", {
                    "stage": ref, "metric": getattr(gate, "metric", "top1"), "value": reference,
                    "made_from": {n: keys[n] for n in ancestors(self.recipe, ref) if n in keys}})
        trial.set_user_attr("constraints", checks)
        trial.set_user_attr("violations", violations)
        trial.set_user_attr("feasible", not any(violations))


class _Stopper:
    """After each stage: record the accuracy a training stage ended with; stop the trial if it is hopeless."""

    def __init__(self, runner: TrialRunner, trial: Any):
        self.runner = runner
        self.trial = trial
        self.metric = accuracy_metric(runner.cfg, runner.recipe)
        self.progress: dict[str, float] = {}
        self.keys: dict[str, str] = {}
        self.reused: list[str] = []

    def __call__(self, record: StageRecord) -> None:
        self.keys[record.name] = record.key
        self.trial.set_user_attr("keys", self.keys)  # as far as it got: a stopped trial's row shows them too
        if record.reused and record.name != SOURCE_STAGE:
            self.reused.append(record.name)
            self.trial.set_user_attr("reused", self.reused)
        value = progress_value(record, self.metric)
        if value is None:
            return
        self.progress[record.name] = value
        self.trial.set_user_attr("progress", self.progress)
        pruning = self.runner.cfg.pruning
        if pruning.rule == "none":
            return
        floor, why = self._floor()
        if floor is not None and value < floor - pruning.margin:
            msg = (f"{self.metric} {value:.2f} after stage {record.name} is already below {floor:.2f}, the floor "
                   f"of {why} (margin {pruning.margin:g} pt)")
            raise RunStopped(msg)
        if pruning.rule == "median":
            earlier = [t.user_attrs["progress"][record.name] for t in self._finished()
                       if record.name in (t.user_attrs.get("progress") or {})]
            if len(earlier) >= pruning.warmup_trials and value < statistics.median(earlier) - pruning.margin:
                msg = (f"{self.metric} {value:.2f} after stage {record.name} is below the median "
                       f"{statistics.median(earlier):.2f} of {len(earlier)} finished trials (margin {pruning.margin:g} pt)")
                raise RunStopped(msg)

    def _finished(self) -> list[Any]:
        complete = optuna_module().trial.TrialState.COMPLETE
        return sorted(self.trial.study.get_trials(deepcopy=False, states=(complete,)), key=lambda t: t.number)

    def _floor(self) -> tuple[float | None, str]:
        """The highest accuracy floor the constraints put on the searched artifact, where it is known."""
        best: tuple[float | None, str] = (None, "")
        for gate in self.runner.cfg.constraints:
            if self.runner.cfg.artifact not in gate.artifacts or getattr(gate, "metric", None) != self.metric:
                continue
            floor: float | None = None
            if isinstance(gate, MinAccuracy):
                floor = gate.min
            elif isinstance(gate, MaxTop1Drop) and (ref := self._reference(gate.reference(self.runner.teacher))):
                floor = ref - gate.max_drop if gate.max_drop is not None else ref * (gate.min_retained_pct or 0) / 100
            if floor is not None and (best[0] is None or floor > best[0]):
                best = (floor, f"constraint {gate.label}")
        return best

    def _reference(self, stage: str | None) -> float | None:
        """The reference's accuracy from a finished trial whose reference was made from the same stages as
        this trial's (same cache keys), once all of those have run here."""
        for t in reversed(self._finished()):
            ref = t.user_attrs.get("reference_accuracy") or {}
            made_from = ref.get("made_from") or {}
            if ref.get("stage") == stage and ref.get("metric") == self.metric and made_from and all(
                    self.keys.get(n) == k for n, k in made_from.items()):
                return float(ref["value"])
        return None
