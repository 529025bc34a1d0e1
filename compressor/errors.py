"""Typed errors. Each one says what went wrong, where, and what to do next.

The CLI turns a :class:`CompressorError` into one message on stderr and its
``exit_code``; anything else is an internal error.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class CompressorError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem in a recipe: where (a field path such as ``stages[2].ratio``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RecipeError(CompressorError):
    """A recipe that cannot be used; lists every problem found, one per line."""

    def __init__(self, source: str, problems: Sequence[Problem]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"invalid recipe {source}:\n{lines}")


class DataError(CompressorError):
    """The data set is missing, empty, or inconsistent."""


class CheckpointError(CompressorError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit the model."""


class ModelSourceError(CompressorError):
    """A model source (architecture name or entry point) cannot be built."""


class MissingExtraError(CompressorError):
    """An optional dependency is not installed."""

    def __init__(self, what: str, extra: str, module: str):
        self.extra = extra
        self.module = module
        super().__init__(
            f"{what} needs the Python package '{module}', which is not installed; "
            f"install it with: pip install 'compressor[{extra}]'"
        )


class StageError(CompressorError):
    """A stage could not do its work; artifacts of finished stages are kept."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage '{stage}': {message}")


class PruningError(CompressorError):
    """A pruning target cannot be met, or a layer cannot be pruned; says what is achievable or what to ignore."""


class ExportError(CompressorError):
    """A converter could not export a model, or its output disagrees with PyTorch."""


class BackendError(CompressorError):
    """A runtime could not load or run an artifact."""


class RunLockedError(CompressorError):
    """Another run holds the output folder."""


class GateFailed(CompressorError):
    """A release gate failed (exit code 1, as CI systems expect)."""

    exit_code = 1


class BundleError(CompressorError):
    """A release bundle is missing, unreadable, or not a bundle."""


class VerifyFailed(CompressorError):
    """A release bundle does not match its manifest or does not reproduce its accuracy (exit code 1)."""

    exit_code = 1


class AccuracyGoalError(CompressorError):
    """Quantization could not meet its accuracy goal; ``attempts`` lists what was tried."""

    def __init__(self, message: str, attempts: Sequence[dict[str, object]] = ()):
        self.attempts = list(attempts)
        super().__init__(message)


class NoFeasiblePlan(CompressorError):
    """A search found no plan that meets every constraint (exit code 1); its report names the closest."""

    exit_code = 1


class InputFileError(CompressorError):
    """A file the user passed is missing, of another kind, truncated, or lacks a companion file."""

    def __init__(self, path: object, problem: str, expected: str, what: str = "file"):
        self.path = path
        self.expected = expected
        super().__init__(f"{what} {path} {problem}; expected {expected}")


class TrainingDiverged(CompressorError):
    """The training loss became NaN or Inf; the message names the likely causes with the values seen."""
