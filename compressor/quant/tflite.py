"""TFLite full-integer INT8 through the LiteRT toolchain (never TensorFlow).

Two engines:
- ``ai_edge_quantizer`` (the default): the PyTorch model converted to an FP32 flatbuffer with litert-torch,
  then ai-edge-quantizer's static int8 recipe calibrated in the LiteRT interpreter. It quantizes the
  flatbuffer the converter already laid out in NHWC, so the INT8 graph has the FP32 graph's ops, each in
  int8 (residual adds and pads included).
- ``pt2e``: litert-torch's PT2E quantizer on the PyTorch model (``torch.export`` + ``prepare_pt2e``,
  calibration in PyTorch, ``convert_pt2e``), converted to a quantized flatbuffer. The converter's layout
  pass does not move NCHW transposes through the quantized graph: EfficientNet-Lite0 gets 33 TRANSPOSE and
  17 PAD ops (FP32: 1 and 1) and 7 residual ADDs stay float between DEQUANTIZE and QUANTIZE (MobileNetV2: 9).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


def convert_fp32(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """PyTorch -> FP32 flatbuffer (NCHW input, as the PyTorch model takes it)."""
    import litert_torch

    litert_torch.convert(model.eval(), (example,)).export(str(path))


def quantizable_modules(model: nn.Module) -> list[str]:
    """Names of the Conv2d and Linear modules: the layers the PT2E fallback can keep in float."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def quantize_pt2e(model: nn.Module, example: torch.Tensor, calib: np.ndarray, path: Path, per_channel: bool,
                  exclude: Sequence[str] = ()) -> None:
    """litert-torch PT2E static INT8 (symmetric weights, int8 activations); ``exclude`` stays float."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False))
    for name in exclude:
        quantizer.set_module_name(name, None)
    graph = torch.export.export(model.eval(), (example,)).module()
    prepared = prepare_pt2e(graph, quantizer)  # type: ignore[arg-type]
    with torch.no_grad():
        for i in range(len(calib)):  # the exported graph has the example's batch of 1
            prepared(torch.from_numpy(calib[i : i + 1]))
    converted = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))


def scope_regex(model: nn.Module, name: str) -> str:
    """A regular expression over litert-torch's tensor names that selects the ops of module ``name``.

    The converter names a tensor by the call stack of modules that made it, one ``pkg.Class_attr``
    segment per module (``.../torch.nn.modules.container.Sequential_features/...InvertedResidual_5/...``);
    containers that are never called (``ModuleList``, ``ModuleDict``) leave no segment.
    """
    segments = []
    module = model
    for attr in name.split("."):
        module = getattr(module, attr) if not attr.isdigit() else module[int(attr)]  # type: ignore[index]
        if isinstance(module, nn.ModuleList | nn.ModuleDict):
            continue
        cls = type(module)
        segments.append(f"{cls.__module__}.{cls.__qualname__}_{attr}")
    return "/" + re.escape("/".join(segments)) + r"(?:[/;]|$)"


def quantize_aeq(fp32: Path, calib: np.ndarray, path: Path, float_io: bool,
                 float_scopes: Sequence[str] = ()) -> None:
    """ai-edge-quantizer static int8 on an FP32 flatbuffer; ``float_io`` leaves input and output float;
    ops whose tensor names match one of ``float_scopes`` (:func:`scope_regex`) stay float."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe_manager

    manager = recipe_manager.RecipeManager()
    if float_io:
        # Every supported op except the graph's INPUT/OUTPUT: a QUANTIZE op is inserted after the input.
        for op in qtyping.TFLOperationName:
            if op.name in ("INPUT", "OUTPUT", "ALL_SUPPORTED"):
                continue
            try:
                manager.add_static_config(regex=".*", operation_name=op, activation_num_bits=8, weight_num_bits=8)
            except Exception:  # noqa: BLE001,S112 - ops without an int8 static kernel are skipped
                continue
    else:
        manager.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                  activation_num_bits=8, weight_num_bits=8)
    for scope in float_scopes:  # the last matching scope wins, so these come after the global config
        manager.add_quantization_config(regex=scope, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    signatures = Interpreter(model_path=str(fp32)).get_signature_list()
    signature = next(iter(signatures))
    arg = signatures[signature]["inputs"][0]
    q = quantizer.Quantizer(str(fp32), manager.get_quantization_recipe())
    result = q.quantize(q.calibrate({signature: [{arg: calib[i : i + 1]} for i in range(len(calib))]}))
    result.export_model(str(path), overwrite=True)


def int8_io(path: Path) -> bool:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return bool(interp.get_input_details()[0]["dtype"] != np.float32)
