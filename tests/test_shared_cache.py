"""One cache_dir shared by runs with different output folders, started at the same moment (parallel CI jobs).

Two real ``compressor run`` processes: both complete, every stage is computed once (the other run waits
on the stage's lock file and reuses it), and the cache holds each stage whole (its files match both
manifests' sha256), with no half-written folder left.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from pathlib import Path
from typing import Any

from compressor.core.artifacts import sha256_file
from compressor.engine import stage_lock
from tests.conftest import PYTHON, Child, make_image_folder, write_recipe


def _recipe(tmp_path: Path) -> dict[str, Any]:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6, size=12)
    return {
        "name": "shared", "seed": 0, "threads": 1, "cache_dir": str(tmp_path / "shared-cache"),
        "data": {"source": "imagefolder", "path": str(data), "batch_size": 6,
                 "preprocess": {"resize": 12, "channels": 1, "mean": [0.5], "std": [0.5]}},
        "model": {"entry_point": "tests.tinynet:tiny_cnn"},
        "stages": [
            {"name": "teacher", "type": "train", "epochs": 3, "lr": 0.05},
            {"name": "evaluate", "type": "evaluate"},
            {"name": "onnx", "type": "export_onnx"},
        ],
    }


def _lines(stderr: str, suffix: str) -> list[str]:
    return [line.split(" (", 1)[0] for line in stderr.splitlines() if f"): {suffix}" in line]


def test_two_runs_sharing_a_cache_dir_both_complete_and_compute_each_stage_once(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    recipe = write_recipe(tmp_path / "shared.yaml", _recipe(tmp_path))
    runs = [Child([PYTHON, "-m", "compressor.cli", "run", str(recipe), "--out", str(tmp_path / f"out{i}")],
                  expected_s=90, env=cli_env, cwd=tmp_path) for i in (1, 2)]
    codes = [run.wait() for run in runs]
    assert codes == [0, 0], [run.stderr[-2000:] for run in runs]
    names = ["model", "teacher", "evaluate", "onnx"]
    running = [name for run in runs for name in _lines(run.stderr, "running")]
    reused = [name for run in runs for name in _lines(run.stderr, "reused from cache")]
    assert sorted(running) == sorted(names), [run.stderr for run in runs]  # each stage computed once
    assert sorted(reused) == sorted(names)  # and reused by the other run
    cache = tmp_path / "shared-cache"
    assert not list(cache.glob("*.tmp-*")) and not list(cache.glob("*.work"))
    manifests = [json.loads((tmp_path / f"out{i}/manifest.json").read_text()) for i in (1, 2)]
    assert [m["status"] for m in manifests] == ["complete", "complete"]
    assert [s["key"] for s in manifests[0]["stages"]] == [s["key"] for s in manifests[1]["stages"]]
    for manifest, out in zip(manifests, ("out1", "out2"), strict=True):
        for stage in manifest["stages"]:
            assert (cache / stage["key"] / "stage.json").is_file()
            for f in stage["files"]:
                assert sha256_file((tmp_path / out / f["path"]).resolve()) == f["sha256"], (stage["name"], f)


def test_stage_lock_waits_for_the_holder_then_proceeds(tmp_path: Path) -> None:
    """The lock itself: a second holder waits (and says so) until the first lets go."""
    holder = open(tmp_path / "k.lock", "a+")  # noqa: SIM115 - another open file description, as another process
    fcntl.flock(holder, fcntl.LOCK_EX)
    waited: list[float] = []
    entered: list[float] = []

    def second() -> None:
        with stage_lock(tmp_path, "k", lambda: waited.append(time.monotonic())):
            entered.append(time.monotonic())

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    assert waited and not entered  # waiting, not inside
    released = time.monotonic()
    holder.close()
    thread.join(timeout=10)
    assert entered and entered[0] >= released
