"""The Optuna side of a search: storage, sampler, the budget shared by every worker, and the worker loop.

Every worker (a process here, or on another machine) opens the same RDB storage, asks Optuna for a trial,
runs it (:mod:`compressor.search.trial`) and tells the result. Workers share nothing else but the stage
cache. A worker that dies stops sending heartbeats; the next worker to start a trial marks its trial
failed and queues the same parameters again (``RetryHeartbeatStaleTrialCallback``), so a killed search
resumes with no trial lost and none run twice.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from compressor.errors import CompressorError, MissingExtraError
from compressor.search_config import SearchConfig


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError as err:
        what = "compressor search"
        raise MissingExtraError(what, "search", "optuna") from err
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial: our own one-line log, no traceback
    return optuna


@contextmanager
def _quiet_experimental() -> Iterator[None]:
    """Heartbeats, retries and TPE constraints are marked experimental in Optuna; say so once, in the docs."""
    optuna = optuna_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def redact(url: str) -> str:
    """The storage URL without its password, for logs and reports."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is shown as Optuna will reject it
        return url.split("@")[-1]


def open_storage(url: str, cfg: SearchConfig) -> Any:
    optuna = optuna_module()
    # SQLite: wait for the file lock instead of failing when another worker writes at the same moment.
    kwargs: dict[str, Any] = ({"connect_args": {"timeout": 120}} if url.startswith("sqlite")
                              else {"pool_pre_ping": True})
    with _quiet_experimental():
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry)
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=cfg.heartbeat_s,
                grace_period=cfg.grace_s or 2 * cfg.heartbeat_s, heartbeat_stale_trial_callback=retry)
        except (ImportError, ValueError) as err:
            msg = (f"cannot open the study storage {redact(url)}: {err}; give an Optuna RDB URL such as "
                   "sqlite:///runs/study.db or postgresql://user@host/db (with its driver installed, e.g. psycopg2)")
            raise CompressorError(msg) from err
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's connection errors have no common base we import
            msg = f"cannot reach the study storage {redact(url)}: {type(err).__name__}: {err}"
            raise CompressorError(msg) from err


def directions(cfg: SearchConfig) -> list[str]:
    return ["maximize" if name == "accuracy" else "minimize" for name in cfg.objectives.names()]


def make_sampler(cfg: SearchConfig, seed: int) -> Any:
    """Both samplers read each trial's constraint values (``Trial.set_constraint``): feasible plans first."""
    optuna = optuna_module()
    with _quiet_experimental():
        if cfg.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        return optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=seed)


def worker_seed(base: int, worker_index: int, trials_before: int, shared: bool) -> int:
    """Distinct per worker and per restart (a restarted sampler must not replay its first draws);
    reproducible for one worker on a fresh local study."""
    parts = [base, worker_index, trials_before] + ([socket.gethostname(), os.getpid()] if shared else [])
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- the budget ----------------------------------------------------------------------------------

def counts_against_budget(trial: Any) -> bool:
    """Finished, running and queued trials count; a trial whose worker died does not (its retry does),
    nor one that found the budget spent when it started."""
    state = trial.state.name
    if state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING"):
        return not trial.user_attrs.get("over_budget")
    return state == "FAIL" and "error" in trial.user_attrs


def claimed(trials: list[Any], before: int | None = None) -> int:
    return sum(1 for t in trials if counts_against_budget(t) and (before is None or t.number < before))


def fail_stale(study: Any) -> None:
    optuna = optuna_module()
    with _quiet_experimental():
        optuna.storages.fail_stale_trials(study)


@dataclass
class Worker:
    """One worker's loop over trials until the study's budget is spent."""

    study: Any
    cfg: SearchConfig
    run_trial: Callable[[Any], Any]
    log: Callable[[str], None]

    def over_budget(self, trial: Any) -> bool:
        limit = self.cfg.budget.trials
        if limit is None:
            return False
        return claimed(self.study.get_trials(deepcopy=False), before=trial.number) >= limit

    def objective(self, trial: Any) -> Any:
        if self.over_budget(trial):  # another worker took the last trial in the same instant
            trial.set_user_attr("over_budget", True)
            msg = "the trial budget was spent when this trial started"
            raise _OverBudget(msg)
        return self.run_trial(trial)

    def loop(self, deadline: float | None, most: int | None = None) -> int:
        """Run trials until the budget is spent (trials, or ``deadline`` on the monotonic clock), or ``most``
        trials; return how many this worker ran."""
        ran = 0
        while most is None or ran < most:
            if deadline is not None and time.monotonic() >= deadline:
                self.log(f"wall time budget ({self.cfg.budget.wall_time_min:g} min) spent: no new trial")
                break
            fail_stale(self.study)
            limit = self.cfg.budget.trials
            trials = self.study.get_trials(deepcopy=False)
            waiting = any(t.state.name == "WAITING" for t in trials)  # e.g. a dead worker's trial, queued again
            if limit is not None and claimed(trials) >= limit and not waiting:
                break
            try:
                self.study.optimize(self.objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            except optuna_module().exceptions.UpdateFinishedTrialError as err:
                # Its heartbeat went stale while it ran (a stalled machine): another worker failed it and
                # queued it again; that retry counts, this result does not.
                self.log(f"a trial of this worker was given up as stale by another worker and queued again ({err})")
            ran += 1
        return ran


class _OverBudget(CompressorError):
    """A trial that started after the budget was spent (recorded as failed with ``over_budget``)."""


def deadline(cfg: SearchConfig, started: float) -> float | None:
    """When workers started at ``started`` (monotonic) stop starting trials: wall time counts per invocation."""
    return started + 60 * cfg.budget.wall_time_min if cfg.budget.wall_time_min is not None else None


def queued(study: Any) -> bool:
    return any(t.state.name == "WAITING" for t in study.get_trials(deepcopy=False))


def wait_for_running(study: Any, poll_s: float, log: Callable[[str], None]) -> None:
    """Wait until no trial of the study is running: other workers finish theirs, dead ones' are failed."""
    said = False
    while True:
        fail_stale(study)
        running = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
        if not running:
            return
        if not said:
            log(f"waiting for {len(running)} running trial(s) of other workers: {running}")
            said = True
        time.sleep(poll_s)
