"""Shared fixtures: tiny data sets and recipes that write only under tmp_path."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from compressor.core.data import FASHION_MNIST_DIR

REPO = Path(__file__).resolve().parent.parent

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="embedded data missing: run 'make data' (apt-get install dataset-fashion-mnist)",
)


def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 20, val: bool = True,
                      seed: int = 0) -> Path:
    """A small ImageFolder of PNG files whose classes differ by brightness (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val") if val else ("train",):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = 40 + c * 160 // max(1, classes - 1)
                arr = np.clip(rng.normal(base, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"img_{i}.png")
    return root


TINY_RECIPE: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "threads": 1,
    "data": {"source": "fashion-mnist", "train_per_class": 20, "val_per_class": 10, "batch_size": 32,
             "preprocess": {"channels": 1, "mean": [0.286], "std": [0.353]}},
    "model": {"entry_point": "tests.tinynet:tiny_cnn"},
    "stages": [
        {"name": "teacher", "type": "train", "epochs": 1, "lr": 0.05},
        {"name": "evaluate", "type": "evaluate"},
        {"name": "onnx", "type": "export_onnx"},
        {"name": "bench", "type": "benchmark", "inputs": ["teacher", "onnx"], "min_iters": 5,
         "time_budget_s": 0.05, "warmup": 1},
    ],
}


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> dict[str, Any]:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["output"] = str(tmp_path / "run")
    return doc


def write_recipe(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running the CLI in a subprocess with the tests package importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow run only when selected with -m (e.g. ``pytest -m slow``)."""
    if config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: select with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Tiny ONNX / OpenVINO IR / TFLite files of tests.tinynet:tiny_cnn, built on first use (tests/model_files.py)."""
    from tests.model_files import ModelFiles

    return ModelFiles(tmp_path_factory.mktemp("model-files"))


# -- subprocesses with deadlines -------------------------------------------------------------------------
# Every subprocess a test starts has a deadline: its expected time plus DEADLINE_MARGIN_S (well under a
# minute). One still running then is killed with its process group, and the test fails saying so, with the
# end of its output; nothing waits forever (tests/test_suite_deadlines.py checks the calls).
DEADLINE_MARGIN_S = 45.0


def _tail(text: str | None, n: int = 3000) -> str:
    return (text or "")[-n:]


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_checked(cmd: Sequence[str | Path], *, expected_s: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(cmd, capture_output=True, text=True)`` with a deadline of ``expected_s`` + margin."""
    deadline = expected_s + DEADLINE_MARGIN_S
    argv = [str(c) for c in cmd]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{' '.join(argv)} ran past its deadline of {deadline:.0f} s (expected about {expected_s:.0f} s) "
                    f"and was killed; the end of its stderr:\n{_tail(err)}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class Child:
    """A started subprocess whose stderr lines are collected by a thread, so waiting for one has a deadline."""

    def __init__(self, cmd: Sequence[str | Path], *, expected_s: float, **kwargs: Any):
        self.argv = [str(c) for c in cmd]
        self.expected_s = expected_s
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, **kwargs)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def _deadline(self) -> float:
        return self.started + self.expected_s + DEADLINE_MARGIN_S

    def wait_for(self, needle: str) -> None:
        """Return once a stderr line contains ``needle``; fail (killing it) past the deadline or if it ends."""
        while time.monotonic() < self._deadline():
            if any(needle in line for line in list(self.lines)):
                return
            if self.proc.poll() is not None and not self._reader.is_alive():
                pytest.fail(f"{' '.join(self.argv)} ended (exit {self.proc.returncode}) without printing "
                            f"{needle!r}:\n{_tail(self.stderr)}")
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"{' '.join(self.argv)} did not print {needle!r} within {self.expected_s + DEADLINE_MARGIN_S:.0f} s "
                    f"and was killed:\n{_tail(self.stderr)}")

    def wait(self, grace_s: float | None = None) -> int:
        """The exit status; past the deadline (or ``grace_s`` from now) it is killed and the test fails."""
        limit = time.monotonic() + grace_s if grace_s is not None else self._deadline()
        try:
            code = self.proc.wait(timeout=max(0.1, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{' '.join(self.argv)} was still running at its deadline and was killed:\n{_tail(self.stderr)}")
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            _kill_group(self.proc)
            self.proc.wait(timeout=30)
