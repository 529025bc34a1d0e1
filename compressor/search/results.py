"""From the study's trials to answers: one row per trial, the Pareto front, the chosen plan, best.yaml."""

from __future__ import annotations

from typing import Any

from compressor.search import space
from compressor.search_config import SearchConfig

STATUS = {"COMPLETE": "complete", "PRUNED": "stopped early", "FAIL": "failed", "RUNNING": "running",
          "WAITING": "queued"}


def trial_rows(trials: list[Any], cfg: SearchConfig) -> list[dict[str, Any]]:
    """Every trial as a plain row (trials that found the budget spent when they started are left out)."""
    # a retry's history ends with the trial it replaces (a chain of deaths: 1 -> 3 -> 5)
    retried_as = {int(t.system_attrs["retry_history"][-1]): t.number for t in trials
                  if t.system_attrs.get("retry_history")}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        if attrs.get("over_budget"):
            continue
        status = STATUS.get(t.state.name, t.state.name.lower())
        note = attrs.get("error") or attrs.get("stopped") or ""
        if t.state.name == "FAIL" and "error" not in attrs:
            later = retried_as.get(t.number)
            status = "worker died"
            note = f"queued again as trial {later}" if later is not None else "not queued again (max_retry spent)"
        rows.append({
            "trial": t.number, "status": status, "state": t.state.name,
            "options": attrs.get("options") or {k: _decoded(cfg, k, v) for k, v in t.params.items()},
            "metrics": attrs.get("metrics") or {}, "feasible": attrs.get("feasible"),
            "violations": attrs.get("violations"), "constraints": attrs.get("constraints") or [],
            "progress": attrs.get("progress") or {}, "keys": attrs.get("keys") or {},
            "reused": attrs.get("reused") or [], "seconds": attrs.get("seconds"), "worker": attrs.get("worker"),
            "baseline": bool(attrs.get("baseline")), "retry_of": t.system_attrs.get("failed_trial"),
            "note": note, "run_dir": attrs.get("run_dir"),
        })
    return rows


def _decoded(cfg: SearchConfig, path: str, value: Any) -> Any:
    dim = cfg.space.get(path)
    return space.decode(dim, value) if dim is not None and dim.choice is not None else value


def _signed(cfg: SearchConfig, row: dict[str, Any]) -> tuple[float, ...]:
    """Objective values turned so that smaller is better."""
    return tuple(-row["metrics"][n] if n == "accuracy" else row["metrics"][n] for n in cfg.objectives.names())


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def complete(rows: list[dict[str, Any]], cfg: SearchConfig) -> list[dict[str, Any]]:
    names = cfg.objectives.names()
    return [r for r in rows if r["state"] == "COMPLETE" and all(n in r["metrics"] for n in names)]


def pareto_front(rows: list[dict[str, Any]], cfg: SearchConfig) -> list[dict[str, Any]]:
    """Trials no other trial beats on every objective: among those meeting the constraints when any do."""
    done = complete(rows, cfg)
    pool = [r for r in done if r["feasible"]] or done
    front = [r for r in pool if not any(dominates(_signed(cfg, o), _signed(cfg, r)) for o in pool if o is not r)]
    first = cfg.objectives.names()[0]
    return sorted(front, key=lambda r: _signed(cfg, r)[cfg.objectives.names().index(first)])


def choose(rows: list[dict[str, Any]], cfg: SearchConfig) -> dict[str, Any] | None:
    """The plan best.yaml holds: by ``cfg.choose`` among the trials that meet every constraint."""
    feasible = [r for r in complete(rows, cfg) if r["feasible"]]
    if not feasible:
        return None
    m = lambda r, n: r["metrics"].get(n, 0.0)  # noqa: E731 - a missing objective does not rank
    keys = {
        "most_accurate": lambda r: (-m(r, "accuracy"), m(r, "latency"), m(r, "size"), r["trial"]),
        "fastest": lambda r: (m(r, "latency"), -m(r, "accuracy"), m(r, "size"), r["trial"]),
        "smallest": lambda r: (m(r, "size"), -m(r, "accuracy"), m(r, "latency"), r["trial"]),
    }
    return min(feasible, key=keys[cfg.choose])


def closest(rows: list[dict[str, Any]], cfg: SearchConfig) -> dict[str, Any] | None:
    """The finished trial that misses the constraints by the least (sum of relative misses)."""
    done = [r for r in complete(rows, cfg) if r["violations"] is not None]
    return min(done, key=lambda r: (sum(r["violations"]), r["trial"])) if done else None


def failed_constraints(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in row["constraints"] if c.get("status") == "fail"]


def dominating(rows: list[dict[str, Any]], cfg: SearchConfig, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished trials that beat ``base`` on one objective and lose on none."""
    return [r for r in complete(rows, cfg) if r is not base and dominates(_signed(cfg, r), _signed(cfg, base))]
