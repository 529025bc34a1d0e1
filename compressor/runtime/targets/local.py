"""``local``: the runner on this machine's CPU, in a child process (threads and core pinning from config)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from compressor.runtime.targets.base import Job, LocalTarget, TargetResult, parse_runner_output, stage_job


def run_local(target: LocalTarget, job: Job, folder: Path, device: str = "cpu") -> TargetResult:
    job_json = stage_job(job, folder, target, device)
    try:
        proc = subprocess.run([sys.executable, str(job_json.parent / "runner.py"), str(job_json)],
                              capture_output=True, text=True, check=False, timeout=target.timeout_s)
    except subprocess.TimeoutExpired:
        return TargetResult.all_rows(target, job, "failed", f"the {device} run exceeded timeout_s "
                                     f"({target.timeout_s:.0f} s) and was stopped; raise it for large models")
    return parse_runner_output(target, job, proc.stdout, proc.stderr, proc.returncode)
