"""Small INT8 test artifacts built in the test itself: ONNX (onnxruntime quantize_static, QDQ) and
TFLite (litert-torch conversion, then ai-edge-quantizer static int8 weights and activations)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compressor.quant.runners import int8_saturates


def fit_tiny(images: np.ndarray, labels: np.ndarray, steps: int = 80, seed: int = 0) -> torch.nn.Module:
    """tests.tinynet:tiny_cnn trained for a few steps, so that top-1 is well above chance and logits are
    not near-ties (near-ties flip between INT8 kernels and would make agreement meaningless)."""
    from tests.tinynet import tiny_cnn

    torch.manual_seed(seed)
    model = tiny_cnn(num_classes=int(labels.max()) + 1, in_channels=images.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def onnx_int8(model: torch.nn.Module, calib: np.ndarray, folder: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = folder / "tiny_fp32.onnx"
    torch.onnx.export(model, (torch.from_numpy(calib[:1]),), str(fp32), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    out = folder / "tiny_int8.onnx"
    # 7-bit weights where x86 int8 kernels saturate full 8-bit ones (no VNNI), as the quantize stage's
    # reduce_range: auto makes them; arm64 kernels do not saturate.
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    reduce_range=int8_saturates("onnxruntime"))
    return out


def tflite_int8(model: torch.nn.Module, calib: np.ndarray, folder: Path) -> Path:
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    fp32 = folder / "tiny_fp32.tflite"
    litert_torch.convert(model, (torch.from_numpy(calib[:1]),)).export(str(fp32))
    sig = Interpreter(model_path=str(fp32)).get_signature_list()
    key = next(iter(sig))
    name = sig[key]["inputs"][0]
    qt = quantizer.Quantizer(str(fp32), recipe.static_wi8_ai8())
    calibration = qt.calibrate({key: [{name: calib[i : i + 1]} for i in range(len(calib))]})
    out = folder / "tiny_int8.tflite"
    qt.quantize(calibration).export_model(str(out), overwrite=True)
    return out
