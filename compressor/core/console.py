"""The console shows our own lines and progress bars; what third-party code prints goes to a log file.

Converters and runtimes print a lot: litert-torch its ``[START]``/``[DONE]`` lines, TensorFlow's C++
runtime and oneDNN their notices, NNCF and torch their warnings. :func:`third_party_output_to` sends
file descriptors 1 and 2 (C/C++ output), Python's ``sys.stdout`` and Python warnings to a log file while
a stage runs, and points ``sys.stderr``, where progress bars go, at the console it had before. Log
functions wrapped with :meth:`Console.ours` print to the console as usual. ``compressor --verbose``
leaves everything on the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


def _fd(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


@dataclass
class Console:
    """Where our own output goes while third-party output is redirected."""

    stdout: TextIO
    stderr: TextIO

    def ours(self, fn: Callable[[str], None]) -> Callable[[str], None]:
        """``fn`` (a log function that prints) writing to the console, not to the log file."""

        def call(msg: str) -> None:
            before = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = self.stdout, self.stderr
            try:
                fn(msg)
            finally:
                sys.stdout, sys.stderr = before

        return call


def _console_stream(stream: TextIO, fd: int, saved: int) -> tuple[TextIO, bool]:
    """A stream on a copy of the original descriptor when ``stream`` wrote to it; else ``stream`` itself
    (a test's captured stream). The flag says whether the stream is ours to close."""
    if _fd(stream) != fd:
        return stream, False
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(saved), "w", buffering=1, encoding=encoding, errors="replace"), True


def _repoint_handlers(replaced: dict[int, TextIO]) -> None:
    """A ``logging.StreamHandler`` created inside the block (torch, NNCF and absl add their own) holds the
    block's stream, closed when the block ends: point it at the stream that stream stood in for."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and id(stream) in replaced:
                handler.setStream(replaced[id(stream)])


@contextlib.contextmanager
def third_party_output_to(path: Path) -> Iterator[Console]:
    """Everything third-party code prints goes to ``path`` (appended) until the block ends."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    old_stdout, old_stderr, old_showwarning = sys.stdout, sys.stderr, warnings.showwarning
    out, close_out = _console_stream(old_stdout, 1, saved[1])
    err, close_err = _console_stream(old_stderr, 2, saved[2])
    log = os.fdopen(os.dup(log_fd), "a", buffering=1, encoding="utf-8", errors="replace")

    def to_log(message: Warning | str, category: type[Warning], filename: str, lineno: int,
               file: TextIO | None = None, line: str | None = None) -> None:
        log.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        sys.stdout, sys.stderr = log, err  # progress bars (written to sys.stderr) stay on the console
        warnings.showwarning = to_log
        yield Console(out, err)
    finally:
        for stream in (sys.stdout, sys.stderr, log, out, err):
            with contextlib.suppress(Exception):
                stream.flush()
        warnings.showwarning = old_showwarning
        sys.stdout, sys.stderr = old_stdout, old_stderr
        _repoint_handlers({id(log): old_stdout, id(out): old_stdout, id(err): old_stderr})
        os.dup2(saved[1], 1)
        os.dup2(saved[2], 2)
        for fd in (*saved.values(), log_fd):
            os.close(fd)
        log.close()
        for stream, own in ((out, close_out), (err, close_err)):
            if own:
                stream.close()
