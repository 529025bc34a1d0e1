"""``arm64-emulated``: the runner in an arm64 Debian root under qemu user-mode emulation.

For accuracy and agreement on ARM kernels without a board. Latencies are labelled emulated and are never
compared with native ones. The root comes from ``make arm-rootfs`` (scripts/build_arm_rootfs.sh).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from compressor.errors import CompressorError
from compressor.runtime.targets.base import EmulatedTarget, Job, TargetResult, parse_runner_output, stage_job

QEMU = "/usr/bin/qemu-aarch64-static"


def rootfs_problem(rootfs: Path) -> str | None:
    """Why ``rootfs`` cannot run the runner, or None when it can."""
    if not (rootfs / "usr/bin/python3").exists() or not (rootfs / QEMU.lstrip("/")).exists():
        return f"no arm64 root at {rootfs}; build it with 'make arm-rootfs' (about a minute)"
    if os.geteuid() != 0:
        return "running the arm64 root needs chroot, which needs root; rerun as root"
    return None


def run_emulated(target: EmulatedTarget, job: Job, folder: Path) -> TargetResult:
    rootfs = target.rootfs.resolve()
    problem = rootfs_problem(rootfs)
    if problem:
        raise CompressorError(problem)
    inside = Path(tempfile.mkdtemp(prefix="compressor-bench-", dir=rootfs / "tmp"))
    try:
        job_json = stage_job(job, inside / "job", target)
        rel = Path("/") / job_json.relative_to(rootfs)
        # chroot, then qemu explicitly: no binfmt handler needed; the runner forks but never execs.
        cmd = ["chroot", str(rootfs), QEMU, "/usr/bin/python3", str(rel.parent / "runner.py"), str(rel)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=target.timeout_s)
        except subprocess.TimeoutExpired:
            return TargetResult.all_rows(target, job, "failed", f"emulated run exceeded {target.timeout_s:.0f} s",
                                         emulated=True)
        result = parse_runner_output(target, job, proc.stdout, proc.stderr, proc.returncode, emulated=True)
        cpu = result.environment.get("cpu")
        if cpu is not None:
            cpu["model"] = f"qemu-aarch64 user-mode emulation (not a real ARM CPU; host {_host_model()})"
        return result
    finally:
        shutil.rmtree(inside, ignore_errors=True)


def _host_model() -> str:
    from compressor.runtime.envinfo import cpu_info

    return str(cpu_info()["model"])
