"""``compressor search``: the search section's validation, and real searches on a tiny CNN (Optuna, SQLite).

The searches share one stage cache per module, so a stage that an earlier test made is reused by the next.
"""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from compressor.cli import main
from compressor.errors import RecipeError
from compressor.recipe import json_schema, validate_document
from tests.conftest import PYTHON, Child, needs_fmnist, run_checked, write_recipe

optuna = pytest.importorskip("optuna")

TINY = "tests.tinynet:tiny_cnn"
SEARCH_RECIPE: dict[str, Any] = {
    "name": "tiny-search",
    "seed": 0,
    "threads": 1,
    "data": {"source": "fashion-mnist", "train_per_class": 20, "val_per_class": 10, "batch_size": 32,
             "augment": False, "preprocess": {"channels": 1, "mean": [0.286], "std": [0.353]}},
    "model": {"entry_point": TINY},
    "stages": [
        {"name": "teacher", "type": "train", "epochs": 1, "lr": 0.05},
        # the recipe as written distils into a factory that fails: trial 0 fails, the study goes on
        {"name": "student", "type": "distill", "student": {"entry_point": "tests.tinynet:broken_factory"},
         "epochs": 1, "lr": 0.05},
        {"name": "onnx", "type": "export_onnx", "exporter": "torchscript"},
        {"name": "bench", "type": "benchmark", "inputs": ["teacher", "onnx"], "min_iters": 5,
         "time_budget_s": 0.05, "warmup": 1},
    ],
    "search": {
        "artifact": "onnx",
        "space": {
            "stages.student.student": {"choice": [{"entry_point": "tests.tinynet:broken_factory"},
                                                  {"entry_point": TINY, "kwargs": {"width": 4}},
                                                  {"entry_point": TINY, "kwargs": {"width": 8}}]},
            "stages.student.epochs": {"int": [1, 2]},
        },
        "constraints": [{"type": "max_latency", "max_ms": 100}, {"type": "max_size", "max_mb": 1}],
        "budget": {"trials": 3},
        "population": 2,
        "heartbeat_s": 1,
    },
}


def _doc(**search: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SEARCH_RECIPE)
    doc["search"].update(search)
    return doc


def _problems(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        validate_document(doc)
    return {p.path: p.message for p in info.value.problems}


# -- validation ----------------------------------------------------------------------------------

def test_a_valid_search_section_and_its_schema() -> None:
    recipe = validate_document(_doc())
    assert recipe.search is not None and list(recipe.search.space) == ["stages.student.student", "stages.student.epochs"]
    assert recipe.search.constraints[0].artifacts == ["onnx"]  # defaults to search.artifact
    props = json_schema()["properties"]["search"]
    search = json_schema()["$defs"][props["anyOf"][0]["$ref"].split("/")[-1]]
    assert {"space", "objectives", "constraints", "budget", "choose", "sampler"} <= set(search["properties"])


@pytest.mark.parametrize(("space", "path", "message"), [
    ({"stages.teacher.epochz": {"int": [1, 2]}}, "search.space.stages.teacher.epochz",
     'stage teacher: "epochz" is not an option (did you mean "epochs"?)'),
    ({"stages.techer.epochs": {"int": [1, 2]}}, "search.space.stages.techer.epochs",
     '"techer" names no stage (did you mean "teacher"?)'),
    ({"stages.teacher.epochs": {"float": [1.0, 3.0]}}, "search.space.stages.teacher.epochs",
     "stage teacher: is an integer option; use int: [low, high]"),
    ({"stages.onnx.exporter": {"int": [1, 2]}}, "search.space.stages.onnx.exporter",
     "stage onnx: is not a number option; use choice: among dynamo, torchscript"),
    ({"stages.onnx.exporter": {"choice": ["dynamo", "tflite"]}}, "search.space.stages.onnx.exporter",
     "stage onnx: 'tflite' is refused by the option: must be 'dynamo' or 'torchscript'"),
    ({"stages.teacher.lr": {"float": [0.0, 0.1]}}, "search.space.stages.teacher.lr",
     "stage teacher: 0.0 is refused by the option: must be greater than 0"),
    ({"stages.student.student.kwargs.width": {"int": [2, 8]}, "stages.teacher.epochs.x": {"int": [1, 2]}},
     "search.space.stages.teacher.epochs.x", 'stage teacher: "epochs" has no sub-options'),
    ({"data.batch_size": {"int": [8, 64]}}, "search.space.data.batch_size",
     "only stage options can be searched: write stages.<stage name>.<option>"),
    ({"stages.teacher.epochs": {"int": [1, 2], "choice": [1]}}, "search.space.stages.teacher.epochs",
     "needs exactly one of float: [low, high], int: [low, high] or choice: [...] (has int and choice)"),
    ({"stages.teacher.epochs": {"int": [3, 1]}}, "search.space.stages.teacher.epochs", "low 3 is above high 1"),
    ({"stages.teacher.epochs": {"int": ["a", 2]}}, "search.space.stages.teacher.epochs.int[0]",
     "must be a valid integer, unable to parse string as an integer (got 'a')"),
    ({"stages.teacher.lr": {"float": [0.01, 0.1], "when": {"stages.teacher.epochs": 2}},
      "stages.teacher.epochs": {"int": [1, 2]}}, "search.space.stages.teacher.lr.when.stages.teacher.epochs",
     "comes later in search.space; a condition can only use options listed before it"),
])
def test_invalid_spaces_are_refused_with_their_field_path(space: dict[str, Any], path: str, message: str) -> None:
    problems = _problems(_doc(space=space))
    assert problems.get(path) == message, problems


def test_search_references_are_checked_like_gates() -> None:
    problems = _problems(_doc(artifact="onxx", constraints=[{"type": "max_regression", "artifacts": ["onnx"]}],
                              choose="smallest"))
    assert problems["search.artifact"].startswith('"onxx" names no stage (did you mean "onnx"?)')
    assert problems["search.constraints[0].type"].startswith("max_regression compares with a baseline release")
    assert problems["search.choose"] == "smallest needs the size objective (search.objectives.size)"
    problems = _problems(_doc(constraints=[{"type": "max_top1_drop", "max_drop": 1}]))
    assert problems["search.teacher"].startswith("is required by search.constraints[0] (max_top1_drop)")


def test_compressor_validate_refuses_a_bad_space_with_exit_2(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = write_recipe(tmp_path / "r.yaml", _doc(space={"stages.student.epochs": {"float": [1, 2]}}))
    proc = run_checked([PYTHON, "-m", "compressor.cli", "validate", str(path)], expected_s=15, env=cli_env)
    assert proc.returncode == 2
    assert "search.space.stages.student.epochs: stage student: is an integer option; use int: [low, high]" in proc.stderr


def test_conditional_options_are_sampled_only_when_their_condition_holds() -> None:
    from compressor.search import space

    doc = _doc(space={
        "stages.onnx.exporter": {"choice": ["torchscript", "dynamo"]},
        "stages.onnx.opset": {"int": [17, 18], "when": {"stages.onnx.exporter": "dynamo"}},
        "stages.student.student": {"choice": [{"entry_point": TINY, "kwargs": {"width": 4}}]},
    })
    recipe = validate_document(doc)
    assert recipe.search is not None
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        chosen = space.sample(study.ask(), recipe.search.space)
        assert ("stages.onnx.opset" in chosen) == (chosen["stages.onnx.exporter"] == "dynamo")
        assert chosen["stages.student.student"] == {"entry_point": TINY, "kwargs": {"width": 4}}  # decoded
        seen.add(chosen["stages.onnx.exporter"])
        applied = space.apply(doc, chosen)
        assert applied["stages"][2]["exporter"] == chosen["stages.onnx.exporter"]
        assert applied["stages"][1]["student"]["kwargs"] == {"width": 4} and doc["stages"][1]["student"] != applied[
            "stages"][1]["student"]  # the recipe document itself is untouched
    assert seen == {"torchscript", "dynamo"}
    # the recipe as written: torchscript (so no opset); its student lies outside the space
    params, outside = space.recipe_plan(doc, recipe, recipe.search.space)
    assert params == {"stages.onnx.exporter": "torchscript"}
    assert outside == ["stages.student.student = {'entry_point': 'tests.tinynet:broken_factory'}"]


# -- searches ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("search-cache")


def _recipe(tmp_path: Path, cache: Path, working_student: bool = False, **search: Any) -> Path:
    doc = _doc(**search)
    doc["output"] = str(tmp_path / "run")
    doc["cache_dir"] = str(cache)
    if working_student:
        doc["stages"][1]["student"] = {"entry_point": TINY, "kwargs": {"width": 4}}
    return write_recipe(tmp_path / "search.yaml", doc)


def _study(out: Path, name: str = "tiny-search") -> Any:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


@needs_fmnist
def test_a_search_of_a_few_trials(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(_recipe(tmp_path, cache))]) == 0
    out = tmp_path / "run" / "search"
    doc = json.loads((out / "search.json").read_text())
    rows = {r["trial"]: r for r in doc["trials"]}
    assert sorted(rows) == [0, 1, 2]
    # the recipe as written is trial 0; its student fails, is recorded with its error, the study goes on
    assert rows[0]["baseline"] and rows[0]["status"] == "failed" and "factory failed on purpose" in rows[0]["note"]
    done = [r for r in rows.values() if r["status"] == "complete"]
    assert len(done) == 2
    for r in done:
        assert r["options"]["stages.student.student"]["entry_point"] == TINY
        assert set(r["metrics"]) == {"accuracy", "latency"} and r["feasible"] is True
        assert set(r["keys"]) == {"model", "teacher", "student", "onnx", "bench"}
        assert "teacher" in r["reused"]  # trained by trial 0, shared by every later trial
        assert [c["gate"] for c in r["constraints"]] == ["max_latency", "max_size"]
        # what the report compares trials by: the per-image outcomes and the latency statistic's interval
        ev = r["evidence"]
        assert ev["accuracy"]["metric"] == "top1" and ev["accuracy"]["outcomes"]["n"] == 100
        assert len(ev["latency"]["p90_ci_ms"]) == 2
    chosen = rows[doc["chosen"]]
    assert doc["front"] and set(doc["front"]) <= {r["trial"] for r in done}
    # the most accurate of the front: no trial beats it beyond the noise
    assert chosen["trial"] in doc["front"]
    assert chosen["metrics"]["accuracy"] == max(rows[t]["metrics"]["accuracy"] for t in doc["front"])
    report = (out / "search.md").read_text()
    assert "## Pareto front" in report and "factory failed on purpose" in report and (out / "pareto.png").is_file()
    (out / "search.md").unlink()
    assert main(["search", str(_recipe(tmp_path, cache)), "--report-only"]) == 0  # from the study, no trial run
    assert (out / "search.md").read_text() == report
    # best.yaml is a plain recipe: run as it is, every stage comes from the search's cache
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "search" not in best and best["stages"][1]["student"] == chosen["options"]["stages.student.student"]
    assert [g["type"] for g in best["gates"]["checks"]] == ["max_latency", "max_size"]
    capsys.readouterr()
    assert main(["run", str(out / "best.yaml"), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "runs" / "tiny-search-best" / "manifest.json").read_text())
    assert all(s["reused"] for s in manifest["stages"])
    assert "gates: 2 passed, 0 failed" in capsys.readouterr().out
    assert main(["release", str(out / "best.yaml"), "--version", "1.0.0", "--quiet"]) == 0  # releasable as it is


@needs_fmnist
def test_a_constraint_no_trial_meets_names_it_and_the_closest_trial(
        tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    widths = [{"entry_point": TINY, "kwargs": {"width": w}} for w in (4, 8)]
    recipe = _recipe(tmp_path, cache, baseline=False, budget={"trials": 2},
                     space={"stages.student.student": {"choice": widths}},
                     constraints=[{"type": "max_latency", "max_ms": 1e-6}, {"type": "max_size", "max_mb": 1}])
    assert main(["search", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert ("no trial meets every constraint (max_latency (p90 <= 1e-06 ms) missed by 2 of 2 finished trial(s))"
            in err)
    assert "the closest is trial" in err and "best.yaml was not written" in err
    out = tmp_path / "run" / "search"
    assert not (out / "best.yaml").exists()
    report = (out / "search.md").read_text()
    assert "**No trial meets every constraint.** The closest is trial" in report
    assert "| max_latency | onnx |" in report and "**FAIL**" not in report and "| FAIL |" in report


@needs_fmnist
def test_two_worker_processes_share_one_sqlite_study(tmp_path: Path, cache: Path, cli_env: dict[str, str]) -> None:
    # a continuous learning rate: every trial trains, so both workers get some
    recipe = _recipe(tmp_path, cache, working_student=True, baseline=False, budget={"trials": 4},
                     space={"stages.teacher.lr": {"float": [0.01, 0.2], "log": True}})
    proc = run_checked([PYTHON, "-m", "compressor.cli", "search", str(recipe), "--workers", "2"], expected_s=420,
                       env=cli_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _study(tmp_path / "run" / "search").get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in trials)
    # the first trial runs alone in the process started (it builds the shared stages), then two workers
    assert "first trial alone" in proc.stderr and "[worker 0]" in proc.stderr and "[worker 1]" in proc.stderr
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers[1:]) - {workers[0]}) == 2, workers
    assert len({t.params["stages.teacher.lr"] for t in trials}) == 4


@needs_fmnist
def test_kill_9_then_resume_loses_and_repeats_no_trial(tmp_path: Path, cache: Path, cli_env: dict[str, str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(tmp_path, cache, working_student=True, baseline=False, budget={"trials": 3},
                     space={"stages.teacher.lr": {"float": [0.01, 0.2], "log": True}})
    # pauses once trial 1 has its options and is running
    child = Child([PYTHON, "-m", "tests.faultpoint", "--on-log", "trial 1: teacher.lr=", "--", "search", str(recipe)],
                  expected_s=300, env=cli_env, cwd=tmp_path)
    child.wait_for("FAULTPOINT")
    os.kill(child.proc.pid, signal.SIGKILL)
    assert child.wait(grace_s=30) == -signal.SIGKILL
    out = tmp_path / "run" / "search"
    killed = _study(out).trials[1]
    assert killed.state.name == "RUNNING"  # as the dead worker left it

    assert main(["search", str(recipe)]) == 0  # resumes: the dead worker's trial is failed and queued again
    trials = _study(out).get_trials()
    assert len(trials) == 4 and trials[1].state.name == "FAIL"
    assert [t.state.name for i, t in enumerate(trials) if i != 1] == ["COMPLETE"] * 3
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].params == killed.params  # run once more, with its own options
    assert len({t.params["stages.teacher.lr"] for t in trials if t.state.name == "COMPLETE"}) == 3
    rows = {r["trial"]: r for r in json.loads((out / "search.json").read_text())["trials"]}
    assert rows[1]["status"] == "worker died" and rows[1]["note"] == f"queued again as trial {retry[0].number}"
    assert "trial 0: teacher.lr=" not in capsys.readouterr().err  # the finished trial was not run again


@needs_fmnist
def test_a_hopeless_trial_is_stopped_after_its_training_stage(tmp_path: Path, cache: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # a floor no tiny CNN reaches: every trial stops right after its teacher, before distill and export
    recipe = _recipe(tmp_path, cache, baseline=False, budget={"trials": 2},
                     space={"stages.teacher.lr": {"choice": [0.05]}},
                     constraints=[{"type": "min_accuracy", "min": 99}], pruning={"rule": "constraints", "margin": 0})
    assert main(["search", str(recipe)]) == 1
    assert "no trial finished (2 started" in capsys.readouterr().err
    out = tmp_path / "run" / "search"
    rows = json.loads((out / "search.json").read_text())["trials"]
    assert [r["status"] for r in rows] == ["stopped early", "stopped early"]
    assert "after stage teacher is already below 99.00, the floor of constraint min_accuracy" in rows[0]["note"]
    assert set(rows[0]["progress"]) == {"teacher"} and set(rows[0]["keys"]) == {"model", "teacher"}
    assert rows[1]["reused"] == ["teacher"]  # the same options: trial 1 reused trial 0's teacher
    manifest = json.loads((Path(rows[0]["run_dir"]) / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and [s["name"] for s in manifest["stages"]] == ["model", "teacher"]


def _trial(number: int, correct: list[bool], p90: float, ci: tuple[float, float], baseline: bool = False,
           ) -> dict[str, Any]:
    import numpy as np

    from compressor.metrics.stats import pack_bits

    hits = np.array(correct)
    outcomes = {"unit": "image", "n": len(hits), "labels": "l", "images": "i", "top1": pack_bits(hits)}
    return {"trial": number, "state": "COMPLETE", "feasible": True, "baseline": baseline, "options": {},
            "metrics": {"accuracy": 100 * hits.mean(), "latency": p90}, "constraints": [], "reused": [],
            "status": "complete", "note": "",
            "evidence": {"accuracy": {"metric": "top1", "top1": 100 * hits.mean(), "outcomes": outcomes,
                                      "accuracy_images": len(hits)},
                         "latency": {"statistic": "p90", "p90_ms": p90, "p90_ci_ms": list(ci), "iterations": 500}}}


def test_trials_are_compared_beyond_their_noise() -> None:
    from compressor.search import report, results
    from compressor.search_config import SearchConfig

    cfg = SearchConfig.model_validate({
        "artifact": "onnx", "space": {"stages.student.epochs": {"choice": [1, 2]}}, "budget": {"trials": 2},
        "objectives": {"accuracy": {"metric": "top1"}, "latency": {"statistic": "p90"}}})
    right = [True] * 800 + [False] * 200
    base = _trial(0, right, 2.0, (1.9, 2.1), baseline=True)
    # 3 images more right and 0.05 ms faster: ahead on both values, within the noise of both
    close = _trial(1, [True] * 803 + [False] * 197, 1.95, (1.85, 2.05))
    # as accurate on the same images and clearly faster: beats the recipe beyond the noise
    fast = _trial(2, right, 1.2, (1.15, 1.25))
    # much less accurate (paired: 100 images lost), fastest
    poor = _trial(3, [True] * 700 + [False] * 300, 1.0, (0.95, 1.05))
    assert results.compare(close, base, cfg) == {"accuracy": "level", "latency": "level"}
    assert results.compare(fast, base, cfg) == {"accuracy": "level", "latency": "better"}
    assert results.compare(poor, base, cfg) == {"accuracy": "worse", "latency": "better"}
    assert not results.beats(close, base, cfg) and results.beats(fast, base, cfg)
    assert results.beats(fast, close, cfg)  # 3 images are within the noise; 0.7 ms is not
    beaten = results.dominating([base, close], cfg, base)
    assert [(r["trial"], r["beyond_noise"]) for r in beaten] == [(1, False)]
    text = report._versus_base(base, beaten, {"accuracy": "top-1 %", "latency": "p90 ms"})
    assert "is dominated by trial(s) 1 on the measured values; by none beyond the noise" in text
    # the front keeps a trial that is only a point estimate behind another
    assert {r["trial"] for r in results.pareto_front([base, close], cfg)} == {0, 1}
    assert {r["trial"] for r in results.pareto_front([base, close, fast, poor], cfg)} == {2, 3}
    beaten = results.dominating([base, close, fast, poor], cfg, base)
    assert [(r["trial"], r["beyond_noise"]) for r in beaten] == [(1, False), (2, True)]
    # the most accurate plan on the values (close, 80.3%) is beaten beyond the noise by fast: not chosen
    chosen = results.choose([base, close, fast, poor], cfg)
    assert chosen is not None and chosen["trial"] == 2
    assert "beyond the noise (95% intervals" in report._versus_base(base, beaten, {"accuracy": "a", "latency": "l"})
