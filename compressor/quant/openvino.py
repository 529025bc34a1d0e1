"""OpenVINO INT8: ``nncf.quantize`` (and ``quantize_with_accuracy_control``) on an ``ov.Model``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

QUANTIZABLE_OV_OPS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")


def read_ov_model(path: Path) -> Any:
    """An ``ov.Model`` from an OpenVINO IR (.xml) or an ONNX file (converted with ``ov.convert_model``)."""
    import openvino as ov

    if path.suffix == ".xml":
        return ov.Core().read_model(str(path))
    return ov.convert_model(str(path))


def save_ov_model(model: Any, xml: Path) -> None:
    """IR with float32 weights where not quantized (no FP16 compression: INT8 is the point)."""
    import openvino as ov

    ov.save_model(model, str(xml), compress_to_fp16=False)


def quantizable_layers(model: Any) -> list[str]:
    """Friendly names of the weighted operations in topological order."""
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in QUANTIZABLE_OV_OPS]


def _dataset(images: np.ndarray) -> Any:
    import nncf

    return nncf.Dataset(list(images[:, None]))


def quantize_ov(model: Any, calib: np.ndarray, nncf_kwargs: dict[str, Any], exclude: Sequence[str] = ()) -> Any:
    """``nncf.quantize`` on the OpenVINO model; ``exclude`` names layers kept in float."""
    import nncf

    kwargs = dict(nncf_kwargs)
    if exclude:
        kwargs["ignored_scope"] = _merge_ignored(kwargs.get("ignored_scope"), exclude)
    return nncf.quantize(model, _dataset(calib), **kwargs)


def quantize_ov_ac(model: Any, calib: np.ndarray, val: tuple[np.ndarray, np.ndarray], max_drop_pt: float,
                   nncf_kwargs: dict[str, Any], threads: int, scorer: Any = None) -> Any:
    """``nncf.quantize_with_accuracy_control``; accuracy is top-1 (or ``scorer``'s metric) of the compiled
    model on CPU."""
    import nncf

    from compressor.quant.runners import openvino_runner, top1

    images, labels = val

    def validate(compiled: Any, _data: Any) -> float:
        return top1(openvino_runner(compiled, threads), images, labels, scorer) / 100

    return nncf.quantize_with_accuracy_control(
        model, _dataset(calib), _dataset(images), validate, max_drop=max_drop_pt / 100,
        drop_type=nncf.DropType.ABSOLUTE, **nncf_kwargs)


def _merge_ignored(scope: Any, names: Sequence[str]) -> Any:
    import nncf

    if scope is None:
        return nncf.IgnoredScope(names=list(names), validate=False)
    return nncf.IgnoredScope(names=[*scope.names, *names], patterns=scope.patterns, types=scope.types,
                             validate=False)


def perf_counters(model: Any, sample: np.ndarray, threads: int, runs: int = 50) -> list[dict[str, Any]]:
    """Per-layer CPU time (microseconds per run) with the kernel OpenVINO chose, slowest first."""
    from compressor.quant.runners import openvino_runner

    run = openvino_runner(model, threads, perf_counters=True)
    totals: dict[tuple[str, str, str], float] = {}
    for _ in range(runs):
        run(sample)
        for info in run.request.profiling_info:  # type: ignore[attr-defined]
            key = (info.node_name, info.node_type, info.exec_type)
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1e6
    rows = [{"node": k[0], "op": k[1], "kernel": k[2], "us": round(v / runs, 2)} for k, v in totals.items() if v > 0]
    return sorted(rows, key=lambda r: -r["us"])
