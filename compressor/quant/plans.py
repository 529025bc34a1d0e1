"""One plan per format: how to quantize (with some layers kept float), run, and save a candidate."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from compressor.quant import runners


class Plan(Protocol):
    fmt: str
    engine: str
    fp32_path: Path  # the FP32 file INT8 candidates are judged and composed against

    def layers(self) -> list[str]: ...
    def depthwise(self) -> bool: ...
    def fp32_runner(self) -> runners.Runner: ...
    def quantize(self, exclude: Sequence[str]) -> Path: ...
    def runner(self, candidate: Path) -> runners.Runner: ...
    def quantize_ac(self, val: tuple[np.ndarray, np.ndarray], max_drop: float,
                    scorer: runners.Scorer | None = None) -> Path: ...
    def save(self, candidate: Path, out_dir: Path) -> dict[str, str]: ...
    def fp32_size(self) -> int: ...


def nncf_kwargs(preset: str, bias_correction: str, subset_size: int, ignored: dict[str, list[str]],
                per_tensor_activations: bool = False, overflow_fix: str = "first_layer") -> dict[str, Any]:
    """Keyword arguments of ``nncf.quantize``.

    ``per_tensor_activations`` keeps one scale per activation tensor: ONNX Runtime's integer kernels
    (QLinearConv) take a scalar input scale, and NNCF would otherwise give depthwise inputs one scale
    per channel, which leaves those convolutions in float. ``overflow_fix`` is NNCF's
    ``OverflowFix`` value (``first_layer``, its default, ``enable``, ``disable``).
    """
    import nncf
    from nncf.quantization.advanced_parameters import OverflowFix, QuantizationParameters

    kwargs: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.PERFORMANCE if preset == "performance" else nncf.QuantizationPreset.MIXED,
        "subset_size": subset_size, "fast_bias_correction": bias_correction != "full",
    }
    fix = OverflowFix({"first_layer": "first_layer_only"}.get(overflow_fix, overflow_fix))
    advanced: dict[str, Any] = {"overflow_fix": fix}
    if bias_correction == "none":
        advanced["disable_bias_correction"] = True
    if per_tensor_activations:
        advanced["activations_quantization_params"] = QuantizationParameters(per_channel=False)
    kwargs["advanced_parameters"] = nncf.AdvancedQuantizationParameters(**advanced)
    if any(ignored.values()):
        kwargs["ignored_scope"] = nncf.IgnoredScope(
            names=ignored.get("names", []), patterns=ignored.get("patterns", []), types=ignored.get("types", []),
            validate=False)
    return kwargs


def accuracy_control_kwargs(nncf_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The same settings for ``nncf.quantize_with_accuracy_control``, which names the advanced
    parameters ``advanced_quantization_parameters``."""
    kwargs = dict(nncf_kwargs)
    if "advanced_parameters" in kwargs:
        kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters")
    return kwargs


class _Counter:
    def __init__(self, work: Path, suffix: str):
        self.work, self.suffix, self.n = work, suffix, 0

    def next(self) -> Path:
        self.n += 1
        return self.work / f"candidate{self.n}{self.suffix}"


class OnnxPlan:
    """ONNX Runtime quantize_static or nncf.quantize on an ONNX file."""

    fmt = "onnx"

    def __init__(self, src: Path, work: Path, calib: np.ndarray, engine: str, ort_opts: Any, per_channel: bool,
                 reduce_range: bool, nncf_args: dict[str, Any], threads: int):
        from compressor.quant import onnxruntime as q

        self.src, self.calib, self.engine, self.threads = src, calib, engine, threads
        self.fp32_path = src
        self.ort_opts, self.per_channel, self.reduce_range, self.nncf_args = ort_opts, per_channel, reduce_range, nncf_args
        self.prepared = q.preprocess_onnx(src, work / "preprocessed.onnx") if ort_opts.preprocess else src
        self.names = q.quantizable_nodes(self.prepared)
        self.counter = _Counter(work, ".onnx")

    def layers(self) -> list[str]:
        return list(self.names)

    def depthwise(self) -> bool:
        import onnx

        graph = onnx.load(str(self.src)).graph
        return any(n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute) for n in graph.node)

    def fp32_runner(self) -> runners.Runner:
        return runners.onnx_runner(self.src, self.threads)

    def quantize(self, exclude: Sequence[str]) -> Path:
        from compressor.quant import onnxruntime as q

        dst = self.counter.next()
        if self.engine == "nncf":
            q.quantize_onnx_nncf(self.src, dst, self.calib, self.nncf_args, exclude)
        else:
            q.quantize_ort(self.prepared, dst, self.calib, self.ort_opts, self.per_channel, self.reduce_range, exclude)
        return dst

    def runner(self, candidate: Path) -> runners.Runner:
        return runners.onnx_runner(candidate, self.threads)

    def quantize_ac(self, val: tuple[np.ndarray, np.ndarray], max_drop: float,
                    scorer: runners.Scorer | None = None) -> Path:
        from compressor.quant import onnxruntime as q

        dst = self.counter.next()
        q.quantize_onnx_nncf_ac(self.src, dst, self.calib, val, max_drop, accuracy_control_kwargs(self.nncf_args),
                                self.threads, scorer)
        return dst

    def save(self, candidate: Path, out_dir: Path) -> dict[str, str]:
        shutil.copyfile(candidate, out_dir / "model.onnx")
        return {"model": "model.onnx"}

    def fp32_size(self) -> int:
        return self.src.stat().st_size


class OpenVinoPlan:
    """nncf.quantize on an OpenVINO model (read from IR, or converted from ONNX)."""

    fmt = "openvino"
    engine = "nncf"

    def __init__(self, src: Path, work: Path, calib: np.ndarray, nncf_args: dict[str, Any], threads: int,
                 hint: str):
        from compressor.quant import openvino as q

        self.model = q.read_ov_model(src)
        self.work, self.calib, self.nncf_args, self.threads, self.hint = work, calib, nncf_args, threads, hint
        self.fp32_xml = self.fp32_path = work / "fp32.xml"
        q.save_ov_model(self.model, self.fp32_xml)
        self.counter = _Counter(work, ".xml")

    def layers(self) -> list[str]:
        from compressor.quant import openvino as q

        return q.quantizable_layers(self.model)

    def depthwise(self) -> bool:
        return any(op.get_type_name() == "GroupConvolution" for op in self.model.get_ops())

    def fp32_runner(self) -> runners.Runner:
        return runners.openvino_runner(self.fp32_xml, self.threads, self.hint)

    def quantize(self, exclude: Sequence[str]) -> Path:
        from compressor.quant import openvino as q

        dst = self.counter.next()
        q.save_ov_model(q.quantize_ov(self.model.clone(), self.calib, self.nncf_args, exclude), dst)
        return dst

    def runner(self, candidate: Path) -> runners.Runner:
        return runners.openvino_runner(candidate, self.threads, self.hint)

    def quantize_ac(self, val: tuple[np.ndarray, np.ndarray], max_drop: float,
                    scorer: runners.Scorer | None = None) -> Path:
        from compressor.quant import openvino as q

        dst = self.counter.next()
        q.save_ov_model(q.quantize_ov_ac(self.model.clone(), self.calib, val, max_drop, accuracy_control_kwargs(self.nncf_args),
                                         self.threads, scorer), dst)
        return dst

    def save(self, candidate: Path, out_dir: Path) -> dict[str, str]:
        shutil.copyfile(candidate, out_dir / "model.xml")
        shutil.copyfile(candidate.with_suffix(".bin"), out_dir / "model.bin")
        return {"xml": "model.xml", "bin": "model.bin"}

    def fp32_size(self) -> int:
        return self.fp32_xml.with_suffix(".bin").stat().st_size + self.fp32_xml.stat().st_size


class TflitePlan:
    """LiteRT full-integer INT8 from the PyTorch model (PT2E or ai-edge-quantizer)."""

    fmt = "tflite"

    def __init__(self, model: nn.Module, work: Path, calib: np.ndarray, engine: str, per_channel: bool,
                 float_io: bool, threads: int):
        from compressor.quant import tflite as q

        self.model, self.calib, self.engine, self.threads = model.eval(), calib, engine, threads
        self.per_channel, self.float_io = per_channel, float_io
        self.example = torch.from_numpy(calib[:1])
        self.fp32 = self.fp32_path = work / "fp32.tflite"
        q.convert_fp32(self.model, self.example, self.fp32)
        self.counter = _Counter(work, ".tflite")

    def layers(self) -> list[str]:
        from compressor.quant import tflite as q

        return q.quantizable_modules(self.model)

    def depthwise(self) -> bool:
        return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in self.model.modules())

    def fp32_runner(self) -> runners.Runner:
        return runners.tflite_runner(self.fp32, self.threads)

    def quantize(self, exclude: Sequence[str]) -> Path:
        from compressor.quant import tflite as q

        dst = self.counter.next()
        if self.engine == "ai_edge_quantizer":
            q.quantize_aeq(self.fp32, self.calib, dst, self.float_io, [q.scope_regex(self.model, n) for n in exclude])
        else:
            q.quantize_pt2e(self.model, self.example, self.calib, dst, self.per_channel, exclude)
        return dst

    def runner(self, candidate: Path) -> runners.Runner:
        return runners.tflite_runner(candidate, self.threads)

    def quantize_ac(self, val: tuple[np.ndarray, np.ndarray], max_drop: float,
                    scorer: runners.Scorer | None = None) -> Path:
        raise NotImplementedError

    def save(self, candidate: Path, out_dir: Path) -> dict[str, str]:
        shutil.copyfile(candidate, out_dir / "model.tflite")
        return {"model": "model.tflite"}

    def fp32_size(self) -> int:
        return self.fp32.stat().st_size
