"""The Markdown report of a run, rendered from its manifest (so it can be regenerated at any time)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressor.artifacts import write_text
from compressor.errors import CompressorError


def _fmt_int(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _headline(stage: dict[str, Any]) -> str:
    m = stage.get("metrics") or {}
    parts = []
    for key, label in (("val_top1", "val top-1"), ("top1", "top-1"), ("top5", "top-5"),
                       ("top1_agreement", "agreement %"), ("max_abs_error", "max abs err")):
        if isinstance(m.get(key), int | float):
            parts.append(f"{label} {m[key]:.4g}" if key == "max_abs_error" else f"{label} {m[key]:.2f}")
    meta = stage.get("artifact", {}).get("meta", {})
    if stage.get("artifact", {}).get("kind") == "model" and meta.get("macs"):
        parts.append(f"MACs {_fmt_int(meta['macs'])}, params {_fmt_int(meta.get('params'))}")
    return "; ".join(parts) or "-"


def render(manifest: dict[str, Any]) -> str:
    env = manifest["environment"]
    cpu = env["cpu"]
    recipe = manifest["recipe"]
    lines = [
        f"# compressor report: {recipe['name']}",
        "",
        f"Status: **{manifest['status']}**, updated {manifest['updated']}, recipe `{manifest['recipe_file']}`.",
        "",
        "## Environment",
        "",
        f"- CPU: {cpu['model']} ({cpu['arch']}), {cpu['usable_cores']} usable cores; features: "
        f"{', '.join(cpu['features']) or 'none detected'}; INT8: {cpu['int8_dot_product']}",
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
        lines.append(f"| {st['name']} | {st['type']} | `{st['key'][:12]}` | {when} | {_headline(st)} |")
    lines.append("")
    for st in manifest["stages"]:
        rows = (st.get("metrics") or {}).get("rows")
        if st["type"] == "benchmark" and rows:
            from compressor.stages.benchmark import markdown_table

            lines += [f"## Benchmark: {st['name']}", "", markdown_table(rows)]
    if manifest.get("error"):
        lines += ["## Error", "", f"```\n{manifest['error']}\n```", ""]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> Path:
    """Render ``run_dir/report.md`` from ``run_dir/manifest.json``; return its path."""
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        msg = f"{run_dir} has no manifest.json; pass the output folder of a run (default runs/<recipe name>)"
        raise CompressorError(msg)
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        msg = f"{manifest_path} is not valid JSON ({err}); rerun the recipe to rewrite it"
        raise CompressorError(msg) from err
    path = run_dir / "report.md"
    write_text(path, render(manifest))
    return path
