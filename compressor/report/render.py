"""The report of a run: report.md, report.html, results.json and PNG figures, rendered from the run's
manifest (or a ``compressor bench`` folder's results.json), so it can be regenerated at any time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.core.artifacts import write_json, write_text
from compressor.report.data import (
    RunData,
    answer,
    answer_lines,
    compare,
    comparison_table,
    load_run,
    target_lines,
)


def _fmt_int(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def headline(stage: dict[str, Any]) -> str:
    m = stage.get("metrics") or {}
    parts = []
    for key, label in (("val_top1", "val top-1"), ("top1", "top-1"), ("top5", "top-5"),
                       ("val_rank1", "val rank-1"), ("val_map", "val mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"),
                       ("map", "mAP"), ("int8_rank1", "INT8 rank-1"), ("int8_map", "INT8 mAP"),
                       ("top1_agreement", "agreement %"), ("mean_cosine", "mean cosine"),
                       ("max_abs_error", "max abs err")):
        if isinstance(m.get(key), int | float):
            parts.append(f"{label} {m[key]:.4g}" if key in ("max_abs_error", "mean_cosine") else f"{label} {m[key]:.2f}")
    drop = m.get("drop_interval")
    if isinstance(drop, dict) and drop.get("value") is not None:
        half = (drop["high"] - drop["low"]) / 2
        parts.append(f"drop vs FP32 {drop['value']:+.2f} ± {half:.2f} pt (95%, {drop['n']} paired)")
    meta = stage.get("artifact", {}).get("meta", {})
    if stage.get("artifact", {}).get("kind") == "model" and meta.get("macs"):
        parts.append(f"MACs {_fmt_int(meta['macs'])}, params {_fmt_int(meta.get('params'))}")
    return "; ".join(parts) or "-"


def render(manifest: dict[str, Any], opening: list[str] | None = None) -> str:
    env = manifest["environment"]
    cpu = env["cpu"]
    recipe = manifest["recipe"]
    lines = [f"# compressor report: {recipe['name']}", ""]
    if opening:
        lines += [*opening, ""]
    lines += [
        f"Status: **{manifest['status']}**, updated {manifest['updated']}, recipe `{manifest['recipe_file']}`.",
        "",
        "## Environment",
        "",
        f"- CPU: {cpu['model']} ({cpu['arch']}), {cpu['usable_cores']} usable cores; features: "
        f"{', '.join(cpu['features']) or 'none detected'}; INT8: {cpu['int8_dot_product']}"
        + "".join(f"; **{k}={v}** (runtimes capped below the CPU's own instruction set)"
                  for k, v in cpu.get("isa_caps", {}).items()),
        f"- Threads: {env['threads']}; device: {env.get('device')}; GPU: {env.get('cuda') or 'none'}",
        f"- Python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
        "",
    ]
    data = manifest.get("data")
    if data:
        pre = data["preprocess"]
        lines += [
            "## Data",
            "",
            f"- {data['source']} at `{data['path']}`: {len(data['classes'])} classes, "
            f"{data['train_images']} train / {data['val_images']} val images, "
            f"{data['skipped_images']} undecodable skipped",
            f"- Preprocessing: input {data['input_shape']}, resize {pre.get('resize')}, crop {pre.get('crop')}, "
            f"mean {pre['mean']}, std {pre['std']}",
            "",
        ]
    lines += ["## Stages", "", "| stage | type | cache key | time | result |", "|---|---|---|---|---|"]
    for st in manifest["stages"]:
        when = "reused" if st["reused"] else f"{st['seconds']:.1f} s"
        lines.append(f"| {st['name']} | {st['type']} | `{st['key'][:12]}` | {when} | {headline(st)} |")
    lines.append("")
    for st in manifest["stages"]:
        rows = (st.get("metrics") or {}).get("rows")
        if st["type"] == "benchmark" and rows:
            from compressor.report.tables import markdown_table

            lines += [f"## Benchmark: {st['name']}", "", markdown_table(rows)]
    if manifest.get("error"):
        lines += ["## Error", "", f"```\n{manifest['error']}\n```", ""]
    return "\n".join(lines) + "\n"


def _bench_render(run: RunData, opening: list[str]) -> str:
    from compressor.report.tables import markdown_table

    env = run.environment or {}
    lines = [f"# compressor bench report: {run.folder.name}", "", *opening, ""]
    if env:
        lines += ["## Harness", "", f"- Python {env.get('python')}; "
                  + ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items()), ""]
    lines += ["## Results", "", markdown_table(run.rows)]
    return "\n".join(lines) + "\n"


def _extra_sections(run: RunData, figures: list[Path], changes: list[dict[str, Any]] | None,
                    baseline_dir: Path | None, tolerances: tuple[float, float]) -> list[str]:
    lines: list[str] = []
    if run.targets:
        lines += ["## Targets", "", *target_lines(run.targets),
                  "", "Emulated latencies come from qemu user-mode emulation: they check that the artifact runs "
                  "and agrees on ARM kernels, and are never compared with native latencies.", ""]
    if changes is not None and baseline_dir is not None:
        flagged = [c for c in changes if c["regression"]]
        lines += [f"## Changes against {baseline_dir}", "",
                  f"Tolerances: median latency +{tolerances[0]:g}%, top-1 -{tolerances[1]:g} pt. "
                  f"**{len(flagged)} regression(s)** in {len(changes)} matched rows.", "",
                  comparison_table(changes) if changes else "No rows match the baseline.\n"]
    if figures:
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    return lines


def markdown_to_html(markdown: str, title: str) -> str:
    """The small Markdown subset reports use (headings, lists, tables, images, bold, code) as HTML."""
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2" style="max-width:100%">', text)
        text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)

    out: list[str] = []
    table: list[str] = []
    items: list[str] = []
    code = False
    def flush() -> None:
        if table:
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in table if not set(r) <= set("|-: ")]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells[0]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
                       + "</table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in markdown.splitlines():
        if line.startswith("```"):
            flush()
            out.append("</pre>" if code else "<pre>")
            code = not code
        elif code:
            out.append(html.escape(line))
        elif line.startswith("|"):
            table.append(line)
        elif line.startswith("- "):
            items.append(line[2:])
        else:
            flush()
            if line.startswith("#"):
                level = len(line) - len(line.lstrip("#"))
                out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
            elif line.strip():
                out.append(f"<p>{inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}th{background:#eee}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_report(run_dir: Path, baseline: Path | None = None, budget: float | None = None,
                 latency_tol_pct: float = 10.0, accuracy_tol_pt: float = 0.5, figures: bool = True) -> Path:
    """Write report.md, report.html, results.json and the figures into ``run_dir``; return report.md.

    Args:
        run_dir: a recipe run folder (manifest.json) or a ``compressor bench`` folder (results.json).
        baseline: another such folder; changes are shown and regressions beyond the tolerances flagged.
        budget: top-1 points below the teacher allowed in the answer (default: the recipe's).
    """
    run = load_run(run_dir)
    base = load_run(baseline) if baseline is not None else None
    ans = answer(run, budget)
    opening = answer_lines(ans) if run.rows else []
    changes = compare(run.rows, base.rows, latency_tol_pct, accuracy_tol_pt) if base is not None else None
    made: list[Path] = []
    if figures and run.rows:
        from compressor.report.plots import write_figures

        made = write_figures(run.rows, base.rows if base else None, run_dir)
    if run.manifest is not None:
        text = render(run.manifest, opening)
        title = f"compressor report: {run.manifest['recipe']['name']}"
    else:
        text = _bench_render(run, opening)
        title = f"compressor bench report: {run_dir.name}"
    text = text.rstrip("\n") + "\n\n" + "\n".join(
        _extra_sections(run, made, changes, baseline, (latency_tol_pct, accuracy_tol_pt))) + "\n"
    path = run_dir / "report.md"
    write_text(path, text)
    write_text(run_dir / "report.html", markdown_to_html(text, title))
    if run.manifest is not None or (run_dir / "results.json").is_file():
        doc = {"rows": run.rows, "targets": run.targets, "answer": ans, "accuracy_budget": ans["budget"],
               "teacher": ans["teacher"], "environment": run.environment,
               "comparison": {"baseline": str(baseline), "changes": changes,
                              "regressions": sum(1 for c in changes if c["regression"])} if changes is not None else None}
        write_json(run_dir / "results.json", doc)
    return path
