"""The search's report: search.json (every trial), search.md (tables), pareto.png, and best.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compressor.core.artifacts import write_text
from compressor.recipe import Recipe, validate_document
from compressor.report.plots import pyplot
from compressor.search import results, space
from compressor.search_config import SearchConfig

UNITS = {"accuracy": "%", "latency": "ms", "size": "MB"}


def objective_labels(cfg: SearchConfig, metric: str) -> dict[str, str]:
    labels = {}
    if cfg.objectives.accuracy is not None:
        labels["accuracy"] = f"{metric} %"
    if (lat := cfg.objectives.latency) is not None:
        labels["latency"] = f"{lat.statistic} ms ({lat.target}, batch {lat.batch})"
    if cfg.objectives.size is not None:
        labels["size"] = "size MB"
    return labels


def _value(row: dict[str, Any], name: str) -> str:
    value = row["metrics"].get(name)
    if value is None:
        return "-"
    return f"{value / 1e6:.3f}" if name == "size" else f"{value:.2f}" if name == "accuracy" else f"{value:.3f}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _options(row: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('stages.')}={_short(v)}" for k, v in row["options"].items()) or "(recipe as written)"


def _table(rows: list[dict[str, Any]], labels: dict[str, str], with_status: bool) -> str:
    header = ["trial", "options", *labels.values(), "constraints"] + (["status", "reused stages", "note"] if with_status else [])
    body = []
    for r in rows:
        ok = "-" if r["feasible"] is None else "met" if r["feasible"] else "missed: " + ", ".join(
            f"{c['gate']} ({c['measured']})" for c in results.failed_constraints(r))
        line = [f"{r['trial']}" + (" (recipe)" if r["baseline"] else ""), _options(r),
                *(_value(r, n) for n in labels), ok]
        if with_status:
            line += [r["status"], ", ".join(r["reused"]) or "-", str(r["note"])[:160]]
        body.append(line)
    return table(header, body)


def pareto_plot(rows: list[dict[str, Any]], front: list[dict[str, Any]], chosen: dict[str, Any] | None,
                labels: dict[str, str], path: Path) -> Path | None:
    """Accuracy against latency (or the first two objectives) of every finished trial, the front joined."""
    names = list(labels)
    if len(names) < 2:
        return None
    x_name, y_name = ("latency", "accuracy") if {"latency", "accuracy"} <= set(names) else (names[1], names[0])
    scale = {"size": 1e-6}
    done = [r for r in rows if x_name in r["metrics"] and y_name in r["metrics"]]
    if not done:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))

    def xy(r: dict[str, Any]) -> tuple[float, float]:
        return r["metrics"][x_name] * scale.get(x_name, 1), r["metrics"][y_name] * scale.get(y_name, 1)

    for r in done:
        ax.scatter(*xy(r), s=40, zorder=3, color="tab:blue" if r["feasible"] is not False else "lightgrey",
                   edgecolors="black" if r["baseline"] else "none")
        ax.annotate(str(r["trial"]), xy(r), textcoords="offset points", xytext=(4, 4), fontsize=7)
    pts = sorted(xy(r) for r in front)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "--o", color="tab:red", label="Pareto front", zorder=4)
    if chosen is not None:
        ax.scatter(*xy(chosen), marker="*", s=250, color="gold", edgecolors="black", zorder=5, label="best.yaml")
    ax.set_xlabel(labels[x_name])
    ax.set_ylabel(labels[y_name])
    ax.set_title("search trials (grey: a constraint missed; black edge: the recipe as written)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def best_document(doc: dict[str, Any], recipe: Recipe, cfg: SearchConfig, row: dict[str, Any],
                  cache_dir: Path) -> dict[str, Any]:
    """A plain recipe of the chosen plan: its options written in, no search section, the constraints as
    its gates when the recipe has none, and the search's stage cache, so that running it reuses the trial."""
    best = space.apply(doc, row["options"])
    best.pop("search", None)
    best.pop("output", None)
    best = {"name": f"{recipe.name}-best", **{k: v for k, v in best.items() if k != "name"}}
    best["cache_dir"] = str(cache_dir.resolve())
    if best.get("gates") is None and cfg.constraints:
        teacher = cfg.teacher or (recipe.gates.teacher if recipe.gates is not None else None)
        best["gates"] = {**({"teacher": teacher} if teacher else {}),
                         "checks": [c.model_dump(mode="json", exclude_none=True) for c in cfg.constraints]}
    return best


def write_best(path: Path, best: dict[str, Any], row: dict[str, Any], labels: dict[str, str]) -> Path:
    validate_document(best, str(path))  # what compressor run and compressor release will read
    measured = ", ".join(f"{labels[n]} {_value(row, n)}" for n in labels)
    header = (f"# The plan compressor search chose: trial {row['trial']} ({measured}).\n"
              "# A plain recipe: compressor run / compressor release take it as it is. cache_dir points at the\n"
              "# search's stage cache, so its stages are reused; remove that line to start from nothing.\n")
    write_text(path, header + yaml.safe_dump(best, sort_keys=False))
    return path


def table(header: list[str], body: list[list[str]]) -> str:
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in line] for line in body]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(line) + " |" for line in cells]) + "\n"


def _constraint_lines(row: dict[str, Any]) -> str:
    body = [[c["gate"], c["artifact"], c["measured_on"], c["threshold"], c["measured"], c["status"].upper()]
            for c in row["constraints"]]
    return table(["constraint", "artifact", "measured on", "threshold", "measured", "result"], body)


def no_plan_message(rows: list[dict[str, Any]], cfg: SearchConfig, nearest: dict[str, Any] | None,
                    report_path: Path) -> str:
    done = len(results.complete(rows, cfg))
    if nearest is None:
        return (f"no trial finished ({len(rows)} started; see {report_path} for their errors), so no plan "
                "was chosen and best.yaml was not written")
    missed: dict[str, int] = {}
    for r in results.complete(rows, cfg):
        for c in results.failed_constraints(r):
            missed[f"{c['gate']} ({c['threshold']})"] = missed.get(f"{c['gate']} ({c['threshold']})", 0) + 1
    worst = ", ".join(f"{k} missed by {v} of {done} finished trial(s)" for k, v in missed.items())
    near = "; ".join(f"{c['gate']} {c['threshold']}: measured {c['measured']}" for c in results.failed_constraints(nearest))
    return (f"no trial meets every constraint ({worst}); the closest is trial {nearest['trial']} "
            f"({_options(nearest)}: {near}); best.yaml was not written, see {report_path}")


def _versus_base(base: dict[str, Any], beaten_by: list[dict[str, Any]], labels: dict[str, str]) -> str:
    """Which trials dominate the recipe as written, and whether beyond the noise (95% intervals)."""
    written = (f"The recipe as written (trial {base['trial']}: "
               + ", ".join(f"{labels[n]} {_value(base, n)}" for n in labels) + ")")
    if not beaten_by:
        return f"No trial dominates the recipe as written (trial {base['trial']}).\n"
    sure = [r for r in beaten_by if r["beyond_noise"]]
    lines = [f"{written} is dominated by trial(s) {', '.join(str(r['trial']) for r in beaten_by)} on the "
             "measured values; "
             + (f"beyond the noise (95% intervals: paired on the same images for accuracy, bootstrap for "
                f"latency) by trial(s) {', '.join(str(r['trial']) for r in sure)}." if sure
                else "by none beyond the noise (95% intervals): the differences are within what the "
                     "validation images and the timing samples can tell apart."), ""]
    for r in beaten_by:
        lines.append(f"- trial {r['trial']}: " + ", ".join(
            f"{labels[n]} {_value(r, n)} ({r['versus_base'][n]})" for n in labels))
    return "\n".join(lines) + "\n"


def markdown(summary: dict[str, Any], rows: list[dict[str, Any]], front: list[dict[str, Any]],
             chosen: dict[str, Any] | None, nearest: dict[str, Any] | None, base: dict[str, Any] | None,
             beaten_by: list[dict[str, Any]], labels: dict[str, str], cfg: SearchConfig,
             plot: Path | None) -> str:
    counts = ", ".join(f"{v} {k}" for k, v in summary["counts"].items())
    out = [f"# Search: {summary['recipe']}\n",
           f"Study `{summary['study']}` in `{summary['storage']}`; objectives: "
           + ", ".join(f"{labels[n]} ({'max' if d == 'maximize' else 'min'})"
                       for n, d in zip(labels, summary["directions"], strict=True))
           + f"; trials: {counts}; stage cache `{summary['cache_dir']}`.\n"]
    if chosen is not None:
        out.append(f"**Chosen ({cfg.choose.replace('_', ' ')} of the front, within the constraints): trial {chosen['trial']}** "
                   f"({_options(chosen)}): " + ", ".join(f"{labels[n]} {_value(chosen, n)}" for n in labels)
                   + f". Recipe: `{summary['best_yaml']}`.\n")
    else:
        out.append("**No trial meets every constraint.**"
                   + (f" The closest is trial {nearest['trial']} ({_options(nearest)}):\n\n{_constraint_lines(nearest)}"
                      if nearest is not None else " No trial finished.\n"))
    if base is not None:
        out.append(_versus_base(base, beaten_by, labels))
    out.append("## Pareto front\n")
    out.append(("Among the trials that meet every constraint.\n\n" if any(r["feasible"] for r in front)
                else "No trial meets every constraint: the front of all finished trials.\n\n")
               + _table(front, labels, with_status=False))
    if plot is not None:
        out.append(f"![Pareto front]({plot.name})\n")
    out.append("## Every trial\n")
    out.append(_table(rows, labels, with_status=True))
    if chosen is not None and chosen["constraints"]:
        out.append(f"## Constraints of trial {chosen['trial']}\n")
        out.append(_constraint_lines(chosen))
    out.append("Cache keys, stage by stage, and each trial's run folder are in search.json.\n")
    return "\n".join(out)
