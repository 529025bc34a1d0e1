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
child's process id; ``{"wait": PID}`` reaps it and prints its exit status as ``subprocess`` reports one
(``-9`` when SIGKILL ended it). Each child is a whole process: killing it is a real kill -9.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from typing import Any

PAUSE_S = 300.0


def _pause() -> None:
    print("FAULTPOINT", file=sys.stderr, flush=True)
    time.sleep(PAUSE_S)
    os._exit(99)  # nobody came to stop it (the test died): do not go on writing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--on-log")
    parser.add_argument("--after-stage")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("cli", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cli_args = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    if args.serve:
        return serve()

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


def serve() -> int:
    import torchvision  # noqa: F401 - the imports every run pays for, done once before forking

    import compressor.cli
    import compressor.engine
    import compressor.registry  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            _, status = os.waitpid(int(request["wait"]), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
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
