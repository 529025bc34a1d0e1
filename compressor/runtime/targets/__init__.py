"""Benchmark targets: where artifacts run (this CPU, a GPU, an SSH device, an emulated arm64 root).

Every target runs the same self-contained ``runner.py`` on a staged folder (runner, job.json, artifact
files, preprocessed inputs as .npy) and returns a :class:`TargetResult`; a target that cannot run gives
rows marked failed or skipped with the reason, never an exception that stops the other targets.
The shared pieces are in :mod:`compressor.runtime.targets.base`; each target type has its own module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any

from compressor.errors import CompressorError
from compressor.runtime.targets.base import (
    BACKEND_NAMES,
    RUNNER,
    CudaTarget,
    EmulatedTarget,
    Job,
    JobArtifact,
    LocalTarget,
    SshTarget,
    TargetConfig,
    TargetResult,
    parse_runner_output,
    parse_target,
    stage_job,
    subset,
    target_row,
)

__all__ = ["BACKEND_NAMES", "CudaTarget", "EmulatedTarget", "Job", "JobArtifact", "LocalTarget", "RUNNER", "SshTarget", "TargetConfig", "TargetResult", "parse_runner_output", "parse_target", "stage_job", "subset", "target_row", "TARGET_RUNNERS", "run_targets", "runner_for"]


# The one table of target types: ``type`` -> "module:function" of its runner, loaded on first use.
# Adding a target is one module here plus one line in this table (and its config class in base.py).
TARGET_RUNNERS: Mapping[str, str] = MappingProxyType({
    "local": "compressor.runtime.targets.local:run_local",
    "cuda": "compressor.runtime.targets.cuda:run_cuda",
    "ssh": "compressor.runtime.targets.ssh:run_ssh",
    "arm64-emulated": "compressor.runtime.targets.emulated:run_emulated",
})


def runner_for(target: Any, runners: Mapping[str, str] = TARGET_RUNNERS) -> Callable[[Any, Job, Path], TargetResult]:
    """The run function of ``target``'s type, looked up in ``runners``."""
    kind = str(getattr(target, "type", None))
    if kind not in runners:
        msg = f"unknown target type {kind!r}; known: {', '.join(runners)}"
        raise CompressorError(msg)
    module, _, func = runners[kind].partition(":")
    fn: Callable[[Any, Job, Path], TargetResult] = getattr(importlib.import_module(module), func)
    return fn


def run_targets(targets: list[Any], job: Job, workdir: Path,
                runners: Mapping[str, str] = TARGET_RUNNERS) -> list[TargetResult]:
    """Run ``job`` on every target: SSH devices in parallel (one thread each), while the targets that use
    this machine's CPU (local, cuda, arm64-emulated) run one after another in one more thread, so they
    never time each other."""
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        msg = f"benchmark targets need distinct names, got {labels}; set name: on the repeated ones"
        raise CompressorError(msg)

    def one(i: int) -> TargetResult:
        target = targets[i]
        try:
            return runner_for(target, runners)(target, job, workdir / f"t{i}")
        except CompressorError as err:
            return TargetResult.all_rows(target, job, "failed", str(err))

    on_this_machine = [i for i, t in enumerate(targets) if not isinstance(t, SshTarget)]
    remote = [i for i, t in enumerate(targets) if isinstance(t, SshTarget)]
    results: dict[int, TargetResult] = {}

    def run_group(group: list[int]) -> None:
        for i in group:
            results[i] = one(i)

    with ThreadPoolExecutor(max_workers=len(remote) + 1) as pool:
        for future in [pool.submit(run_group, g) for g in [on_this_machine, *([i] for i in remote)]]:
            future.result()
    return [results[i] for i in range(len(targets))]


