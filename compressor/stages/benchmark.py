"""``benchmark``: latency, throughput, accuracy and agreement of artifacts on runtime backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from compressor.artifacts import Artifact, write_json, write_text
from compressor.backends import BACKENDS, DEFAULT_BACKEND, RuntimeOptions, get_backend
from compressor.config import StageConfig
from compressor.context import StageContext, StageOutput
from compressor.errors import CompressorError
from compressor.evaluation import task_of
from compressor.measure import measure_latency
from compressor.models import load_model_artifact
from compressor.targets import TargetConfig
from compressor.verify import run_batched


class BenchmarkConfig(StageConfig):
    inputs: list[str] | None = Field(None, min_length=1, description="Stages whose artifacts to measure (default: input).")
    backends: list[str] = Field(default_factory=list, description="Backends to try on each artifact (default: one per format).")
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)
    threads: int | None = Field(None, ge=1, description="Runtime threads (default: the recipe's threads).")
    warmup: int = Field(10, ge=0)
    min_iters: int = Field(50, ge=1)
    time_budget_s: float = Field(2.0, gt=0, le=3600, description="Keep timing until this many seconds, after min_iters.")
    max_iters: int = Field(10000, ge=1)
    accuracy_images: int | None = Field(None, ge=1, description="Accuracy on an even slice of the val split (default: all).")
    device: str = Field("cpu", description="Device for every backend: cpu, cuda (onnxruntime, pytorch), gpu (openvino).")
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-backend settings, e.g. {openvino: {hint: latency, streams: 1}, litert: {xnnpack: false}, "
        "pytorch-compile: {mode: max-autotune}}.")
    targets: list[TargetConfig] = Field(
        default_factory=list,
        description="Where to run exported artifacts (local, cuda, ssh, arm64-emulated); default: in this "
        "process on the local CPU through the runtime backends.")
    modes: list[Literal["latency", "throughput"]] = Field(
        ["latency"], min_length=1,
        description="latency: one request at a time; throughput: parallel requests (target runs only).")
    requests: int = Field(2, ge=1, le=64, description="Parallel requests in throughput mode.")
    accuracy_budget: float = Field(1.0, ge=0, le=100, description="Top-1 points below the teacher an artifact "
                                   "may lose and still count in the report's answer.")
    teacher: str | None = Field(None, description="Stage whose row is the reference for speed-up and accuracy "
                                "loss (default: the first PyTorch model among the inputs).")


def _rows_for(art: Artifact, cfg: BenchmarkConfig) -> list[str]:
    if cfg.backends:
        return [b for b in cfg.backends if b in BACKENDS and art.kind in BACKENDS[b].formats]
    default = DEFAULT_BACKEND.get(art.kind)
    return [default] if default else []


def _reference_logits(ctx: StageContext, art: Artifact, images: np.ndarray, memo: dict[str, np.ndarray]) -> np.ndarray | None:
    """Logits of the PyTorch model an artifact came from (itself for a model artifact)."""
    source = art if art.kind == "model" else (Artifact.model_validate(art.meta["source_model"])
                                              if "source_model" in art.meta else None)
    if source is None:
        return None
    if source.id not in memo:
        import torch

        from compressor.metrics import predict

        model = load_model_artifact(source.meta, source.path(ctx.cache_root, "weights"))
        memo[source.id] = predict(model, images, torch.device("cpu"))
    return memo[source.id]


def bench_row(ctx: StageContext, cfg: BenchmarkConfig, stage: str, art: Artifact, backend: str, batch: int,
              images: np.ndarray, labels: np.ndarray, reference: np.ndarray | None,
              teacher: np.ndarray | None = None) -> dict[str, Any]:
    """One measured row. ``reference``: outputs of the artifact's own PyTorch model; ``teacher``: the
    teacher's embeddings (embedding task: the row gets their mean cosine similarity, dimensions allowing)."""
    path: Path = art.path(ctx.cache_root)
    size = sum(p.stat().st_size for p in (ctx.cache_root / art.folder).iterdir()
               if p.name in art.files.values())
    row: dict[str, Any] = {
        "stage": stage, "artifact": art.id[:12], "format": art.meta.get("format", art.kind),
        "precision": art.meta.get("precision", "fp32"), "backend": backend, "device": cfg.device, "batch": batch,
        "size_bytes": size, "macs": art.meta.get("macs"), "params": art.meta.get("params"),
        "status": "ok", "target": "local", "target_type": "local", "mode": "latency", "emulated": False,
    }
    threads = cfg.threads or ctx.threads
    try:
        options = RuntimeOptions(threads=threads, device=cfg.device, settings=cfg.settings.get(backend, {}))
        session = get_backend(backend).load(path, art.meta, options)
        fixed = session.batch_sizes()
        if fixed and batch not in fixed:
            row.update(status="skipped", reason=f"file has a fixed batch of {fixed[0]}")
            return row
        logits = run_batched(session.run, images, fixed)
        task = task_of(ctx)
        row.update(task.row_metrics(logits, labels))
        if reference is not None:
            row.update(task.agreement(logits, reference))
        if task.is_embedding and teacher is not None and teacher.shape[1:] == logits.shape[1:]:
            row["teacher_cosine"] = task.agreement(logits, teacher)["mean_cosine"]
        sample = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
        stats = measure_latency(lambda: session.run(sample), warmup=cfg.warmup, min_iters=cfg.min_iters,
                                time_budget_s=cfg.time_budget_s, max_iters=cfg.max_iters)
        row.update(stats)
        row["throughput_ips"] = round(batch * 1000 / stats["median_ms"], 2) if stats["median_ms"] else None
        row["runtime"] = session.describe()
        row["device"] = row["runtime"].get("device", cfg.device)
    except CompressorError as err:
        row.update(status="failed", reason=str(err))
    return row


def _cell(r: dict[str, Any], key: str, fmt: str = "{}") -> str:
    return fmt.format(r[key]) if r.get(key) is not None else "-"


def _render(head: str, rows: list[dict[str, Any]], cells: Callable[[dict[str, Any]], list[str]]) -> str:
    """A Markdown table: ``head``, then per row its ``cells`` and the status (with the reason when not ok)."""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
        lines.append("| " + " | ".join([*cells(r), status]) + " |")
    return "\n".join(lines) + "\n"


def _timing_cells(r: dict[str, Any]) -> list[str]:
    return [_cell(r, "median_ms", "{:.3f}"), _cell(r, "p90_ms", "{:.3f}"), _cell(r, "p99_ms", "{:.3f}")]


def _embedding_cells(r: dict[str, Any]) -> list[str]:
    return [r.get("target", "local"), r["stage"], r["format"], r["precision"], r["backend"],
            str(r.get("batch") or "-"), f"{r['size_bytes'] / 1024:.0f}", _cell(r, "rank1", "{:.2f}"),
            _cell(r, "rank5", "{:.2f}"), _cell(r, "map", "{:.2f}"), _cell(r, "mean_cosine", "{:.4f}"),
            _cell(r, "teacher_cosine", "{:.4f}"), *_timing_cells(r), _cell(r, "throughput_ips", "{:.1f}")]


def _classification_cells(r: dict[str, Any]) -> list[str]:
    target = r.get("target", "local") + (" (emulated)" if r.get("emulated") else "")
    return [target, r["stage"], r["format"], r["precision"], r["backend"], str(r.get("batch") or "-"),
            r.get("device", "-"), r.get("mode", "latency"), f"{r['size_bytes'] / 1024:.0f}",
            _cell(r, "top1", "{:.2f}"), _cell(r, "top1_agreement", "{:.2f}"), *_timing_cells(r),
            _cell(r, "cv", "{:.2f}"), _cell(r, "peak_rss_mb", "{:.0f}"), _cell(r, "throughput_ips", "{:.1f}")]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results table; embedding rows (rank-1, mAP) get retrieval columns instead of top-1."""
    if rows and any("rank1" in r for r in rows) and not any("top1" in r for r in rows):
        return _render("| target | stage | format | precision | backend | batch | size (KB) | rank-1 | rank-5 | mAP | "
                       "cos to source | cos to teacher | median ms | p90 ms | p99 ms | throughput (img/s) | status |",
                       rows, _embedding_cells)
    return _render("| target | stage | format | precision | backend | batch | device | mode | size (KB) | top-1 | "
                   "agreement | median ms | p90 ms | p99 ms | cv | peak RSS (MB) | throughput (img/s) | status |",
                   rows, _classification_cells)


def benchmark_inputs(cfg: BenchmarkConfig, ctx: StageContext) -> list[tuple[str, Artifact]]:
    """(stage name, artifact) pairs the stage measures: ``inputs`` if given, else ``input``."""
    if cfg.inputs:
        return list(zip(cfg.inputs, ctx.inputs["inputs"], strict=True))
    return [(str(ctx.refs["input"]), ctx.input)]


def run_benchmark(cfg: BenchmarkConfig, ctx: StageContext) -> StageOutput:
    if cfg.targets:
        from compressor.targets.stage_rows import run_on_targets

        if task_of(ctx).is_embedding:
            msg = ("benchmark targets return top-1 predictions, not embeddings: remove 'targets' from this "
                   "benchmark of an embedding recipe (it then runs every artifact in this process)")
            raise CompressorError(msg)
        return run_on_targets(cfg, ctx)
    artifacts = benchmark_inputs(cfg, ctx)
    images, labels = ctx.data.val_arrays(cfg.accuracy_images)
    memo: dict[str, np.ndarray] = {}
    rows = []
    jobs = [(stage, art, backend, batch) for stage, art in artifacts for backend in _rows_for(art, cfg)
            for batch in cfg.batch_sizes]
    task = task_of(ctx)
    teacher = None
    if task.is_embedding:
        names = dict(artifacts)
        teacher_stage = cfg.teacher or next((s for s, a in artifacts if a.kind == "model"), None)
        if teacher_stage in names:
            teacher = _reference_logits(ctx, names[teacher_stage], images, memo)
    for stage, art, backend, batch in ctx.progress(jobs, "benchmark", total=len(jobs)):
        reference = _reference_logits(ctx, art, images, memo)
        row = bench_row(ctx, cfg, stage, art, backend, batch, images, labels, reference, teacher)
        rows.append(row)
        acc_key = task.primary if task.is_embedding else "top1"
        ctx.log(f"{ctx.name}: {stage} {row['format']}/{row['precision']} on {backend} b{batch}: "
                + (f"{task.label if task.is_embedding else 'top-1'} {row[acc_key]:.2f}, median "
                   f"{row['median_ms']:.3f} ms" if row["status"] == "ok"
                   else f"{row['status']} ({row.get('reason')})"))
    write_json(ctx.out_dir / "results.json", {"rows": rows})
    write_text(ctx.out_dir / "results.md", markdown_table(rows))
    art = ctx.new_artifact("report", {"json": "results.json", "markdown": "results.md"}, {"rows": len(rows)})
    return StageOutput(art, {"rows": rows})
