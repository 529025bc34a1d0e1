"""What a report says, as data: benchmark rows of a run, the three-line answer, changes against a baseline.

A run folder is either a recipe run (``manifest.json`` whose benchmark stages hold the rows) or a
``compressor bench`` folder (``results.json`` with rows and target environments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import CompressorError
from compressor.metrics.names import headline_key
from compressor.metrics.names import label as metric_label
from compressor.metrics.stats import drop_interval

# Keys that identify "the same measurement" in two runs.
ROW_KEY = ("target", "stage", "format", "precision", "backend", "batch", "mode")


@dataclass
class RunData:
    """Rows, target environments and budget of one run folder."""

    folder: Path
    rows: list[dict[str, Any]]
    targets: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    budget: float = 1.0
    teacher: str | None = None
    environment: dict[str, Any] | None = None
    metric: str | None = None  # the accuracy the answer ranks by (embedding recipes: rank1 or map)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        msg = f"{path} is not valid JSON ({err}); {what}"
        raise CompressorError(msg) from err


def load_run(folder: Path) -> RunData:
    """Rows of a recipe run (manifest.json) or of a ``compressor bench`` folder (results.json)."""
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = _read_json(manifest_path, "rerun the recipe to rewrite it")
        rows: list[dict[str, Any]] = []
        targets: list[dict[str, Any]] = []
        budget, teacher = 1.0, None
        stage_cfgs = {s.get("name"): s for s in manifest.get("recipe", {}).get("stages", [])}
        for st in manifest.get("stages", []):
            if st.get("type") != "benchmark":
                continue
            metrics = st.get("metrics") or {}
            rows += [dict(r, bench_stage=st["name"]) for r in metrics.get("rows", [])]
            targets += metrics.get("targets", [])
            cfg = stage_cfgs.get(st["name"], {})
            budget = float(cfg.get("accuracy_budget", budget))
            teacher = cfg.get("teacher") or teacher
        mark_int8_vs_fp32(rows)
        recipe = manifest.get("recipe") or {}
        metric = (recipe.get("embedding") or {}).get("metric") if recipe.get("task") == "embedding" else None
        return RunData(folder, rows, targets, manifest, budget, teacher, manifest.get("environment"), metric)
    results_path = folder / "results.json"
    if results_path.is_file():
        doc = _read_json(results_path, "rerun 'compressor bench' to rewrite it")
        if "rows" not in doc:
            msg = f"{results_path} has no rows; pass a run folder written by 'compressor run' or 'compressor bench'"
            raise CompressorError(msg)
        mark_int8_vs_fp32(doc["rows"])
        return RunData(folder, doc["rows"], doc.get("targets", []), None, float(doc.get("accuracy_budget", 1.0)),
                       doc.get("teacher"), doc.get("environment"))
    msg = (f"{folder} has no manifest.json or results.json; pass the output folder of a run "
           "(default runs/<recipe name>) or of 'compressor bench'")
    raise CompressorError(msg)


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(k, "local" if k == "target" else "latency" if k == "mode" else None) for k in ROW_KEY)


def ok_latency_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measured latency-mode rows at each target's smallest batch (what the answer and the scatter use)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("mode", "latency") == "latency"
          and isinstance(r.get("median_ms"), int | float)]
    smallest: dict[str, int] = {}
    for r in ok:
        t = r.get("target", "local")
        smallest[t] = min(smallest.get(t, r["batch"]), r["batch"])
    return [r for r in ok if r["batch"] == smallest[r.get("target", "local")]]


def teacher_stage(run: RunData) -> str | None:
    if run.teacher:
        return run.teacher
    models = [r["stage"] for r in run.rows if r.get("format") == "model"]
    return models[0] if models else None


def accuracy_key(rows: list[dict[str, Any]]) -> str:
    """The accuracy the rows report: top1 for classifiers, rank1 (or map) for embedding models."""
    return headline_key(rows) or "top1"


# What makes two rows "the same runtime": where and how they were measured.
_SAME_RUNTIME = ("target", "backend", "batch", "mode", "device")


def _same_runtime(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in _SAME_RUNTIME) and a.get("format") == b.get("format")


def fp32_counterpart(row: dict[str, Any], rows: list[dict[str, Any]], source: str | None = None) -> dict[str, Any] | None:
    """The FP32 row measured in the same runtime (target, backend, batch, mode, device, format) as ``row``
    from the same PyTorch model (``source``: another model's id, e.g. the teacher's; default the row's own).
    Rows that do not record their source match only when they are the one FP32 row of that runtime."""
    want = source if source is not None else row.get("source")
    same = [r for r in rows if r is not row and r.get("status") == "ok" and r.get("precision") == "fp32"
            and isinstance(r.get("median_ms"), int | float) and _same_runtime(r, row)]
    if want is not None:
        mine = [r for r in same if r.get("source") == want]
        if mine or any(r.get("source") for r in same):
            return mine[0] if mine else None
    return same[0] if len(same) == 1 and source is None else None


def mark_int8_vs_fp32(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every measured INT8 row its FP32 counterpart in the same runtime (``fp32_stage``,
    ``fp32_median_ms``, ``int8_speedup``) and ``slower_than_fp32`` when INT8 is slower: a slower INT8 model
    is never shipped silently (the tables mark it, as Ultralytics marks a failed format). Returns the rows
    marked slower."""
    slower = []
    for r in rows:
        if r.get("precision") != "int8" or r.get("status") != "ok" or not isinstance(r.get("median_ms"), int | float):
            continue
        if r.get("emulated"):
            continue  # emulated latencies are never judged
        ref = fp32_counterpart(r, rows)
        if ref is None or not r["median_ms"]:
            continue
        r["fp32_stage"], r["fp32_median_ms"] = ref["stage"], ref["median_ms"]
        r["int8_speedup"] = round(ref["median_ms"] / r["median_ms"], 2)
        r["slower_than_fp32"] = r["median_ms"] > ref["median_ms"]
        if r["slower_than_fp32"]:
            slower.append(r)
    return slower


def answer(run: RunData, budget: float | None = None) -> dict[str, Any]:
    """Per native target: the fastest row within the accuracy budget, its speed-up and accuracy loss."""
    budget = run.budget if budget is None else budget
    teacher = teacher_stage(run)
    rows = ok_latency_rows(run.rows)
    key = run.metric or accuracy_key(rows)
    teacher_rows = [r for r in rows if r["stage"] == teacher and r.get(key) is not None]
    teacher_top1 = teacher_rows[0][key] if teacher_rows else None
    per_target: dict[str, dict[str, Any]] = {}
    for target in dict.fromkeys(r.get("target", "local") for r in rows):
        mine = [r for r in rows if r.get("target", "local") == target]
        if any(r.get("emulated") for r in mine):
            per_target[target] = {"emulated": True}
            continue
        ref = next((r for r in mine if r["stage"] == teacher), None)
        top1_ref = ref[key] if ref and ref.get(key) is not None else teacher_top1
        if top1_ref is None:
            keep = mine
        else:
            keep = [r for r in mine if r.get(key) is not None and r[key] >= top1_ref - budget]
        if not keep:
            per_target[target] = {"none": True, "teacher_top1": top1_ref}
            continue
        best = min(keep, key=lambda r: r["median_ms"])
        entry: dict[str, Any] = {"row": best, "teacher_top1": top1_ref}
        if ref is not None and best["median_ms"]:
            entry["speedup"] = round(ref["median_ms"] / best["median_ms"], 2)
            entry["teacher_ms"] = ref["median_ms"]
        if ref is not None and best["median_ms"] and best.get("format") != "model":
            # the teacher exported to the winner's runtime, FP32: what the compression itself bought there
            own = best.get("precision") == "fp32" and best.get("source") and best.get("source") == ref.get("source")
            twin = best if own else fp32_counterpart(best, rows, source=ref.get("source") or "")
            if twin is not None:
                entry.update(runtime_speedup=round(twin["median_ms"] / best["median_ms"], 2),
                             runtime_teacher_ms=twin["median_ms"], runtime_teacher_stage=twin["stage"])
        if top1_ref is not None and best.get(key) is not None:
            entry["loss_pt"] = round(top1_ref - best[key], 2)
            reference = ref or (teacher_rows[0] if teacher_rows else None)
            interval = drop_interval(reference, best, key) if reference is not None else None
            if interval is not None:  # on the same images: the gates' paired interval
                entry["loss_ci"] = [round(interval.low, 2), round(interval.high, 2)]
                entry["loss_n"] = interval.n
        per_target[target] = entry
    slower = [r for r in run.rows if r.get("slower_than_fp32")]
    return {"budget": budget, "teacher": teacher, "targets": per_target, "metric": key, "int8_slower": slower}


def _what(row: dict[str, Any]) -> str:
    return f"`{row['stage']}` ({row['format']} {row['precision']}, {row['backend']}, batch {row['batch']})"


def answer_lines(ans: dict[str, Any]) -> list[str]:
    """The three lines a report opens with."""
    fastest, speed, loss = [], [], []
    key = ans.get("metric", "top1")
    label = metric_label(key)
    for target, e in ans["targets"].items():
        if e.get("emulated"):
            fastest.append(f"{target}: emulated, latency not ranked")
            continue
        if e.get("none"):
            fastest.append(f"{target}: no artifact within the budget")
            continue
        r = e["row"]
        fastest.append(f"{target}: {_what(r)} at {r['median_ms']:.3f} ms")
        speed.append(_speed_text(target, e, r))
        spread = (f" ± {(e['loss_ci'][1] - e['loss_ci'][0]) / 2:.2f}, 95% over {e['loss_n']}"
                  if "loss_ci" in e else "")
        loss.append(f"{target} {e['loss_pt']:+.2f} pt ({e['teacher_top1']:.2f} → {r[key]:.2f}{spread})"
                    if "loss_pt" in e else f"{target}: no accuracy measured")
    teacher = ans["teacher"] or "none found"
    slower = [f"`{r['stage']}` ({r['format']}, {r['backend']}, batch {r['batch']}) {r['int8_speedup']:.2f}x vs "
              f"`{r['fp32_stage']}` ({r['fp32_median_ms']:.3f} → {r['median_ms']:.3f} ms)"
              for r in ans.get("int8_slower", [])]
    extra = ["4. **❎ INT8 slower than its FP32 in the same runtime:** " + "; ".join(slower)] if slower else []
    return [
        f"1. **Fastest within the accuracy budget** ({label} at most {ans['budget']:g} pt below teacher "
        f"`{teacher}`): " + ("; ".join(fastest) or "no measured rows"),
        "2. **Speed-up over the teacher:** " + ("; ".join(speed) or "-"),
        "3. **Accuracy loss:** " + ("; ".join(loss) or "-"),
        *extra,
    ]


def _speed_text(target: str, e: dict[str, Any], r: dict[str, Any]) -> str:
    """Both speed-ups: over the teacher in PyTorch eager, and over the teacher exported FP32 to the same runtime."""
    if "speedup" not in e:
        return f"{target}: teacher not measured there"
    text = f"{target} {e['speedup']:.2f}x over PyTorch eager ({e['teacher_ms']:.3f} → {r['median_ms']:.3f} ms)"
    if r.get("format") == "model":
        return text
    if "runtime_speedup" in e:
        return (text + f", {e['runtime_speedup']:.2f}x over the teacher's FP32 {r['backend']} "
                f"`{e['runtime_teacher_stage']}` ({e['runtime_teacher_ms']:.3f} → {r['median_ms']:.3f} ms)")
    return text + f", teacher's FP32 {r['backend']} not measured (add its export to the benchmark inputs)"


def compare(rows: list[dict[str, Any]], baseline: list[dict[str, Any]], latency_tol_pct: float,
            accuracy_tol_pt: float) -> list[dict[str, Any]]:
    """Matched rows with their changes; ``regression`` names what got worse beyond the tolerances."""
    base = {row_key(r): r for r in baseline if r.get("status") == "ok"}
    changes = []
    for r in rows:
        b = base.get(row_key(r))
        if r.get("status") != "ok" or b is None:
            continue
        c: dict[str, Any] = {k: r.get(k) for k in ROW_KEY}
        c["emulated"] = bool(r.get("emulated"))
        reasons = []
        if isinstance(r.get("median_ms"), int | float) and b.get("median_ms"):
            c["median_ms"], c["baseline_median_ms"] = r["median_ms"], b["median_ms"]
            c["median_change_pct"] = round((r["median_ms"] / b["median_ms"] - 1) * 100, 1)
            if not c["emulated"] and c["median_change_pct"] > latency_tol_pct:
                reasons.append(f"median {c['median_change_pct']:+.1f}% (> {latency_tol_pct:g}%)")
        if r.get("top1") is not None and b.get("top1") is not None:
            c["top1"], c["baseline_top1"] = r["top1"], b["top1"]
            c["top1_change_pt"] = round(r["top1"] - b["top1"], 2)
            if -c["top1_change_pt"] > accuracy_tol_pt:
                reasons.append(f"top-1 {c['top1_change_pt']:+.2f} pt (> {accuracy_tol_pt:g} pt drop)")
        if r.get("size_bytes") and b.get("size_bytes"):
            c["size_change_pct"] = round((r["size_bytes"] / b["size_bytes"] - 1) * 100, 1)
        c["regression"] = "; ".join(reasons) or None
        changes.append(c)
    return changes


def comparison_table(changes: list[dict[str, Any]]) -> str:
    head = "| target | stage | format | precision | backend | batch | mode | median ms (baseline → now) | top-1 (baseline → now) | size | flag |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def pair(c: dict[str, Any], a: str, b: str, d: str, fmt: str, unit: str) -> str:
        if c.get(a) is None:
            return "-"
        return f"{c[a]:{fmt}} → {c[b]:{fmt}} ({c[d]:+.1f}{unit})"

    for c in changes:
        flag = f"**REGRESSION**: {c['regression']}" if c["regression"] else "ok"
        if c["emulated"]:
            flag += " (emulated latency not judged)"
        size = f"{c['size_change_pct']:+.1f}%" if c.get("size_change_pct") is not None else "-"
        lines.append(
            f"| {c['target']} | {c['stage']} | {c['format']} | {c['precision']} | {c['backend']} | {c['batch']} | "
            f"{c['mode']} | {pair(c, 'baseline_median_ms', 'median_ms', 'median_change_pct', '.3f', '%')} | "
            f"{pair(c, 'baseline_top1', 'top1', 'top1_change_pt', '.2f', ' pt')} | {size} | {flag} |")
    return "\n".join(lines) + "\n"


def target_lines(targets: list[dict[str, Any]]) -> list[str]:
    """One line per target: CPU (architecture, model, features), runtimes, threads, cores, or why not run."""
    lines = []
    for t in targets:
        env = t.get("environment") or {}
        cpu = env.get("cpu") or {}
        label = f"**{t['target']}** ({t['type']}{', emulated' if t.get('emulated') else ''})"
        if not env:
            lines.append(f"- {label}: {t.get('note') or 'not run'}")
            continue
        runtimes = ", ".join(f"{k} {v}" for k, v in (env.get("runtimes") or {}).items()) or "none"
        lines.append(
            f"- {label}: {cpu.get('arch')} {cpu.get('model')}, {cpu.get('usable_cores')} usable cores, "
            f"features: {', '.join(cpu.get('features') or []) or 'none detected'}; Python {env.get('python')}; "
            f"runtimes: {runtimes}; threads {env.get('threads') or 'default'}, cores {env.get('cores') or 'all'}")
    return lines
