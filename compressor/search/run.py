"""``compressor search``: open (or resume) the study, run workers until the budget is spent, write the report.

Layout of a search folder (default ``runs/<name>/search``)::

    study.db        the Optuna study (SQLite; --storage URL puts it elsewhere, e.g. PostgreSQL)
    cache/          the stage cache every trial shares (--cache-dir or the recipe's cache_dir elsewhere)
    trials/<n>/     each trial's run folder: manifest.json, report.md
    search.json     every trial: options, metrics, constraints, cache keys, status; the front; the choice
    search.md       the same as tables, with pareto.png
    best.yaml       the chosen plan as a plain recipe
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.core.artifacts import stable_hash, write_json, write_text
from compressor.errors import CompressorError, NoFeasiblePlan
from compressor.recipe import Recipe
from compressor.registry import STAGES, StageEntry
from compressor.search import report, results, space
from compressor.search.measures import accuracy_metric
from compressor.search.study import (
    Worker,
    deadline,
    directions,
    make_sampler,
    open_storage,
    optuna_module,
    queued,
    redact,
    wait_for_running,
    worker_seed,
)
from compressor.search.trial import TrialRunner
from compressor.search_config import SearchConfig


@dataclass
class SearchOptions:
    out_dir: Path
    cache_dir: Path
    storage: str
    study_name: str
    workers: int = 1
    worker_argv: Sequence[str] = ()      # the command line a worker process runs (without --worker flags)
    log: Callable[[str], None] = print
    registry: Mapping[str, StageEntry] = field(default_factory=lambda: STAGES)  # the stage table trials run with


@dataclass
class SearchResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    best_path: Path | None
    report_path: Path
    summary: dict[str, Any] = field(default_factory=dict)


def default_paths(recipe: Recipe, out: Path | None, cache_dir: Path | None, storage: str | None,
                  ) -> tuple[Path, Path, str]:
    out_dir = out or recipe.output_dir / "search"
    cache = cache_dir or recipe.settings.cache_dir or out_dir / "cache"
    url = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    return out_dir, cache, url


def _fingerprint(doc: dict[str, Any]) -> str:
    """What a study is made from: the recipe and its space; the budget may change between resumes."""
    search = {k: v for k, v in (doc.get("search") or {}).items() if k != "budget"}
    return stable_hash({**{k: v for k, v in doc.items() if k not in ("search", "output")}, "search": search})[:16]


def open_study(doc: dict[str, Any], recipe: Recipe, cfg: SearchConfig, opts: SearchOptions, seed: int) -> Any:
    optuna = optuna_module()
    storage = open_storage(opts.storage, cfg)
    sampler = make_sampler(cfg, seed)
    try:
        study = optuna.create_study(storage=storage, study_name=opts.study_name, sampler=sampler,
                                    directions=directions(cfg), load_if_exists=True)
    except ValueError as err:  # same name, other directions
        msg = (f"study '{opts.study_name}' in {redact(opts.storage)} cannot be used for this search ({err}); "
               "pass another --study name")
        raise CompressorError(msg) from err
    mine = _fingerprint(doc)
    theirs = study.user_attrs.get("fingerprint")
    if theirs is None:
        study.set_user_attr("fingerprint", mine)
        study.set_user_attr("recipe", recipe.name)
    elif theirs != mine:
        msg = (f"study '{opts.study_name}' in {redact(opts.storage)} was made from another recipe or search space; "
               "pass another --study name or --out folder (or restore the recipe to resume that study)")
        raise CompressorError(msg)
    return study


def _enqueue_baseline(study: Any, doc: dict[str, Any], recipe: Recipe, cfg: SearchConfig,
                      log: Callable[[str], None]) -> None:
    if not cfg.baseline or study.user_attrs.get("baseline_queued"):
        return
    study.set_user_attr("baseline_queued", True)
    params, outside = space.recipe_plan(doc, recipe, cfg.space)
    if outside:
        log("the recipe's own plan lies outside the search space (" + "; ".join(outside) + "): not run as a trial")
        return
    study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=True)


def run_worker(doc: dict[str, Any], recipe: Recipe, cfg: SearchConfig, opts: SearchOptions,
               worker_index: int, until: float | None, most: int | None = None) -> int:
    """One worker: run trials until the study's budget is spent (or ``until``); return how many it ran."""
    probe = open_study(doc, recipe, cfg, opts, 0)
    before = len(probe.get_trials(deepcopy=False))
    shared = opts.workers > 1 or not opts.storage.startswith("sqlite:///")
    seed = worker_seed(cfg.seed if cfg.seed is not None else recipe.seed, worker_index, before, shared)
    study = open_study(doc, recipe, cfg, opts, seed)
    runner = TrialRunner(doc=doc, recipe=recipe, cfg=cfg, out_dir=opts.out_dir, cache_dir=opts.cache_dir,
                         log=opts.log, registry=opts.registry)
    return Worker(study, cfg, runner, opts.log).loop(until, most)


def _spawn_workers(opts: SearchOptions) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(opts.workers):
        cmd = [sys.executable, "-m", "compressor.cli", *opts.worker_argv, "--worker", "--worker-index", str(i)]
        procs.append(subprocess.Popen(cmd))  # noqa: S603 - our own interpreter and command line
    return procs


def search(doc: dict[str, Any], recipe: Recipe, opts: SearchOptions, report_only: bool = False) -> SearchResult:
    """Run (or resume) the search of ``recipe`` and write its report; ``report_only``: run no trial."""
    cfg = recipe.settings.search
    assert cfg is not None
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(doc, recipe, cfg, opts, 0)
    if not report_only:
        _enqueue_baseline(study, doc, recipe, cfg, opts.log)
        if recipe.settings.seeds:
            opts.log(f"seeds: {recipe.settings.seeds} is for compressor run: each trial runs once, under seed "
                     f"{recipe.seed}; check the chosen plan with: compressor run best.yaml --seeds {recipe.settings.seeds}")
        opts.log(f"search {recipe.name}: study '{opts.study_name}' in {redact(opts.storage)}, "
                 f"{len(study.get_trials(deepcopy=False))} trial(s) so far; stage cache {opts.cache_dir}")
        until = deadline(cfg, time.monotonic())
        index = 0
        if opts.workers > 1:
            if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
                # Workers started together would all build the stages every trial shares (the teacher).
                opts.log("first trial alone, so that the stages every trial shares are built once")
                run_worker(doc, recipe, cfg, opts, opts.workers, until, most=1)
            procs = _spawn_workers(opts)
            for i, proc in enumerate(procs):
                code = proc.wait()
                if code != 0:
                    opts.log(f"worker {i} ended with exit status {code}; a trial it was running is queued again")
            index = opts.workers
        while True:  # this process finishes what dead workers left: queued trials, stale ones
            run_worker(doc, recipe, cfg, opts, index, until)
            wait_for_running(study, min(5.0, cfg.heartbeat_s), opts.log)
            if not queued(study) or (until is not None and time.monotonic() >= until):
                break
    return write_outputs(doc, recipe, cfg, opts, study)


def write_outputs(doc: dict[str, Any], recipe: Recipe, cfg: SearchConfig, opts: SearchOptions,
                  study: Any) -> SearchResult:
    rows = results.trial_rows(study.get_trials(deepcopy=False), cfg)
    metric = accuracy_metric(cfg, recipe)
    labels = report.objective_labels(cfg, metric)
    front = results.pareto_front(rows, cfg)
    chosen = results.choose(rows, cfg, front)
    nearest = results.closest(rows, cfg) if chosen is None else None
    base = next((r for r in results.complete(rows, cfg) if r["baseline"]), None)
    beaten_by = results.dominating(rows, cfg, base) if base is not None else []
    best_path = None
    if chosen is not None:
        best = report.best_document(doc, recipe, cfg, chosen, opts.cache_dir)
        best_path = report.write_best(opts.out_dir / "best.yaml", best, chosen, labels)
    plot = report.pareto_plot(rows, front, chosen, labels, opts.out_dir / "pareto.png")
    summary = {
        "recipe": recipe.name, "study": opts.study_name, "storage": redact(opts.storage),
        "cache_dir": str(opts.cache_dir), "objectives": labels, "directions": directions(cfg),
        "choose": cfg.choose, "budget": cfg.budget.model_dump(mode="json"),
        "counts": {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)},
        "front": [r["trial"] for r in front], "chosen": chosen["trial"] if chosen else None,
        "best_yaml": str(best_path) if best_path else None,
        "baseline": base["trial"] if base else None, "baseline_dominated_by": [r["trial"] for r in beaten_by],
        "baseline_dominated_beyond_noise_by": [r["trial"] for r in beaten_by if r["beyond_noise"]],
        "closest": nearest["trial"] if nearest else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(opts.out_dir / "search.json", {**summary, "trials": rows})
    path = opts.out_dir / "search.md"
    write_text(path, report.markdown(summary, rows, front, chosen, nearest, base, beaten_by, labels, cfg, plot))
    result = SearchResult(opts.out_dir, rows, front, chosen, best_path, path, summary)
    if chosen is None:
        raise NoFeasiblePlan(report.no_plan_message(rows, cfg, nearest, opts.out_dir / "search.md"))
    return result
