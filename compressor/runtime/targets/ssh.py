"""``ssh``: the runner on a remote device through the system ssh and scp (key auth, host key checked).

The harness makes a temporary folder on the device, copies the staged job there, runs the runner with
the device's Python and whichever runtimes it has, reads the JSON and removes the folder. No password
prompts (BatchMode), no unknown host keys (StrictHostKeyChecking against the given known_hosts).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from compressor.runtime.targets.base import Job, SshTarget, TargetResult, parse_runner_output, stage_job


def ssh_options(target: SshTarget) -> list[str]:
    return ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={target.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-o", f"ConnectTimeout={target.connect_timeout_s}",
            "-o", "LogLevel=ERROR", "-i", str(target.key)]


def _ssh(target: SshTarget, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", *ssh_options(target), "-p", str(target.port), f"{target.user}@{target.host}", command]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


UNREACHABLE = ("Connection refused", "timed out", "No route to host", "Network is unreachable",
               "Could not resolve hostname", "Connection closed", "Connection reset")


def connection_hint(target: SshTarget, message: str) -> str:
    """What to do about an ssh failure, from ssh's own last line."""
    where = f"{target.host}:{target.port}"
    if "Host key verification failed" in message or "REMOTE HOST IDENTIFICATION HAS CHANGED" in message:
        return (f"the host key {where} presents is not the one in {target.known_hosts}: check that this is the "
                f"right device, then update that file (ssh-keyscan -p {target.port} {target.host})")
    if any(text in message for text in UNREACHABLE):
        return (f"device {where} is unreachable: check that it is on and on the network, its address and port, "
                "and that sshd runs there")
    if "Permission denied" in message:
        return (f"the device refused key {target.key} for user {target.user}: add the key's .pub to "
                "~/.ssh/authorized_keys there")
    return "check the target's host, port, user, key and known_hosts"


def _why(proc: subprocess.CompletedProcess[str], what: str, target: SshTarget) -> str:
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    return f"{what} failed (exit {proc.returncode}): {last.rstrip('.')}; {connection_hint(target, last)}"


def run_ssh(target: SshTarget, job: Job, folder: Path) -> TargetResult:
    for path, what in ((target.key, "key"), (target.known_hosts, "known_hosts")):
        if not Path(path).is_file():
            return TargetResult.all_rows(target, job, "failed", f"ssh {what} file {path} does not exist")
    job_json = stage_job(job, folder, target)
    try:
        made = _ssh(target, "mktemp -d /tmp/compressor-bench.XXXXXX", target.connect_timeout_s + 30)
        if made.returncode != 0:
            return TargetResult.all_rows(target, job, "failed", _why(made, f"ssh to {target.label}", target))
        remote = made.stdout.strip().splitlines()[-1]
        try:
            scp = ["scp", "-q", "-r", *ssh_options(target), "-P", str(target.port), str(folder),
                   f"{target.user}@{target.host}:{remote}/"]
            copied = subprocess.run(scp, capture_output=True, text=True, check=False, timeout=target.timeout_s)
            if copied.returncode != 0:
                return TargetResult.all_rows(target, job, "failed", _why(copied, "scp of the job", target))
            where = f"{remote}/{folder.name}"
            cmd = (f"{shlex.quote(target.python)} {shlex.quote(where + '/runner.py')} "
                   f"{shlex.quote(where + '/' + job_json.name)}")
            proc = _ssh(target, cmd, target.timeout_s)
            return parse_runner_output(target, job, proc.stdout, proc.stderr, proc.returncode)
        finally:
            _ssh(target, f"rm -rf {shlex.quote(remote)}", target.connect_timeout_s + 30)
    except subprocess.TimeoutExpired as err:
        return TargetResult.all_rows(target, job, "failed", f"ssh to {target.label} timed out after {err.timeout:.0f} s; "
                                        f"{connection_hint(target, 'timed out')}")
