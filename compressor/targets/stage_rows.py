"""The benchmark stage with ``targets``: exported artifacts go through the runner on every target,
PyTorch checkpoints run in this process (local CPU, and the GPU in FP32 and FP16 when present).

Rows keep the keys of the in-process benchmark (stage, format, precision, backend, batch, top1,
median_ms, p90_ms, size_bytes, ...) and add target, target_type, mode, emulated and peak_rss_mb.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compressor.artifacts import Artifact, write_json, write_text
from compressor.context import StageContext, StageOutput
from compressor.targets import (
    BACKEND_NAMES,
    CudaTarget,
    EmulatedTarget,
    Job,
    JobArtifact,
    LocalTarget,
    TargetResult,
    run_targets,
    subset,
)

RUNNER_FORMATS = ("onnx", "tflite", "openvino")


def artifact_size(ctx: StageContext, art: Artifact) -> int:
    folder = ctx.cache_root / art.folder
    return sum((folder / name).stat().st_size for name in art.files.values() if (folder / name).is_file())


def target_row(base: dict[str, Any], result: TargetResult, runner_row: dict[str, Any],
               reference_pred: np.ndarray | None) -> dict[str, Any]:
    """One runner row -> one benchmark row (predictions become top-1 agreement, then are dropped)."""
    row = dict(base)
    row.update(target=result.target, target_type=result.type, emulated=result.emulated)
    runtime = runner_row.get("runtime") or {}
    if runtime.get("runtime"):
        row["backend"] = BACKEND_NAMES.get(runtime["runtime"], runtime["runtime"])
    pred = runner_row.get("predictions")
    for key, value in runner_row.items():
        if key not in ("predictions", "precision"):
            row[key] = value
    if runner_row.get("precision") and row.get("precision") in (None, "unknown"):
        row["precision"] = runner_row["precision"]
    if pred is not None and reference_pred is not None and len(pred) <= len(reference_pred):
        # a target with accuracy_images saw an even subset: compare on the same subset
        ref = reference_pred[subset(len(reference_pred), len(pred))]
        row["top1_agreement"] = round(float((np.asarray(pred) == ref).mean() * 100), 3)
    if result.emulated and "median_ms" in row:
        row["latency_note"] = "emulated (qemu): not comparable with native latencies"
    return row


def _pytorch_rows(cfg: Any, ctx: StageContext, stage: str, art: Artifact, target: Any, images: np.ndarray,
                  labels: np.ndarray, reference: np.ndarray | None) -> list[dict[str, Any]]:
    from compressor.stages.benchmark import bench_row

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

    from compressor.measure import measure_latency
    from compressor.metrics import agreement, classification_metrics
    from compressor.models import load_model_artifact
    from compressor.verify import run_batched

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
            "stage": stage, "artifact": art.id[:12], "format": "model", "precision": precision,
            "backend": "pytorch", "batch": batch, "size_bytes": artifact_size(ctx, art), "status": "ok",
            "macs": art.meta.get("macs"), "params": art.meta.get("params"),
            "runtime": {"runtime": "pytorch", "version": torch.__version__, "provider": "cuda",
                        "device": torch.cuda.get_device_name(0), "autocast_fp16": precision == "fp16"},
        }
        acc = classification_metrics(logits, labels, len(ctx.data.classes))
        row.update(top1=acc["top1"], top5=acc["top5"], accuracy_images=acc["images"])
        if reference is not None:
            row.update(agreement(logits, reference))
        sample = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
        def call(s: np.ndarray = sample) -> np.ndarray:
            return run(s)

        row.update(measure_latency(call, warmup=cfg.warmup, min_iters=cfg.min_iters,
                                   time_budget_s=cfg.time_budget_s, max_iters=cfg.max_iters))
        rows.append(row)
    return rows


def run_on_targets(cfg: Any, ctx: StageContext) -> StageOutput:
    from compressor.stages.benchmark import _reference_logits, benchmark_inputs, markdown_table
    from compressor.targets.cuda import cuda_absent_reason

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
        requests=cfg.requests,
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
            base = {"stage": stage, "artifact": art.id[:12], "format": fmt,
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
                row = target_row(base, result, runner_row, ref_pred)
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
    write_json(ctx.out_dir / "results.json", {"rows": rows, "targets": environments})
    write_text(ctx.out_dir / "results.md", markdown_table(rows))
    out = ctx.new_artifact("report", {"json": "results.json", "markdown": "results.md"}, {"rows": len(rows)})
    return StageOutput(out, {"rows": rows, "targets": environments})
