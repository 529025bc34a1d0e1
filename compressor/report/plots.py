"""PNG figures of a report (matplotlib, Agg backend): accuracy vs latency per target with the Pareto
front, size per artifact, latency distribution per artifact. With a baseline, each shows the change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.errors import MissingExtraError
from compressor.metrics.names import label as metric_label
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


def label_of(r: dict[str, Any]) -> str:
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
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4.8), squeeze=False, dpi=110)
    for ax, target in zip(axes[0], targets, strict=True):
        mine = [r for r in cur if r.get("target", "local") == target]
        pts = [(r["median_ms"], r[key]) for r in mine]
        front = pareto(pts)
        for i, r in enumerate(mine):
            ax.scatter(*pts[i], s=60, zorder=3, color="tab:red" if i in front else "tab:blue")
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
        ax.set_ylabel(metric_label(key) + " %")
        batch = mine[0]["batch"]
        ax.set_title(f"{target}{' (emulated)' if emulated else ''}: batch {batch}, latency mode")
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    for ax, target in zip(axes[0], targets, strict=True):  # labels last: they need the final axes box
        mine = [r for r in cur if r.get("target", "local") == target]
        place_labels(ax, [(r["median_ms"], r[key]) for r in mine], [label_of(r) for r in mine])
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Where a label may go around its point (offset in points, alignment), nearest first; tried at growing radii.
_DIRECTIONS = ((1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"),
               (-1, -1, "right", "top"), (0, 1.4, "center", "bottom"), (0, -1.4, "center", "top"),
               (1.4, 0, "left", "center"), (-1.4, 0, "right", "center"))


def place_labels(ax: Any, points: list[tuple[float, float]], labels: list[str], fontsize: int = 8) -> list[Any]:
    """Annotate each point with its label where it overlaps no other label, no point and stays inside the
    axes: nearest free position first, at growing distances (with a leader line when moved away); a label
    with no free place left keeps the least crowded one."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    dots = [ax.transData.transform(p) for p in points]
    marks = [Bbox.from_extents(x - 5, y - 5, x + 5, y + 5) for x, y in dots]
    placed: list[Any] = []
    out = []
    for i, (point, text) in enumerate(zip(points, labels, strict=True)):
        best = None
        # toward the middle of the axes first, so labels near an edge are not cut off
        toward = 1 if dots[i][0] < (frame.x0 + frame.x1) / 2 else -1
        directions = sorted(_DIRECTIONS, key=lambda d: -d[0] * toward)
        for radius in (5, 12, 22, 34, 48, 64):
            for dx, dy, ha, va in directions:
                ann = ax.annotate(text, point, xytext=(dx * radius, dy * radius), textcoords="offset points",
                                  ha=ha, va=va, fontsize=fontsize, zorder=4,
                                  arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6} if radius > 12 else None)
                ann.update_positions(renderer)
                box = Text.get_window_extent(ann, renderer).expanded(1.04, 1.15)  # the text, not its leader line
                inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                clashes = sum(box.overlaps(b) for b in placed) + sum(
                    box.overlaps(m) for j, m in enumerate(marks) if j != i)
                score = clashes * 10 + (0 if inside else 25)
                if best is None or score < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (score, ann, box)
                else:
                    ann.remove()
                if score == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        placed.append(best[2])
        out.append(best[1])
    return out


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
            if b is not None and (box := _box(b, label_of(r) + " (baseline)")):
                stats.append(box)
                colors.append("lightgrey")
            change = ""
            if b is not None and b.get("median_ms"):
                change = f" ({(r['median_ms'] / b['median_ms'] - 1) * 100:+.0f}% median)"
            if box := _box(r, label_of(r) + change):
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
