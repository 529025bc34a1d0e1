"""Markdown tables of benchmark rows, shared by the benchmark stage, the report and release bundles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compressor.metrics.stats import accuracy_of


def _cell(r: dict[str, Any], key: str, fmt: str = "{}") -> str:
    return fmt.format(r[key]) if r.get(key) is not None else "-"


def _render(head: str, rows: list[dict[str, Any]], cells: Callable[[dict[str, Any]], list[str]]) -> str:
    """A Markdown table: ``head``, then per row its ``cells`` and the status (with the reason when not ok)."""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append("| " + " | ".join([*cells(r), status_cell(r)]) + " |")
    return "\n".join(lines) + "\n"


def status_cell(r: dict[str, Any]) -> str:
    """ok / failed / skipped with the reason; an INT8 row says how it compares with its FP32 in the same
    runtime, and one slower than its FP32 is marked ❎ (never shipped silently)."""
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('reason', '')}"
    if r.get("int8_speedup") is None:
        return "ok"
    vs = f"{r['int8_speedup']:.2f}x vs FP32 `{r['fp32_stage']}`"
    return f"❎ **INT8 slower than FP32**: {vs}" if r.get("slower_than_fp32") else f"ok, {vs}"


def _accuracy_cell(r: dict[str, Any], key: str) -> str:
    """An accuracy with the half-width of its 95% interval when the row kept its outcomes."""
    text = _cell(r, key, "{:.2f}")
    interval = accuracy_of(r, key) if r.get("outcomes") and r.get(key) is not None else None
    return text + (f" ± {interval.half_width:.2f}" if interval is not None else "")


def _timing_cells(r: dict[str, Any]) -> list[str]:
    median = _cell(r, "median_ms", "{:.3f}")
    ci = r.get("median_ci_ms")
    if isinstance(ci, list) and len(ci) == 2 and r.get("median_ms") is not None:
        median += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return [median, _cell(r, "p90_ms", "{:.3f}"), _cell(r, "p99_ms", "{:.3f}")]


def _embedding_cells(r: dict[str, Any]) -> list[str]:
    return [r.get("target", "local"), r["stage"], r["format"], r["precision"], r["backend"],
            str(r.get("batch") or "-"), f"{r['size_bytes'] / 1024:.0f}", _accuracy_cell(r, "rank1"),
            _cell(r, "rank5", "{:.2f}"), _accuracy_cell(r, "map"), _cell(r, "mean_cosine", "{:.4f}"),
            _cell(r, "teacher_cosine", "{:.4f}"), *_timing_cells(r), _cell(r, "throughput_ips", "{:.1f}")]


def _classification_cells(r: dict[str, Any]) -> list[str]:
    target = r.get("target", "local") + (" (emulated)" if r.get("emulated") else "")
    return [target, r["stage"], r["format"], r["precision"], r["backend"], str(r.get("batch") or "-"),
            r.get("device", "-"), r.get("mode", "latency"), f"{r['size_bytes'] / 1024:.0f}",
            _accuracy_cell(r, "top1"), _cell(r, "top1_agreement", "{:.2f}"), *_timing_cells(r),
            _cell(r, "cv", "{:.2f}") + (" noisy" if r.get("noisy") else ""), _cell(r, "peak_rss_mb", "{:.0f}"), _cell(r, "throughput_ips", "{:.1f}")]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results table; embedding rows (rank-1, mAP) get retrieval columns instead of top-1."""
    if rows and any("rank1" in r for r in rows) and not any("top1" in r for r in rows):
        return _render("| target | stage | format | precision | backend | batch | size (KB) | rank-1 | rank-5 | mAP | "
                       "cos to source | cos to teacher | median ms [95%] | p90 ms | p99 ms | throughput (img/s) | status |",
                       rows, _embedding_cells)
    return _render("| target | stage | format | precision | backend | batch | device | mode | size (KB) | top-1 | "
                   "agreement | median ms [95%] | p90 ms | p99 ms | cv | peak RSS (MB) | throughput (img/s) | status |",
                   rows, _classification_cells)
