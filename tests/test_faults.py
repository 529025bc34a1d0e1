"""Faults: a run killed (SIGKILL) inside each stage type, Ctrl-C, and two runs on one output folder.

One small recipe chains every stage type. A module fixture runs it through the CLI in subprocesses that
pause at a known point inside one stage (``tests/faultpoint.py``), kills each there, reruns, and records
what the rerun reused, resumed and left behind; an uninterrupted run of the same recipe is the reference.
Each test below then checks one fault.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from compressor.registry import STAGES
from tests.conftest import PYTHON, REPO, TINY_RECIPE, needs_fmnist, write_recipe

pytestmark = [needs_fmnist, pytest.mark.integration]

STUDENT = {"entry_point": "tests.tinynet:tiny_cnn", "kwargs": {"width": 4}}
CHAIN: list[dict[str, Any]] = [
    {"name": "teacher", "type": "train", "epochs": 3, "lr": 0.05},
    {"name": "evaluate", "type": "evaluate"},
    {"name": "pruned", "type": "prune", "macs_reduction": 0.3, "finetune": {"epochs": 2, "lr": 0.01}},
    {"name": "student", "type": "distill", "student": STUDENT, "epochs": 2},
    {"name": "onnx", "type": "export_onnx", "input": "student"},
    {"name": "openvino", "type": "export_openvino", "input": "student"},
    {"name": "tflite", "type": "export_tflite", "input": "student"},
    {"name": "int8", "type": "quantize", "input": "onnx", "format": "onnx", "calibration_images": 16,
     "min_agreement": 0},
    {"name": "bench", "type": "benchmark", "inputs": ["student", "onnx", "openvino", "tflite", "int8"],
     "min_iters": 3, "time_budget_s": 0.02, "warmup": 1},
]
NAMES = ["model"] + [s["name"] for s in CHAIN]
TYPE_OF = {s["type"]: s["name"] for s in CHAIN}

# Where each run stops: (flag, value, signal). The first is Ctrl-C; every later one is kill -9 inside the
# next stage. Training stages stop after an epoch checkpoint, the others once their files are written
# but not committed. The run after the last one completes.
PLAN: list[tuple[str, str, signal.Signals]] = [
    ("--on-log", "teacher: train epoch 1/3", signal.SIGINT),
    ("--on-log", "teacher: train epoch 2/3", signal.SIGKILL),
    ("--after-stage", "evaluate", signal.SIGKILL),
    ("--on-log", "pruned: finetune1 epoch 1/2", signal.SIGKILL),
    ("--on-log", "student: distill epoch 1/2", signal.SIGKILL),
    ("--after-stage", "onnx", signal.SIGKILL),
    ("--after-stage", "openvino", signal.SIGKILL),
    ("--after-stage", "tflite", signal.SIGKILL),
    ("--after-stage", "int8", signal.SIGKILL),
    ("--after-stage", "bench", signal.SIGKILL),
]
RESUMES = {"teacher": "teacher: resuming train from epoch 2", "pruned": "pruned: resuming finetune1 from epoch 1",
           "student": "student: resuming distill from epoch 1"}


@dataclass
class Stop:
    """One interrupted run and what the run after it did."""

    stage: str
    returncode: int
    stderr: str
    half_written: list[str]       # cache/*.tmp-* left right after the stop
    finished_before: dict[str, float]  # stage.json mtimes of finished stages at the stop
    rerun_stderr: str = ""
    mtimes_after_rerun: dict[str, float] = field(default_factory=dict)
    lock_refusal: tuple[int, str] | None = None
    status: str = ""  # the manifest's status right after the stop


@dataclass
class Chain:
    out: Path
    stops: dict[str, Stop]
    sigint: Stop
    final_stderr: str
    final_rc: int
    manifest: dict[str, Any]
    reference: dict[str, Any]


def _doc(out: Path) -> dict[str, Any]:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["name"] = "faults"
    doc["output"] = str(out)
    doc["data"].update(train_per_class=8, val_per_class=4)
    doc["stages"] = copy.deepcopy(CHAIN)
    return doc


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _finished(cache: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("*/stage.json")}


def _status(out: Path) -> str:
    path = out / "manifest.json"
    return json.loads(path.read_text())["status"] if path.exists() else "no manifest"


# Deadlines (seconds): a whole run of the chain on 2 busy cores takes about 3 minutes; a run stopped by
# a signal ends within a few seconds (Ctrl-C finishes the current training step first).
RUN_S = 240.0
AFTER_SIGNAL_S = 60.0


class ForkServer:
    """``tests.faultpoint --serve``: each run a forked child of one process that imported torch already.

    Every answer has a deadline: a server that stops answering, or a child that outlives its deadline
    (it is killed), fails the test with a message instead of hanging the suite.
    """

    def __init__(self, cwd: Path, ignore_sigint: bool = False):
        self.cwd = cwd
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore_sigint else None
        try:  # ignore_sigint: start it as ``nohup ... &`` would (SIGINT ignored, inherited by the children)
            self.proc = subprocess.Popen([PYTHON, "-m", "tests.faultpoint", "--serve"], cwd=cwd, env=_env(),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.count = 0

    def _ask(self, request: dict[str, Any], timeout: float) -> str:
        from tests.faultpoint import read_line

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = read_line(self.proc.stdout, timeout)
        if not line:
            self.proc.kill()
            pytest.fail(f"the fault server gave no answer to {request} within {timeout:.0f} s; killed it")
        return line

    def start(self, argv: list[str]) -> tuple[int, Path]:
        self.count += 1
        log = self.cwd / f"stderr-{self.count}.txt"
        return int(self._ask({"argv": argv, "stderr": str(log), "cwd": str(self.cwd)}, 120)), log

    def wait(self, pid: int, timeout: float, why: str = "") -> int:
        """The child's exit status; one still running after ``timeout`` s is killed and the test fails."""
        answer = json.loads(self._ask({"wait": pid, "timeout": timeout}, timeout + 30))
        if answer["timed_out"]:
            log = self.cwd / f"stderr-{self.count}.txt"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"run {pid} was still running {timeout:.0f} s {why or 'after it started'}; killed it. "
                        f"Its stderr ends:\n{tail}")
        return int(answer["code"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def _stop_at(server: ForkServer, cmd: list[str], flag: str, value: str, sig: signal.Signals,
             at_pause: Any = None) -> tuple[int, str, Any]:
    """Run until the pause point, call ``at_pause()``, send ``sig``; return exit status, stderr, its result."""
    pid, log = server.start([flag, value, "--", *cmd])
    paused = None
    deadline = time.monotonic() + RUN_S
    sent = False
    try:
        while time.monotonic() < deadline and not _ended(pid):
            if log.exists() and "\nFAULTPOINT\n" in "\n" + log.read_text():
                if at_pause is not None:
                    paused = at_pause()
                os.kill(pid, sig)
                sent = True
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        code = server.wait(pid, AFTER_SIGNAL_S, f"after {sig.name}" if sent else "after its deadline")
    stderr = log.read_text()
    if "FAULTPOINT" not in stderr:
        pytest.fail(f"never reached {flag} {value}: {stderr[-3000:]}")
    return code, stderr, paused


def _second_run_while_held(recipe: Path) -> tuple[int, str]:
    """A second run on the same folder, in this process, while the first one holds it."""
    from compressor.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", str(recipe), "--quiet"])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    from compressor.engine import run_recipe
    from compressor.recipe import validate_document

    root = tmp_path_factory.mktemp("faults")
    server = ForkServer(root)  # starts importing while the reference runs here
    ref = run_recipe(validate_document(_doc(root / "reference")), log=lambda _m: None, show_progress=False)
    reference = json.loads(ref.manifest_path.read_text())

    out = root / "run"
    recipe = write_recipe(root / "faults.yaml", _doc(out))
    cmd = ["run", str(recipe)]
    stops: list[Stop] = []
    try:
        final_rc, final_stderr = _run_plan(server, cmd, recipe, out, stops)
    finally:
        server.close()
    manifest = json.loads((out / "manifest.json").read_text())
    sigint, kills = stops[0], stops[1:]
    return Chain(out, {s.stage: s for s in kills}, sigint, final_stderr, final_rc, manifest, reference)


def _run_plan(server: ForkServer, cmd: list[str], recipe: Path, out: Path, stops: list[Stop]) -> tuple[int, str]:
    cache = out / "cache"
    for i, (flag, value, sig) in enumerate(PLAN):
        stage = value if flag == "--after-stage" else value.split(":")[0]
        # while the first run is paused, a second run on the same folder tries to start
        held = (lambda: _second_run_while_held(recipe)) if i == 0 else None
        code, stderr, refusal = _stop_at(server, cmd, flag, value, sig, held)
        stop = Stop(stage, code, stderr, sorted(p.name for p in cache.glob("*.tmp-*")), _finished(cache),
                    lock_refusal=refusal, status=_status(out))
        if stops:
            stops[-1].rerun_stderr = stderr
            stops[-1].mtimes_after_rerun = _finished(cache)
        stops.append(stop)
    pid, log = server.start(["--", *cmd])
    final_rc = server.wait(pid, RUN_S)
    stops[-1].rerun_stderr = log.read_text()
    stops[-1].mtimes_after_rerun = _finished(cache)
    return final_rc, stops[-1].rerun_stderr


def _lines(stderr: str, suffix: str) -> set[str]:
    """Stage names with a log line ``<name> (<type>): <suffix>``."""
    return {line.split(" (", 1)[0] for line in stderr.splitlines() if f"): {suffix}" in line}


def test_every_stage_type_is_in_the_chain() -> None:
    assert set(TYPE_OF) == set(STAGES), "add the new stage type to CHAIN and PLAN"


@pytest.mark.parametrize("stage_type", sorted(TYPE_OF))
def test_sigkill_inside_stage_then_rerun_reuses_earlier_and_restarts_it(chain: Chain, stage_type: str) -> None:
    name = TYPE_OF[stage_type]
    stop = chain.stops[name]
    assert stop.returncode == -signal.SIGKILL
    assert "Traceback" not in stop.stderr
    # killed mid-stage: its half-written folder exists, nothing under its final name
    assert len(stop.half_written) == 1, stop.half_written
    earlier = NAMES[: NAMES.index(name)]
    assert len(stop.finished_before) == len(earlier)
    # the rerun cleans the half-written folder, reuses every earlier stage and runs this one again
    assert "removed 1 half-written stage folder(s)" in stop.rerun_stderr
    assert _lines(stop.rerun_stderr, "reused from cache") >= set(earlier)
    assert name in _lines(stop.rerun_stderr, "running"), stop.rerun_stderr[-2000:]
    assert not set(earlier) & _lines(stop.rerun_stderr, "running")
    assert all(stop.mtimes_after_rerun[k] == t for k, t in stop.finished_before.items()), "earlier stage rewritten"
    if name in RESUMES:
        assert RESUMES[name] in stop.rerun_stderr
    record = next(s for s in chain.manifest["stages"] if s["name"] == name)
    ref = next(s for s in chain.reference["stages"] if s["name"] == name)
    assert record["key"] == ref["key"]
    assert set(record) == set(ref) and set(record["metrics"]) == set(ref["metrics"])
    assert [f["name"] for f in record["files"]] == [f["name"] for f in ref["files"]]


def test_final_manifest_matches_an_uninterrupted_run(chain: Chain) -> None:
    assert chain.final_rc == 0, chain.final_stderr[-3000:]
    manifest, reference = chain.manifest, chain.reference
    assert manifest["status"] == reference["status"] == "complete"
    assert set(manifest) == set(reference)
    assert [(s["name"], s["type"], s["key"]) for s in manifest["stages"]] == \
        [(s["name"], s["type"], s["key"]) for s in reference["stages"]]
    for record, ref in zip(manifest["stages"], reference["stages"], strict=True):
        assert set(record["metrics"]) == set(ref["metrics"]), record["name"]
    cache = chain.out / "cache"
    assert not list(cache.glob("*.tmp-*")) and not list(cache.glob("*.work"))
    # training resumed from its epoch checkpoints ends with the weights of the uninterrupted run
    import torch

    for name in ("teacher", "pruned", "student"):
        got, want = (next(s for s in m["stages"] if s["name"] == name) for m in (manifest, reference))
        assert got["metrics"].get("history") == want["metrics"].get("history"), name
        mine = torch.load(chain.out / got["files"][0]["path"], weights_only=True)
        theirs = torch.load(chain.out.parent / "reference" / want["files"][0]["path"], weights_only=True)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name


def test_ctrl_c_stops_cleanly_with_one_line_and_resumes(chain: Chain) -> None:
    stop = chain.sigint
    assert stop.returncode == 130
    assert "Traceback" not in stop.stderr
    last = stop.stderr.strip().splitlines()[-1]
    assert last == "interrupted: finished stages are kept in the cache; run the same command again to resume"
    assert stop.half_written == []  # an interrupted stage removes its own half-written folder
    assert "removed" not in stop.rerun_stderr.split("teacher (train): running")[0]
    assert _lines(stop.rerun_stderr, "reused from cache") == {"model"}
    assert "teacher: resuming train from epoch 1" in stop.rerun_stderr
    assert stop.status == "interrupted"


def test_second_run_on_the_same_output_folder_is_refused_with_a_lock_message(chain: Chain) -> None:
    assert chain.sigint.lock_refusal is not None
    code, stderr = chain.sigint.lock_refusal
    assert code == 2 and "Traceback" not in stderr
    assert "another run is using" in stderr and ".lock" in stderr and "--out" in stderr
    # the run that held the folder went on to complete, its artifacts intact (checked against the reference)
    assert chain.final_rc == 0 and chain.manifest["status"] == "complete"


@pytest.mark.parametrize("damage", ["truncated", "other architecture"])
def test_damaged_epoch_checkpoint_starts_the_stage_over(tmp_path: Path, damage: str) -> None:
    """A stage stopped after an epoch whose checkpoint is then damaged reruns from epoch 0, not a crash."""
    import torch

    from compressor.engine import run_recipe
    from compressor.recipe import validate_document

    doc = _doc(tmp_path / "run")
    doc["stages"] = [{"name": "teacher", "type": "train", "epochs": 2, "lr": 0.05}]

    def stop_after_epoch_1(msg: str) -> None:
        if "teacher: train epoch 1/2" in msg:
            stopped = "stopped"
            raise RuntimeError(stopped)

    with pytest.raises(RuntimeError, match="stopped"):
        run_recipe(validate_document(copy.deepcopy(doc)), log=stop_after_epoch_1, show_progress=False)
    [ckpt] = (tmp_path / "run/cache").glob("*.work/train-last.pt")
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    else:
        torch.save({"epoch": 1, "best_top1": 0.0, "best_state": None, "bad_epochs": 0, "history": [],
                    "model": torch.nn.Linear(2, 2).state_dict()}, ckpt)
    seen: list[str] = []
    result = run_recipe(validate_document(copy.deepcopy(doc)), log=seen.append, show_progress=False)
    assert any("is unreadable" in m and "starting train over" in m for m in seen), seen
    teacher = json.loads(result.manifest_path.read_text())["stages"][1]
    assert teacher["metrics"]["resumed_from_epoch"] == 0 and len(teacher["metrics"]["history"]) == 2


def test_fault_children_take_ctrl_c_even_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    """As under ``nohup make test &``: the server inherits SIGINT ignored; its children still stop on it."""
    server = ForkServer(tmp_path, ignore_sigint=True)
    try:
        pid, log = server.start(["--pause-now"])
        deadline = time.monotonic() + 60
        while "FAULTPOINT" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "FAULTPOINT" in log.read_text()
        os.kill(pid, signal.SIGINT)
        code = server.wait(pid, 20, "after SIGINT")  # without its own handler it would sleep 5 minutes
    finally:
        server.close()
    assert code == 1 and "KeyboardInterrupt" in log.read_text()
