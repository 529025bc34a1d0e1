"""Quantization-aware training with NNCF for PyTorch: fake-quantize, fine-tune, export.

NNCF's PyTorch backend compiles a C++ extension (``quantized_functions_cpu``) the first time a
quantized model runs. :func:`prepare_nncf_env` sets a load timeout of 0 (no limit: the build takes
about 60-90 s on 2 cores, longer than NNCF's 60 s default) and a persistent ``TORCH_EXTENSIONS_DIR``
so the build happens once (``make setup`` runs it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.core.context import StageContext
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


def qat_freezer(bn_after: int | None, quantizers_after: int | None,
                record: list[dict[str, Any]]) -> Callable[[int, nn.Module], None]:
    """The QAT fine-tune's epoch hook: from epoch ``bn_after`` (counted from 0) BatchNorm layers run in eval
    mode (running statistics fixed, as torchvision's QAT reference does after a few epochs), and from epoch
    ``quantizers_after`` NNCF's quantizer ranges stop training. ``record`` gets one entry per epoch that
    froze something (the manifest keeps it)."""

    def freeze(epoch: int, model: nn.Module) -> None:
        done: dict[str, Any] = {"epoch": epoch + 1}
        if bn_after is not None and epoch >= bn_after:
            bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            for m in bns:
                m.eval()
            done["batchnorm"] = len(bns)
        if quantizers_after is not None and epoch >= quantizers_after:
            from nncf.torch.quantization.layers import BaseQuantizer

            quantizers = [m for m in model.modules() if isinstance(m, BaseQuantizer)]
            for q in quantizers:
                q.disable_gradients()
            done["quantizers"] = len(quantizers)
        if len(done) > 1:
            record.append(done)

    return freeze


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


def qat_loss(ctx: StageContext, teacher: nn.Module, quantized: nn.Module, distill: bool, alpha: float,
             temperature: float, label_smoothing: float) -> tuple[Any, nn.Module | None]:
    """(loss function, extra trainable head) of QAT: the task's own loss (None), or distillation from the
    FP32 ``teacher`` (KD for classifiers; embedding distillation plus the metric loss for embedding models)."""
    from compressor.train.losses import kd_loss

    if not distill:
        return None, None
    teacher.to(ctx.device).eval()
    if not ctx.task.is_embedding:
        def kd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target = teacher(x)
            return kd_loss(model(x), target, y, temperature, alpha, label_smoothing)

        return kd, None
    from compressor.train.fit import embedding_loss
    from compressor.train.losses import embedding_distill_loss

    quantized.to(ctx.device)
    _, head = embedding_loss(quantized, ctx)

    def embedding_kd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        emb = model(x)
        return (1 - alpha) * head(emb, y) + alpha * embedding_distill_loss(emb, target)

    return embedding_kd, head


def export_qat(quantized: nn.Module, example: torch.Tensor, folder: Path, fmt: str, exporter: str, opset: int,
               threads: int, ov_hint: str) -> tuple[Path, dict[str, str], Any, dict[str, int]]:
    """(file, artifact files, runner, what the ONNX fold changed) of a fine-tuned fake-quantized model."""
    from compressor.quant import runners

    if fmt == "onnx":
        path = folder / "model.onnx"
        folded = export_onnx(quantized, example, path, exporter, opset)
        return path, {"model": "model.onnx"}, runners.onnx_runner(path, threads), folded
    path = folder / "model.xml"
    export_openvino(quantized, example, path)
    return path, {"xml": "model.xml", "bin": "model.bin"}, runners.openvino_runner(path, threads, ov_hint), {}


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
