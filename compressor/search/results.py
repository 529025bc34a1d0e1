"""From the study's trials to answers: one row per trial, the Pareto front, the chosen plan, best.yaml."""

from __future__ import annotations

from typing import Any

from compressor.metrics.stats import drop_interval, latency_interval
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
            "metrics": attrs.get("metrics") or {}, "evidence": attrs.get("evidence") or {}, "feasible": attrs.get("feasible"),
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


def compare(a: dict[str, Any], b: dict[str, Any], cfg: SearchConfig) -> dict[str, str]:
    """Per objective, whether trial ``a`` is ``better``, ``worse`` or ``level`` with trial ``b`` beyond the
    noise, by the machinery the gates use: accuracy by the 95% interval of the difference on the same images
    (paired; unpaired from the image counts when the outcomes were not recorded), latency by the bootstrap
    intervals of the statistic (disjoint intervals differ), size exactly. An objective without an interval
    on either side is compared on its values."""
    out: dict[str, str] = {}
    for name in cfg.objectives.names():
        mine, theirs = a["metrics"][name], b["metrics"][name]
        sign = -1.0 if name == "accuracy" else 1.0  # smaller is better after the sign
        verdict = "better" if sign * mine < sign * theirs else "worse" if sign * mine > sign * theirs else "level"
        ev_a, ev_b = a.get("evidence", {}).get(name), b.get("evidence", {}).get(name)
        if name == "accuracy" and ev_a and ev_b and ev_a.get("metric") == ev_b.get("metric"):
            iv = drop_interval(ev_b, ev_a, str(ev_a["metric"]))  # b - a, in points
            if iv is not None:
                verdict = "better" if iv.high < 0 else "worse" if iv.low > 0 else "level"
        elif name == "latency" and ev_a and ev_b and ev_a.get("statistic") == ev_b.get("statistic"):
            ia, ib = latency_interval(ev_a, str(ev_a["statistic"])), latency_interval(ev_b, str(ev_b["statistic"]))
            if ia is not None and ib is not None:
                verdict = "better" if ia.high < ib.low else "worse" if ia.low > ib.high else "level"
        out[name] = verdict
    return out


def _beats(verdicts: dict[str, str]) -> bool:
    return "worse" not in verdicts.values() and "better" in verdicts.values()


def beats(a: dict[str, Any], b: dict[str, Any], cfg: SearchConfig) -> bool:
    """``a`` dominates ``b`` beyond the noise: better on one objective and worse on none, by :func:`compare`."""
    return _beats(compare(a, b, cfg))


def complete(rows: list[dict[str, Any]], cfg: SearchConfig) -> list[dict[str, Any]]:
    names = cfg.objectives.names()
    return [r for r in rows if r["state"] == "COMPLETE" and all(n in r["metrics"] for n in names)]


def pareto_front(rows: list[dict[str, Any]], cfg: SearchConfig) -> list[dict[str, Any]]:
    """Trials no other trial beats beyond the noise (:func:`beats`): among those meeting the constraints
    when any do. A trial that others beat only on point estimates stays on the front."""
    done = complete(rows, cfg)
    pool = [r for r in done if r["feasible"]] or done
    front = [r for r in pool if not any(beats(o, r, cfg) for o in pool if o is not r)]
    first = cfg.objectives.names()[0]
    return sorted(front, key=lambda r: _signed(cfg, r)[cfg.objectives.names().index(first)])


def choose(rows: list[dict[str, Any]], cfg: SearchConfig, front: list[dict[str, Any]] | None = None,
           ) -> dict[str, Any] | None:
    """The plan best.yaml holds: by ``cfg.choose`` among the trials that meet every constraint and that no
    other such trial beats beyond the noise (the front), so a plan only a point estimate ahead of a
    faster one is not chosen on noise."""
    if not any(r["feasible"] for r in complete(rows, cfg)):
        return None
    feasible = pareto_front(rows, cfg) if front is None else front  # of the feasible trials, as some are
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
    """Finished trials that beat ``base`` on one objective and lose on none, on their values; each row's
    ``beyond_noise`` says whether it also does so beyond the noise, and ``versus_base`` how, per objective."""
    out = []
    for r in complete(rows, cfg):
        if r is not base and dominates(_signed(cfg, r), _signed(cfg, base)):
            verdicts = compare(r, base, cfg)
            out.append({**r, "beyond_noise": _beats(verdicts), "versus_base": verdicts})
    return out
