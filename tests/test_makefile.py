"""Set-up that respects the machine: what `make demo` and `make test` install, and how system packages are.

``scripts/system_packages.sh`` installs as root, through sudo when not root, or stops (exit 2) printing the
one command to run. The cases run against shims of ``id``, ``sudo`` and ``apt-get`` on PATH, so nothing
is installed; ``make`` runs with its own VENV under tmp_path and ``PYTHON=false``, so it cannot touch a venv.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import REPO, run_checked

SCRIPT = REPO / "scripts/system_packages.sh"
APT = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist"


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _machine(tmp_path: Path, uid: int, sudo: str | None) -> dict[str, str]:
    """An environment whose PATH holds only shims: ``id -u`` prints ``uid``; ``sudo`` is absent (None),
    asks for a password ("password"), or works ("works"); ``apt-get`` and ``env`` log their arguments."""
    shims = tmp_path / "shims"
    shims.mkdir()
    log = tmp_path / "calls.log"
    _shim(shims, "id", f'[ "$1" = -u ] && echo {uid} || echo "uid={uid}"')
    _shim(shims, "apt-get", f'echo "apt-get $*" >> {log}')
    _shim(shims, "env", f'echo "env $*" >> {log}; shift; exec "$@"')
    _shim(shims, "true", "exit 0")
    if sudo == "password":
        _shim(shims, "sudo", 'echo "sudo: a password is required" >&2; exit 1')
    elif sudo == "works":
        _shim(shims, "sudo", f'[ "$1" = -n ] && shift; echo "sudo $*" >> {log}; exec "$@"')
    return {"PATH": str(shims), "HOME": str(tmp_path)}


def _run(tmp_path: Path, uid: int, sudo: str | None) -> tuple[int, str, list[str]]:
    env = _machine(tmp_path, uid, sudo)
    proc = run_checked(["/bin/bash", SCRIPT, "dataset-fashion-mnist"], expected_s=5, env=env,
                       stdin=open(os.devnull))  # noqa: SIM115 - no terminal: sudo cannot prompt
    log = tmp_path / "calls.log"
    return proc.returncode, proc.stdout + proc.stderr, log.read_text().splitlines() if log.exists() else []


def test_root_installs_with_apt_get_directly(tmp_path: Path) -> None:
    code, _out, calls = _run(tmp_path, 0, None)
    assert code == 0
    assert calls == ["apt-get update -qq", "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist",
                     "apt-get install -y -qq dataset-fashion-mnist"]


def test_not_root_installs_through_sudo(tmp_path: Path) -> None:
    code, out, calls = _run(tmp_path, 1000, "works")
    assert code == 0, out
    assert "not root: installing dataset-fashion-mnist with sudo" in out
    assert calls[0] == "sudo true" and "sudo apt-get update -qq" in calls
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist" in calls


@pytest.mark.parametrize(("sudo", "command"), [("password", f"  sudo sh -c '{APT}'"), (None, f"  sh -c '{APT}'")])
def test_without_root_or_usable_sudo_it_stops_with_the_command_to_run(tmp_path: Path, sudo: str | None,
                                                                     command: str) -> None:
    code, out, calls = _run(tmp_path, 1000, sudo)
    assert code == 2
    assert "needs root, and sudo is not available here" in out
    assert command in out.splitlines(), out
    assert not [c for c in calls if "apt-get" in c]  # nothing was attempted


def _make(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    base = {**os.environ, **(env or {})}
    proc = run_checked(["make", "-C", REPO, *argv, f"VENV={tmp_path / 'venv'}", "PYTHON=false",
                        f"FMNIST_DIR={tmp_path / 'no-data'}"], expected_s=10, env=base, stdin=open(os.devnull))  # noqa: SIM115
    return proc.returncode, proc.stdout + proc.stderr


def test_make_demo_installs_only_what_the_demo_needs(tmp_path: Path) -> None:
    code, plan = _make(tmp_path, "-n", "demo")
    assert code == 0, plan
    assert "openssh" not in plan and "ssh-server" not in plan and "sshd" not in plan
    assert "arm-rootfs" not in plan and "compressor.quant.qat" not in plan  # NNCF's extension: tests only
    assert "pip install --quiet --disable-pip-version-check -e '.[demo]'" in plan
    assert plan.index("system_packages.sh dataset-fashion-mnist") < plan.index("pip install")  # stops early


def test_make_test_sets_up_the_ssh_server(tmp_path: Path) -> None:
    code, plan = _make(tmp_path, "-n", "test")
    assert code == 0, plan
    assert "system_packages.sh openssh-server" in plan and "-e '.[all]'" in plan
    assert plan.index("system_packages.sh openssh-server") < plan.index("pip install")


def test_make_demo_without_root_or_sudo_stops_in_its_first_lines(tmp_path: Path) -> None:
    shims = tmp_path / "shims"
    shims.mkdir()
    _shim(shims, "id", '[ "$1" = -u ] && echo 1000 || /usr/bin/id "$@"')
    _shim(shims, "sudo", 'echo "sudo: a password is required" >&2; exit 1')
    code, out = _make(tmp_path, "demo", env={"PATH": f"{shims}:{os.environ['PATH']}"})
    assert code != 0
    lines = out.strip().splitlines()
    assert f"  sudo sh -c '{APT}'" in lines, out
    assert len(lines) < 12 and "pip" not in out and not (tmp_path / "venv").exists(), out
