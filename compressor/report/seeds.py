"""Runs of one recipe under several seeds: each artifact's metrics as mean ± standard deviation."""

from __future__ import annotations

import math
from typing import Any

ROW_METRICS = ("top1", "top5", "rank1", "rank5", "map", "median_ms", "p90_ms")
ROW_KEY = ("bench", "stage", "format", "precision", "backend", "batch", "target", "mode")
_SKIP = {"seconds", "images", "epochs", "rows", "classes", "params", "batch", "iterations", "epochs_run",
         "resumed_from_epoch", "opset", "verify_images", "eval_images"}


def _spread(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def seed_summary(manifests: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation (n - 1) and per-seed values of every benchmark row's accuracy and
    latency, and of every numeric top-level metric of the other stages, over the seeds' manifests."""
    collected: dict[tuple[Any, ...], dict[int, float]] = {}
    order: list[tuple[Any, ...]] = []

    def put(key: tuple[Any, ...], seed: int, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
            return
        if key not in collected:
            collected[key] = {}
            order.append(key)
        collected[key][seed] = float(value)

    for seed, manifest in manifests.items():
        for st in manifest.get("stages", []):
            metrics = st.get("metrics") or {}
            if st.get("type") == "benchmark":
                for row in metrics.get("rows") or []:
                    if not isinstance(row, dict) or row.get("status") != "ok":
                        continue
                    where = " ".join(str(row.get(k) or "local" if k == "target" else row.get(k, "-"))
                                     for k in ROW_KEY[2:])
                    for metric in ROW_METRICS:
                        put(("row", row["stage"], f"{st['name']}: {where}", metric), seed, row.get(metric))
            else:
                for metric, value in metrics.items():
                    if metric not in _SKIP:
                        put(("stage", st["name"], st.get("type", ""), metric), seed, value)
    entries = []
    for key in order:
        values = collected[key]
        mean, sd = _spread(list(values.values()))
        entries.append({"kind": key[0], "stage": key[1], "where": key[2], "metric": key[3],
                        "mean": round(mean, 4), "std": round(sd, 4), "seeds": len(values),
                        "values": {str(s): v for s, v in values.items()}})
    return {"seeds": sorted(manifests), "entries": entries}


def seeds_table(summary: dict[str, Any]) -> str:
    """Markdown: one line per artifact and metric, mean ± sd and the per-seed values."""
    seeds = summary["seeds"]
    head = "| stage | measured on | metric | mean ± sd | " + " | ".join(f"seed {s}" for s in seeds) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in summary["entries"]:
        cells = [f"{e['values'][str(s)]:.4g}" if str(s) in e["values"] else "-" for s in seeds]
        lines.append(f"| {e['stage']} | {e['where']} | {e['metric']} | {e['mean']:.4g} ± {e['std']:.2g} | "
                     + " | ".join(cells) + " |")
    return f"Over {len(seeds)} seeds ({', '.join(map(str, seeds))}); sd with n - 1.\n\n" + "\n".join(lines) + "\n"
