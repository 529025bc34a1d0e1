"""PNG figures of a report (matplotlib, Agg backend): accuracy vs latency per target with the Pareto
front, size per artifact, latency distribution per artifact. With a baseline, each shows the change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.errors import MissingExtraError
from compressor.report.data import accuracy_key, ok_latency_rows, row_key


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        what = "report figures"
        raise MissingExtraError(what, "report", "matplotlib") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_x(ax: Any, values: list[float]) -> None:
    """Log latency axis with plain numbers (1, 2, 5 per decade); linear when the values span < 10x."""
    from matplotlib.ticker import FuncFormatter

    positive = [v for v in values if v > 0]
    if not positive or max(positive) / min(positive) < 10:
        return
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda v, _pos: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def _label(r: dict[str, Any]) -> str:
    return f"{r['stage']} {r['format']}/{r['precision']}" + (f" {r['backend']}" if r["format"] != "model" else "")


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both lower latency and higher accuracy, by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r.get("target", "local") for r in rows))


def accuracy_vs_latency(rows: list[dict[str, Any]], baseline: list[dict[str, Any]] | None, path: Path) -> Path | None:
    plt = pyplot()
    key = accuracy_key(rows)
    cur = [r for r in ok_latency_rows(rows) if r.get(key) is not None]
    if not cur:
        return None
    base = {row_key(r): r for r in ok_latency_rows(baseline or []) if r.get(key) is not None}
    targets = _targets(cur)
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4.8), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        mine = [r for r in cur if r.get("target", "local") == target]
        pts = [(r["median_ms"], r[key]) for r in mine]
        front = pareto(pts)
        for i, r in enumerate(mine):
            ax.scatter(*pts[i], s=60, zorder=3, color="tab:red" if i in front else "tab:blue")
            ax.annotate(_label(r), pts[i], textcoords="offset points", xytext=(5, 5), fontsize=8)
            b = base.get(row_key(r))
            if b is not None:
                ax.scatter(b["median_ms"], b[key], s=60, facecolors="none", edgecolors="grey", zorder=2)
                ax.annotate("", pts[i], (b["median_ms"], b[key]),
                            arrowprops={"arrowstyle": "->", "color": "grey"})
        fx = [pts[i] for i in front]
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "--", color="tab:red", label="Pareto front")
        if base:
            ax.scatter([], [], facecolors="none", edgecolors="grey", label="baseline")
        emulated = any(r.get("emulated") for r in mine)
        _log_x(ax, [p[0] for p in pts] + [b["median_ms"] for b in base.values() if b.get("target") == target])
        ax.set_xlabel("median latency, ms" + (" — EMULATED, not comparable" if emulated else ""))
        ax.set_ylabel({"top1": "top-1", "rank1": "rank-1", "map": "mAP"}[key] + " %")
        batch = mine[0]["batch"]
        ax.set_title(f"{target}{' (emulated)' if emulated else ''}: batch {batch}, latency mode")
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def size_per_artifact(rows: list[dict[str, Any]], baseline: list[dict[str, Any]] | None, path: Path) -> Path | None:
    plt = pyplot()
    sizes: dict[str, int] = {}
    for r in rows:
        if r.get("size_bytes"):
            sizes.setdefault(f"{r['stage']} ({r['format']} {r['precision']})", r["size_bytes"])
    if not sizes:
        return None
    base: dict[str, int] = {}
    for r in baseline or []:
        if r.get("size_bytes"):
            base.setdefault(f"{r['stage']} ({r['format']} {r['precision']})", r["size_bytes"])
    names = list(sizes)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ys = range(len(names))
    h = 0.4 if base else 0.7
    ax.barh([y + (h / 2 if base else 0) for y in ys], [sizes[n] / 1024 for n in names], height=h,
            color="tab:blue", label="this run")
    for y, n in zip(ys, names, strict=True):
        text = f"{sizes[n] / 1024:.0f} KB"
        if n in base:
            text += f" ({(sizes[n] / base[n] - 1) * 100:+.1f}%)"
        ax.text(sizes[n] / 1024, y + (h / 2 if base else 0), " " + text, va="center", fontsize=8)
    if base:
        ax.barh([y - h / 2 for y in ys], [base.get(n, 0) / 1024 for n in names], height=h, color="lightgrey",
                label="baseline")
        ax.legend(fontsize=8)
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("size on disk, KB")
    ax.set_title("Size per artifact")
    ax.margins(x=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _box(r: dict[str, Any], label: str) -> dict[str, Any] | None:
    q = r.get("quantiles_ms")
    if q and len(q) == 21:  # every 5%: whiskers at p5/p95, box at p25/p75, fliers at min/max
        return {"label": label, "whislo": q[1], "q1": q[5], "med": q[10], "q3": q[15], "whishi": q[19],
                "fliers": [q[0], q[20]]}
    if isinstance(r.get("median_ms"), int | float):
        return {"label": label, "whislo": r.get("min_ms", r["median_ms"]), "q1": r["median_ms"],
                "med": r["median_ms"], "q3": r.get("p90_ms", r["median_ms"]),
                "whishi": r.get("p99_ms", r["median_ms"]), "fliers": []}
    return None


def latency_distribution(rows: list[dict[str, Any]], baseline: list[dict[str, Any]] | None, path: Path) -> Path | None:
    plt = pyplot()
    cur = ok_latency_rows(rows)
    if not cur:
        return None
    base = {row_key(r): r for r in ok_latency_rows(baseline or [])}
    targets = _targets(cur)
    fig, axes = plt.subplots(len(targets), 1, figsize=(8, 0.6 * max(len(cur), 3) + 1.5 * len(targets)),
                             squeeze=False)
    for ax, target in zip(axes[:, 0], targets, strict=True):
        mine = [r for r in cur if r.get("target", "local") == target]
        stats, colors = [], []
        for r in mine:
            b = base.get(row_key(r))
            if b is not None and (box := _box(b, _label(r) + " (baseline)")):
                stats.append(box)
                colors.append("lightgrey")
            change = ""
            if b is not None and b.get("median_ms"):
                change = f" ({(r['median_ms'] / b['median_ms'] - 1) * 100:+.0f}% median)"
            if box := _box(r, _label(r) + change):
                stats.append(box)
                colors.append("tab:blue")
        artists = ax.bxp(stats, orientation="horizontal", patch_artist=True, showfliers=True)
        for patch, color in zip(artists["boxes"], colors, strict=True):
            patch.set_facecolor(color)
        emulated = any(r.get("emulated") for r in mine)
        _log_x(ax, [v for st in stats for v in (st["whislo"], st["whishi"], *st["fliers"])])
        ax.set_xlabel("latency per call, ms: box p25–p75, whiskers p5–p95, dots min/max")
        ax.set_title(f"{target}{' — EMULATED latency' if emulated else ''}: batch {mine[0]['batch']}")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(rows: list[dict[str, Any]], baseline: list[dict[str, Any]] | None, folder: Path) -> list[Path]:
    made = [
        accuracy_vs_latency(rows, baseline, folder / "accuracy_vs_latency.png"),
        size_per_artifact(rows, baseline, folder / "size.png"),
        latency_distribution(rows, baseline, folder / "latency_distribution.png"),
    ]
    return [p for p in made if p is not None]
