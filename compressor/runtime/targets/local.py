"""``local``: the runner on this machine's CPU, in a child process (threads and core pinning from config)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from compressor.runtime.targets.base import Job, LocalTarget, TargetResult, parse_runner_output, stage_job


def run_local(target: LocalTarget, job: Job, folder: Path, device: str = "cpu") -> TargetResult:
    job_json = stage_job(job, folder, target, device)
    # its own process group: the runner forks a child per artifact, and a stop must end them all
    proc = subprocess.Popen([sys.executable, str(job_json.parent / "runner.py"), str(job_json)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=target.timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return TargetResult.all_rows(target, job, "failed", f"the {device} run exceeded timeout_s "
                                     f"({target.timeout_s:.0f} s) and was stopped; raise it for large models")
    except BaseException:  # Ctrl-C or an error here: the runner must not outlive this process
        _stop(proc)
        raise
    return parse_runner_output(target, job, out, err, proc.returncode)


def _stop(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=30)
