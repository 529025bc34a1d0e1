"""The CLI with a pause point, so that a test can kill it at a known place inside a stage.

    python -m tests.faultpoint --on-log TEXT -- run recipe.yaml
    python -m tests.faultpoint --after-stage NAME -- run recipe.yaml

``--on-log``: pause right after the run logs a line containing TEXT (an epoch line: that epoch's checkpoint
is on disk). ``--after-stage``: pause when stage NAME's function has returned, so that its files lie in
``cache/<key>.tmp-<pid>`` but are not committed (no stage.json, no rename): the worst moment to die.
At the pause it prints ``FAULTPOINT`` on stderr and sleeps until a signal ends it (or exits with 99 after
5 minutes). Nothing else changes.

    python -m tests.faultpoint --serve

A fork server, so that a test of many killed runs pays for importing torch once: it imports the package,
then reads one JSON request a line on stdin. ``{"argv": [...], "stderr": FILE, "cwd": DIR}`` forks a child
that runs ``main(argv)`` (the options above, then the CLI's) with its stderr in FILE, and prints the
child's process id; ``{"wait": PID, "timeout": S}`` reaps it and prints ``{"code": ..., "timed_out": ...}``,
the exit status as ``subprocess`` reports one (``-9`` when SIGKILL ended it); a child still running after S
seconds is killed first (``timed_out``). Each child is a whole process: killing it is a real kill -9, and
each installs its own SIGINT handler (Ctrl-C works even when the server was started with SIGINT ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import signal
import sys
import time
import traceback
from typing import Any

PAUSE_S = 300.0


def own_signal_handlers() -> None:
    """Ctrl-C raises KeyboardInterrupt here whatever this process inherited: under ``nohup ... &`` (and some
    CI runners) SIGINT arrives ignored, and a child that inherits that can never be interrupted."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _pause() -> None:
    print("FAULTPOINT", file=sys.stderr, flush=True)
    time.sleep(PAUSE_S)
    os._exit(99)  # nobody came to stop it (the test died): do not go on writing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--on-log")
    parser.add_argument("--after-stage")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--pause-now", action="store_true", help="pause at once (tests of the pause itself)")
    parser.add_argument("cli", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cli_args = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    if args.serve:
        return serve()
    own_signal_handlers()
    if args.pause_now:
        _pause()

    from compressor import cli
    from compressor.registry import STAGES

    if args.on_log:
        log = cli._log

        def pausing_log(msg: str) -> None:
            log(msg)
            if args.on_log in msg:
                _pause()

        cli._log = pausing_log  # type: ignore[assignment]
    registry = dict(STAGES)
    if args.after_stage:
        for name, entry in STAGES.items():
            def run(cfg: Any, ctx: Any, real: Any = entry.run) -> Any:
                output = real(cfg, ctx)
                if ctx.name == args.after_stage:
                    _pause()
                return output

            registry[name] = dataclasses.replace(entry, run=run)
    return cli.main(cli_args, registry=registry)


def _child(request: dict) -> int:
    own_signal_handlers()
    fd = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.chdir(request["cwd"])
    try:
        return main(request["argv"])
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 1
    except BaseException:  # noqa: BLE001 - shown in the child's stderr file
        traceback.print_exc()
        return 1


def _wait(pid: int, timeout: float) -> dict[str, Any]:
    """Reap ``pid`` within ``timeout`` seconds; past it, kill it (SIGKILL) and say so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"code": os.waitstatus_to_exitcode(status), "timed_out": False}
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return {"code": os.waitstatus_to_exitcode(status), "timed_out": True}


def read_line(stream: Any, timeout: float) -> str | None:
    """One line from a pipe, or None when none came within ``timeout`` seconds (the other end hangs)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else None


def serve() -> int:
    import torchvision  # noqa: F401 - the imports every run pays for, done once before forking

    import compressor.cli
    import compressor.engine
    import compressor.registry  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            print(json.dumps(_wait(int(request["wait"]), float(request.get("timeout", 60)))), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
