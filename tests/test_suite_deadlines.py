"""The suite cannot hang: every subprocess a test starts has a deadline.

Checked on the tests' syntax trees: ``subprocess.run`` / ``call`` / ``check_call`` / ``check_output`` pass
``timeout=``; ``subprocess.Popen`` appears only in the helpers that put a deadline on it (conftest's
``run_checked`` and ``Child``, the fault tests' fork server, the test SSH server); ``.wait()`` and
``.communicate()`` always pass a timeout. A planted offender must be found by the same check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
RUN_CALLS = {"run", "call", "check_call", "check_output"}
POPEN_ALLOWED = {"conftest.py", "test_faults.py", "sshd.py"}


def offences(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        attr = node.func.attr
        keywords = {k.arg for k in node.keywords}
        where = f"{name}:{node.lineno}"
        if owner == "subprocess" and attr in RUN_CALLS and "timeout" not in keywords:
            found.append(f"{where}: subprocess.{attr} without timeout=")
        elif owner == "subprocess" and attr == "Popen" and name not in POPEN_ALLOWED:
            found.append(f"{where}: subprocess.Popen outside the deadline helpers; use tests.conftest.Child")
        elif attr in ("wait", "communicate") and not node.args and "timeout" not in keywords \
                and owner not in ("child", "run"):  # tests.conftest.Child.wait has its deadline built in
            found.append(f"{where}: .{attr}() without a timeout")
    return found


def test_every_subprocess_in_the_tests_has_a_deadline() -> None:
    problems = [p for path in sorted(TESTS.glob("*.py")) for p in offences(path.read_text(), path.name)]
    assert problems == []


@pytest.mark.parametrize(("code", "expected"), [
    ("import subprocess\nsubprocess.run(['sleep', '1'])\n", "subprocess.run without timeout="),
    ("import subprocess\nsubprocess.check_output(['ls'])\n", "subprocess.check_output without timeout="),
    ("import subprocess\np = subprocess.Popen(['ls'])\n", "subprocess.Popen outside the deadline helpers"),
    ("proc.wait()\n", ".wait() without a timeout"),
    ("proc.communicate()\n", ".communicate() without a timeout"),
])
def test_a_planted_subprocess_without_a_deadline_is_found(code: str, expected: str) -> None:
    [problem] = offences(code, "test_planted.py")
    assert expected in problem


def test_calls_with_deadlines_pass() -> None:
    code = ("import subprocess\nsubprocess.run(['ls'], timeout=5)\nproc.wait(30)\nproc.communicate(timeout=3)\n")
    assert offences(code, "test_ok.py") == []


def test_a_local_benchmark_run_that_outlives_its_timeout_is_stopped(tmp_path: Path, model_files: object,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The runtime's own child processes have deadlines too: a local run past ``timeout_s`` is a failed row."""
    from compressor.cli import main

    targets = tmp_path / "targets.yaml"
    targets.write_text("- {type: local, timeout_s: 3}\n")
    onnx = model_files.get("onnx")  # type: ignore[attr-defined]
    code = main(["bench", str(onnx), "--targets-file", str(targets), "--warmup", "0", "--time-budget-s", "30",
                 "--min-iters", "1", "--max-iters", "100000000", "--out", str(tmp_path / "bench")])
    err = capsys.readouterr().err
    assert code == 2 and "target local could not be used: the cpu run exceeded timeout_s (3 s)" in err, err
    # the runner and the child it forked for the artifact are gone (its own process group was killed)
    left = [p for p in Path("/proc").glob("[0-9]*") if str(tmp_path) in _cmdline(p)]
    assert left == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
