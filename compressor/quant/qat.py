"""Quantization-aware training with NNCF for PyTorch: fake-quantize, fine-tune, export.

NNCF's PyTorch backend compiles a C++ extension (``quantized_functions_cpu``) the first time a
quantized model runs. :func:`prepare_nncf_env` sets a load timeout of 0 (no limit: the build takes
about 60-90 s on 2 cores, longer than NNCF's 60 s default) and a persistent ``TORCH_EXTENSIONS_DIR``
so the build happens once (``make setup`` runs it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.errors import ExportError

EXTENSIONS_DIR = Path(__file__).resolve().parents[2] / ".cache" / "torch_extensions"


def prepare_nncf_env() -> None:
    """Defaults for the NNCF extension build, unless the user set them; clears stale build locks."""
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS_DIR))
    clear_stale_locks(Path(os.environ["TORCH_EXTENSIONS_DIR"]))


def clear_stale_locks(root: Path) -> list[Path]:
    """Remove build locks that a finished or killed build left beside its library.

    torch's JIT loader takes ``<build dir>/lock`` on every load and waits forever while the file
    exists. NNCF loads its extension from a worker thread, so a process that exits right after the
    build (or a build killed part-way) can leave the file behind; a lock no newer than the built
    ``.so`` belongs to no running build.
    """
    removed = []
    for lock in root.glob("nncf/*/*/lock"):
        libraries = list(lock.parent.glob("*.so"))
        if libraries and all(lib.stat().st_mtime >= lock.stat().st_mtime for lib in libraries):
            lock.unlink(missing_ok=True)
            removed.append(lock)
    return removed


class Wrapped(nn.Module):
    """Holds the model as a child: NNCF adds a hook-storage child that an nn.Sequential root would call."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def insert_fake_quant(model: nn.Module, calib: np.ndarray, nncf_kwargs: dict[str, Any]) -> nn.Module:
    """PTQ with NNCF on the PyTorch model: a model with fake-quantizers, ready to fine-tune."""
    prepare_nncf_env()
    import nncf

    dataset = nncf.Dataset([torch.from_numpy(calib[i : i + 1]) for i in range(len(calib))])
    return nncf.quantize(Wrapped(model).eval(), dataset, **nncf_kwargs)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, exporter: str, opset: int) -> dict[str, int]:
    """QDQ ONNX through the TorchScript exporter after ``nncf.strip`` (torch fake-quant ops), then
    rewritten for ONNX Runtime's integer kernels (:func:`compressor.quant.onnx_fold.fold_qat_onnx`:
    int8 weight initializers, BatchNormalization folded into the quantized weights).

    The dynamo exporter cannot trace NNCF's hooks at torch 2.14, so it is refused with a clear error.
    """
    import nncf

    from compressor.quant.onnx_fold import fold_qat_onnx

    if exporter != "torchscript":
        msg = (f"QAT model export to ONNX needs exporter: torchscript (got {exporter}): the dynamo exporter "
               "cannot trace NNCF's fake-quantize hooks at torch 2.14")
        raise ExportError(msg)
    stripped = nncf.strip(model, do_copy=True, example_input=example)
    raw = path.with_name(path.stem + ".fakequant.onnx")
    torch.onnx.export(stripped, (example,), str(raw), dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    try:
        return fold_qat_onnx(raw, path)
    finally:
        raw.unlink(missing_ok=True)


def export_openvino(model: nn.Module, example: torch.Tensor, xml: Path) -> None:
    """OpenVINO IR with FakeQuantize nodes, which the CPU plugin runs as INT8."""
    import openvino as ov

    from compressor.quant.openvino import save_ov_model

    save_ov_model(ov.convert_model(model.eval(), example_input=example), xml)


def run_qat(cfg: Any, ctx: Any, calib: np.ndarray, val: tuple[np.ndarray, np.ndarray]) -> Any:
    """The ``quantize`` stage in ``mode: qat``: NNCF fake-quant, fine-tune (optionally with KD), export."""
    from compressor.context import StageOutput
    from compressor.evaluation import task_of
    from compressor.losses import kd_loss
    from compressor.quant import evaluate
    from compressor.quant.plans import nncf_kwargs
    from compressor.stages.quantize import _artifact, _source_model
    from compressor.training import TrainOptions, fit

    images, labels = val
    fp32 = _source_model(ctx)
    # NNCF's PyTorch backend has fast bias correction only (full is refused by the config check).
    bias = "fast" if cfg.bias_correction == "auto" else cfg.bias_correction
    kwargs = nncf_kwargs(cfg.resolved_preset(), bias, min(cfg.calibration_images, len(calib)),
                         cfg.ignored_scope.model_dump(), per_tensor_activations=cfg.format == "onnx")
    teacher = _source_model(ctx)
    quantized = insert_fake_quant(_source_model(ctx), calib, kwargs)
    task = task_of(ctx)
    scorer = task.value if task.is_embedding else None
    ptq_top1 = evaluate.top1(lambda x: quantized(torch.from_numpy(x)).detach().numpy(), images, labels, scorer)
    opts = TrainOptions.model_validate(cfg.qat.model_dump(exclude={"distill", "temperature", "alpha"}))
    loss_fn = None
    head = None
    if cfg.qat.distill and task.is_embedding:
        from compressor.losses import embedding_distill_loss
        from compressor.training import embedding_loss

        teacher.to(ctx.device).eval()
        quantized.to(ctx.device)
        _, head = embedding_loss(quantized, ctx)
        objective = head

        def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target = teacher(x)
            emb = model(x)
            return (1 - cfg.qat.alpha) * objective(emb, y) + cfg.qat.alpha * embedding_distill_loss(emb, target)
    elif cfg.qat.distill:
        teacher.to(ctx.device).eval()

        def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target = teacher(x)
            return kd_loss(model(x), target, y, cfg.qat.temperature, cfg.qat.alpha, opts.label_smoothing)

    start_state = {k: v.detach().clone() for k, v in quantized.state_dict().items()}
    result = fit(quantized, ctx, opts, loss_fn=loss_fn, extra=head, desc="qat")
    quantized.cpu().eval()
    qat_top1 = evaluate.top1(lambda x: quantized(torch.from_numpy(x)).detach().numpy(), images, labels, scorer)
    kept = "qat"
    if qat_top1 < ptq_top1:
        # Fine-tuning ended below its own starting point (NNCF's PTQ): keep the start, as a best-epoch
        # selection that counts the start as epoch 0 would; the manifest says which was kept.
        quantized.load_state_dict(start_state)
        kept = "ptq start"
    example = torch.from_numpy(calib[:1])
    folded: dict[str, int] = {}
    if cfg.format == "onnx":
        path = ctx.out_dir / "model.onnx"
        folded = export_onnx(quantized, example, path, cfg.onnx_exporter, cfg.opset)
        files = {"model": "model.onnx"}
        run = evaluate.onnx_runner(path, ctx.threads)
    else:
        path = ctx.out_dir / "model.xml"
        export_openvino(quantized, example, path)
        files = {"xml": "model.xml", "bin": "model.bin"}
        run = evaluate.openvino_runner(path, ctx.threads, cfg.ov_hint)
    fp32_logits = evaluate.logits(lambda x: fp32(torch.from_numpy(x)).detach().numpy(), images)
    int8_logits = evaluate.logits(run, images)
    fp32_top1 = round(task.value(fp32_logits, labels), 3)
    int8_top1 = round(task.value(int8_logits, labels), 3)
    settings = {"engine": "nncf", "mode": "qat", "calibration_images": cfg.calibration_images,
                "nncf": {k: str(v) for k, v in kwargs.items()}, "qat": cfg.qat.model_dump(), **folded}
    metrics = {"fp32_top1": fp32_top1, "ptq_top1": ptq_top1, "qat_top1": qat_top1, "kept": kept,
               "int8_top1": int8_top1,
               "drop": round(fp32_top1 - int8_top1, 3), "qat_best_val_top1": result.best_top1,
               "qat_history": result.history, "eval_images": len(images), "settings": settings,
               "top1_agreement" if not task.is_embedding else "cosine_agreement_pct":
                   round(task.agreement_value(task.agreement(int8_logits, fp32_logits)), 3),
               "size_bytes": sum((ctx.out_dir / f).stat().st_size for f in files.values())}
    if cfg.max_accuracy_drop is not None and metrics["drop"] > cfg.max_accuracy_drop:
        from compressor.errors import AccuracyGoalError

        msg = (f"QAT INT8 top-1 {int8_top1:.2f} is {metrics['drop']:.2f} pt below FP32 "
               f"{fp32_top1:.2f} (max_accuracy_drop {cfg.max_accuracy_drop}); PTQ gave {ptq_top1:.2f}; "
               "train more epochs (qat.epochs) or lower qat.lr")
        raise AccuracyGoalError(msg, [{"method": "qat", "top1": int8_top1, "ptq_top1": ptq_top1}])
    return StageOutput(_artifact(ctx, cfg.format, files, settings, []), metrics)


def build_extension() -> Path:
    """Compile (or load the cached) NNCF CPU extension once; ``make setup`` calls this."""
    prepare_nncf_env()
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader

    QuantizedFunctionsCPULoader.load()
    root = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    clear_stale_locks(root)
    return root


if __name__ == "__main__":
    print(f"NNCF torch extension ready under {build_extension()}")
