"""``benchmark``: latency, throughput, accuracy and agreement of artifacts on runtime backends."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from compressor.core.artifacts import Artifact, write_json, write_text
from compressor.core.config import StageConfig
from compressor.core.context import StageContext, StageOutput
from compressor.errors import CompressorError
from compressor.export.agreement import run_batched
from compressor.metrics.evaluation import task_of
from compressor.metrics.stats import array_digest
from compressor.report.data import mark_int8_vs_fp32
from compressor.report.tables import markdown_table
from compressor.runtime.backends import BACKENDS, DEFAULT_BACKEND, RuntimeOptions, get_backend, timed_call
from compressor.runtime.measure import DEFAULT_MAX_CV, measure_latency, measure_steady
from compressor.runtime.targets import (
    CudaTarget,
    EmulatedTarget,
    Job,
    JobArtifact,
    LocalTarget,
    TargetConfig,
    TargetResult,
    run_targets,
    target_row,
)
from compressor.train.models import load_model_artifact


class BenchmarkConfig(StageConfig):
    inputs: list[str] | None = Field(None, min_length=1, description="Stages whose artifacts to measure (default: input).")
    backends: list[str] = Field(default_factory=list, description="Backends to try on each artifact (default: one per format).")
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)
    threads: int | None = Field(None, ge=1, description="Runtime threads (default: the recipe's threads).")
    warmup: int = Field(10, ge=0)
    min_iters: int = Field(50, ge=1)
    time_budget_s: float = Field(2.0, gt=0, le=3600, description="Keep timing until this many seconds, after min_iters.")
    max_iters: int = Field(10000, ge=1)
    max_cv: float | None = Field(
        DEFAULT_MAX_CV, gt=0, description="A row whose latency coefficient of variation (std / mean) is above "
        "this is measured once more; still above, it is marked noisy (null: measure once).")
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
                                              if art.meta.get("source_model") else None)
    if source is None:
        return None
    if source.id not in memo:
        import torch

        from compressor.metrics.classification import predict

        model = load_model_artifact(source.meta, source.path(ctx.cache_root, "weights"))
        memo[source.id] = predict(model, images, torch.device("cpu"))
    return memo[source.id]


def source_id(art: Artifact) -> str | None:
    """The PyTorch model an artifact came from (itself for a model): rows of one source in one runtime are
    an artifact and its FP32 counterpart, or the teacher and its export."""
    if art.kind == "model":
        return art.id[:12]
    src = art.meta.get("source_model")
    return str(src["id"])[:12] if isinstance(src, dict) and src.get("id") else None


def _mark_slower_int8(ctx: StageContext, rows: list[dict[str, Any]]) -> None:
    for r in mark_int8_vs_fp32(rows):
        ctx.log(f"{ctx.name}: WARNING: INT8 `{r['stage']}` on {r['backend']} b{r['batch']} is slower than its FP32 "
                f"`{r['fp32_stage']}` in the same runtime ({r['fp32_median_ms']:.3f} → {r['median_ms']:.3f} ms, "
                f"{r['int8_speedup']:.2f}x)")


def bench_row(ctx: StageContext, cfg: BenchmarkConfig, stage: str, art: Artifact, backend: str, batch: int,
              images: np.ndarray, labels: np.ndarray, reference: np.ndarray | None,
              teacher: np.ndarray | None = None) -> dict[str, Any]:
    """One measured row. ``reference``: outputs of the artifact's own PyTorch model; ``teacher``: the
    teacher's embeddings (embedding task: the row gets their mean cosine similarity, dimensions allowing)."""
    path: Path = art.path(ctx.cache_root)
    size = sum(p.stat().st_size for p in (ctx.cache_root / art.folder).iterdir()
               if p.name in art.files.values())
    row: dict[str, Any] = {
        "stage": stage, "artifact": art.id[:12], "source": source_id(art), "format": art.meta.get("format", art.kind),
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
        row["outcomes"] = task.outcomes(logits, labels)
        if reference is not None:
            row.update(task.agreement(logits, reference))
        if task.is_embedding and teacher is not None and teacher.shape[1:] == logits.shape[1:]:
            row["teacher_cosine"] = task.agreement(logits, teacher)["mean_cosine"]
        sample = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
        call = timed_call(session, sample)
        stats = measure_steady(lambda: measure_latency(
            call, warmup=cfg.warmup, min_iters=cfg.min_iters,
            time_budget_s=cfg.time_budget_s, max_iters=cfg.max_iters), cfg.max_cv)
        row.update(stats)
        row["timed"] = "inference, input set once" if hasattr(session, "bind") else "run per call"
        row["throughput_ips"] = round(batch * 1000 / stats["median_ms"], 2) if stats["median_ms"] else None
        row["runtime"] = session.describe()
        row["device"] = row["runtime"].get("device", cfg.device)
    except CompressorError as err:
        row.update(status="failed", reason=str(err))
    return row


def mark_images(rows: list[dict[str, Any]], images: np.ndarray) -> None:
    """Name the images every row's outcomes were scored on (a digest), so a row is paired only with rows
    of the same images: another run's validation subset can have the same labels in the same order."""
    digest = array_digest(images)
    for row in rows:
        if isinstance(row.get("outcomes"), dict):
            row["outcomes"]["images"] = digest


def benchmark_inputs(cfg: BenchmarkConfig, ctx: StageContext) -> list[tuple[str, Artifact]]:
    """(stage name, artifact) pairs the stage measures: ``inputs`` if given, else ``input``."""
    if cfg.inputs:
        return list(zip(cfg.inputs, ctx.inputs["inputs"], strict=True))
    return [(str(ctx.refs["input"]), ctx.input)]


def run_benchmark(cfg: BenchmarkConfig, ctx: StageContext) -> StageOutput:
    if cfg.targets:
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
    _mark_slower_int8(ctx, rows)
    mark_images(rows, images)
    write_json(ctx.out_dir / "results.json", {"rows": rows})
    write_text(ctx.out_dir / "results.md", markdown_table(rows))
    art = ctx.new_artifact("report", {"json": "results.json", "markdown": "results.md"}, {"rows": len(rows)})
    return StageOutput(art, {"rows": rows})


# -- the benchmark stage with ``targets``: exported artifacts go through the runner on every target,
# PyTorch checkpoints run in this process (local CPU, and the GPU in FP32 and FP16 when present). Rows keep
# the keys of the in-process benchmark and add target, target_type, mode, emulated and peak_rss_mb.

RUNNER_FORMATS = ("onnx", "tflite", "openvino")


def artifact_size(ctx: StageContext, art: Artifact) -> int:
    folder = ctx.cache_root / art.folder
    return sum((folder / name).stat().st_size for name in art.files.values() if (folder / name).is_file())


def _pytorch_rows(cfg: Any, ctx: StageContext, stage: str, art: Artifact, target: Any, images: np.ndarray,
                  labels: np.ndarray, reference: np.ndarray | None) -> list[dict[str, Any]]:

    rows = []
    sub = cfg.model_copy(update={"threads": target.threads or cfg.threads})
    device = "cuda" if isinstance(target, CudaTarget) else "cpu"
    for batch in cfg.batch_sizes:
        if device == "cpu":
            made = [bench_row(ctx, sub, stage, art, "pytorch", batch, images, labels, reference)]
        else:
            made = _pytorch_cuda_rows(ctx, sub, stage, art, batch, images, labels, reference)
        for r in made:
            r.update(target=target.label, target_type=target.type, emulated=False, mode="latency")
            rows.append(r)
    return rows


def _pytorch_cuda_rows(ctx: StageContext, cfg: Any, stage: str, art: Artifact, batch: int, images: np.ndarray,
                       labels: np.ndarray, reference: np.ndarray | None) -> list[dict[str, Any]]:
    """PyTorch on the GPU in FP32 and FP16 (autocast), timed with a synchronize after every call."""
    import torch

    from compressor.metrics.classification import agreement, classification_metrics
    from compressor.metrics.stats import classification_outcomes

    model = load_model_artifact(art.meta, art.path(ctx.cache_root, "weights")).cuda().eval()
    rows = []
    for precision in ("fp32", "fp16"):
        @torch.inference_mode()
        def run(x: np.ndarray, half: bool = precision == "fp16") -> np.ndarray:
            with torch.autocast("cuda", dtype=torch.float16, enabled=half):
                out = model(torch.from_numpy(x).cuda())
            torch.cuda.synchronize()
            return out.float().cpu().numpy()

        logits = run_batched(run, images, None)
        row: dict[str, Any] = {
            "stage": stage, "artifact": art.id[:12], "source": source_id(art), "format": "model",
            "precision": precision,
            "backend": "pytorch", "batch": batch, "size_bytes": artifact_size(ctx, art), "status": "ok",
            "macs": art.meta.get("macs"), "params": art.meta.get("params"),
            "runtime": {"runtime": "pytorch", "version": torch.__version__, "provider": "cuda",
                        "device": torch.cuda.get_device_name(0), "autocast_fp16": precision == "fp16"},
        }
        acc = classification_metrics(logits, labels, len(ctx.data.classes))
        row.update(top1=acc["top1"], top5=acc["top5"], accuracy_images=acc["images"],
                   outcomes=classification_outcomes(logits, labels))
        if reference is not None:
            row.update(agreement(logits, reference))
        sample = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
        def call(s: np.ndarray = sample) -> np.ndarray:
            return run(s)

        def timed(c: Any = call) -> dict[str, Any]:
            return measure_latency(c, warmup=cfg.warmup, min_iters=cfg.min_iters,
                                   time_budget_s=cfg.time_budget_s, max_iters=cfg.max_iters)

        row.update(measure_steady(timed, getattr(cfg, "max_cv", DEFAULT_MAX_CV)))
        rows.append(row)
    return rows


def run_on_targets(cfg: Any, ctx: StageContext) -> StageOutput:
    from compressor.runtime.targets.cuda import cuda_absent_reason

    artifacts = benchmark_inputs(cfg, ctx)
    images, labels = ctx.data.val_arrays(cfg.accuracy_images)
    memo: dict[str, np.ndarray] = {}
    refs = {art.id: _reference_logits(ctx, art, images, memo) for _, art in artifacts}
    rows: list[dict[str, Any]] = []

    runnable = [(stage, art) for stage, art in artifacts if art.meta.get("format", art.kind) in RUNNER_FORMATS]
    job = Job(
        artifacts=[JobArtifact(stage, art.meta.get("format", art.kind), art.path(ctx.cache_root),
                               [ctx.cache_root / art.folder / f for f in art.files.values()])
                   for stage, art in runnable],
        images=images, labels=labels, batch_sizes=list(cfg.batch_sizes), modes=list(cfg.modes),
        warmup=cfg.warmup, min_iters=cfg.min_iters, time_budget_s=cfg.time_budget_s, max_iters=cfg.max_iters,
        requests=cfg.requests, max_cv=getattr(cfg, "max_cv", DEFAULT_MAX_CV),
    )
    results: list[TargetResult] = []
    if job.artifacts:
        ctx.log(f"{ctx.name}: {len(job.artifacts)} artifact(s) on {', '.join(t.label for t in cfg.targets)}")
        with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix="targets-") as tmp:
            results = run_targets(list(cfg.targets), job, Path(tmp))
    by_target = {r.target: r for r in results}
    for target in cfg.targets:
        for stage, art in artifacts:
            fmt = art.meta.get("format", art.kind)
            base = {"stage": stage, "artifact": art.id[:12], "source": source_id(art), "format": fmt,
                    "precision": art.meta.get("precision", "fp32"), "backend": "-", "batch": None,
                    "size_bytes": artifact_size(ctx, art), "macs": art.meta.get("macs"),
                    "params": art.meta.get("params"), "target": target.label, "target_type": target.type}
            if fmt == "model":
                if isinstance(target, LocalTarget):
                    rows += _pytorch_rows(cfg, ctx, stage, art, target, images, labels, refs[art.id])
                elif isinstance(target, CudaTarget) and cuda_absent_reason() is None:
                    rows += _pytorch_rows(cfg, ctx, stage, art, target, images, labels, refs[art.id])
                continue  # PyTorch checkpoints do not travel to devices: the runner has no torch
            result = by_target[target.label]
            ref = refs[art.id]
            ref_pred = ref.argmax(1) if ref is not None else None
            for runner_row in result.rows.get(stage, []):
                row = target_row(base, result, runner_row, ref_pred, labels)
                row.setdefault("mode", "latency")
                rows.append(row)
                ctx.log(f"{ctx.name}: {stage} on {target.label} b{row.get('batch')} {row.get('mode')}: "
                        + (f"top-1 {row.get('top1', '-')}, median {row['median_ms']:.3f} ms"
                           if row["status"] == "ok" else f"{row['status']} ({row.get('reason')})"))
    environments = [{"target": r.target, "type": r.type, "emulated": r.emulated, "note": r.note,
                     "environment": r.environment} for r in results]
    for target in cfg.targets:
        if target.label not in by_target:
            environments.append({"target": target.label, "type": target.type,
                                 "emulated": isinstance(target, EmulatedTarget), "note": None, "environment": {}})
    _mark_slower_int8(ctx, rows)
    mark_images(rows, images)
    write_json(ctx.out_dir / "results.json", {"rows": rows, "targets": environments})
    write_text(ctx.out_dir / "results.md", markdown_table(rows))
    out = ctx.new_artifact("report", {"json": "results.json", "markdown": "results.md"}, {"rows": len(rows)})
    return StageOutput(out, {"rows": rows, "targets": environments})
