"""LiteRT has no per-op profiler in the ``ai-edge-litert`` wheel, so this times each convolution of a network
on its own, in LiteRT (XNNPACK), FP32 against INT8: one single-layer file per distinct convolution (its
weights, stride, groups and input shape at 224 px), converted as the quantize stage converts a whole model
(litert-torch, then ai-edge-quantizer static int8), timed one ``invoke`` at a time (batch 1):

    python benchmarks/profile_litert_layers.py --work runs/litert_layers mobilenet_v2 --threads 1

Prints FP32 and INT8 time summed over depthwise and over dense convolutions, each layer counted as many
times as the network has it.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def conv_layers(model: nn.Module, size: int) -> Counter[tuple[Any, ...]]:
    """(in, out, kernel, stride, padding, groups, H, W) of every Conv2d the network runs, with counts."""
    seen: Counter[tuple[Any, ...]] = Counter()

    def hook(module: nn.Module, inputs: Any, _out: Any) -> None:
        assert isinstance(module, nn.Conv2d)
        _, _, h, w = inputs[0].shape
        seen[(module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
              module.padding[0] if isinstance(module.padding, tuple) else module.padding, module.groups, h, w)] += 1

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return seen


def layer_files(spec: tuple[Any, ...], work: Path) -> tuple[Path, Path]:
    from compressor.quant.tflite import convert_fp32, quantize_aeq

    cin, cout, k, stride, pad, groups, h, w = spec
    name = "_".join(str(v) for v in spec)
    fp32, int8 = work / f"{name}.tflite", work / f"{name}.int8.tflite"
    if not int8.exists():
        torch.manual_seed(0)
        layer = nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, groups=groups), nn.ReLU6()).eval()
        calib = np.random.default_rng(0).standard_normal((16, cin, h, w)).astype(np.float32)
        convert_fp32(layer, torch.from_numpy(calib[:1]), fp32)
        quantize_aeq(fp32, calib, int8, float_io=False)
    return fp32, int8


def invoke_ms(path: Path, threads: int, seconds: float) -> float:
    """Median of ``invoke`` alone, the input set once. Not the backend's ``timed_call``: that also reads and
    dequantizes the output, which in a one-layer file is a whole activation tensor and would weigh as
    much as the layer (measured: ShuffleNetV2's layers 1.00x INT8/FP32 by invoke, 0.76x with the read)."""
    from ai_edge_litert.interpreter import Interpreter

    from compressor.runtime.portable import quantize

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    x = np.random.default_rng(1).standard_normal(inp["shape"]).astype(np.float32)
    if np.dtype(inp["dtype"]).kind in "iu":
        x = quantize(x, inp["dtype"], *inp["quantization"])
    interp.set_tensor(inp["index"], x)
    for _ in range(20):
        interp.invoke()
    samples: list[int] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 20:
        start = time.perf_counter_ns()
        interp.invoke()
        samples.append(time.perf_counter_ns() - start)
    return float(np.median(samples)) / 1e6


def main() -> None:
    import torchvision

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("networks", nargs="+", help="torchvision model names")
    ap.add_argument("--work", type=Path, required=True, help="folder for the single-layer files (reused)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=0.3, help="timing per file")
    ap.add_argument("--convert-only", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for net in args.networks:
        layers = conv_layers(torchvision.models.get_model(net, num_classes=1000), 224)
        files = {spec: layer_files(spec, args.work) for spec in layers}
        if args.convert_only:
            continue
        totals = {"depthwise": [0.0, 0.0], "dense": [0.0, 0.0]}
        for spec, count in layers.items():
            fp32, int8 = (invoke_ms(p, args.threads, args.seconds) for p in files[spec])
            kind = "depthwise" if spec[5] > 1 and spec[5] == spec[0] else "dense"
            totals[kind][0] += count * fp32
            totals[kind][1] += count * int8
        whole = sum(v[0] for v in totals.values()), sum(v[1] for v in totals.values())
        print(f"## {net} (LiteRT, {args.threads} thread(s), {sum(layers.values())} convolutions, "
              f"{len(layers)} distinct): FP32 {whole[0]:.3f} ms, INT8 {whole[1]:.3f} ms summed")
        for kind, (a, b) in totals.items():
            print(f"   {kind:9s} convs FP32 {a:.3f} ms ({a / whole[0]:5.1%})  INT8 {b:.3f} ms ({b / whole[1]:5.1%})  "
                  f"{a / b:.2f}x")


if __name__ == "__main__":
    main()
