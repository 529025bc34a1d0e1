"""Prune each listed architecture at 224x224 to a MACs target; MACs, parameters and ONNX Runtime latency.

Run with ``.venv/bin/python benchmarks/bench_prune.py [--archs resnet18 ...] [--reduction 0.5]``.
Untrained weights and no fine-tuning: this measures size and speed, not accuracy. Results are printed
and written to ``--out`` (default ``runs/bench_prune/results.json``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from compressor.core.config import ModelSource
from compressor.errors import CompressorError
from compressor.export.onnx import export_to_onnx
from compressor.runtime.backends import RuntimeOptions, get_backend
from compressor.runtime.envinfo import cpu_info
from compressor.runtime.measure import measure_latency
from compressor.train.models import build_from_meta, model_meta
from compressor.train.pruning import PruneOptions, prune_model

ARCHS = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
         "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "densenet121", "efficientnet_b0", "tests.tinynet:tiny_cnn"]


def ort_latency(model: torch.nn.Module, x: torch.Tensor, path: Path, threads: int, budget: float) -> dict[str, Any]:
    export_to_onnx(model, x, path, {}, exporter="torchscript", opset=17)
    session = get_backend("onnxruntime").load(path, {}, RuntimeOptions(threads=threads))
    sample = x.numpy()
    return measure_latency(lambda: session.run(sample), warmup=5, min_iters=20, time_budget_s=budget,
                           max_iters=2000)


def bench(arch: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    source = (ModelSource(entry_point=arch, kwargs=json.loads(args.entry_kwargs)) if ":" in arch
              else ModelSource(arch=arch))
    torch.manual_seed(0)
    model = build_from_meta(model_meta(source, 1000, 3)).eval()
    x = torch.randn(1, 3, args.size, args.size)
    before = ort_latency(model, x, tmp / f"{arch}-dense.onnx", args.threads, args.budget)
    start = time.perf_counter()
    opts = PruneOptions(macs_reduction=args.reduction, importance=args.importance, allocation=args.allocation)
    report = prune_model(model, x, opts)
    prune_s = time.perf_counter() - start
    after = ort_latency(model, x, tmp / f"{arch}-pruned.onnx", args.threads, args.budget)
    return {"arch": arch, "prune_s": round(prune_s, 1), "frozen_layers": len(report["frozen"]),
            "macs_before": report["macs_before"], "macs_after": report["macs_after"],
            "params_before": report["params_before"], "params_after": report["params_after"],
            "ms_before": before["median_ms"], "ms_after": after["median_ms"],
            "p90_before": before["p90_ms"], "p90_after": after["p90_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reduction", type=float, default=0.5, help="fraction of MACs to remove")
    parser.add_argument("--importance", default="l2")
    parser.add_argument("--allocation", default="global")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per model")
    parser.add_argument("--entry-kwargs", default='{"width": 32}', help="JSON kwargs for entry points")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_prune"))
    args = parser.parse_args()
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}; ONNX Runtime, {args.threads} thread(s), batch 1, {args.size}x{args.size}")
    print(f"{'arch':22} {'GMACs':>13} {'params M':>13} {'ORT median ms':>17} {'speed-up':>8} {'prune s':>7}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            try:
                row = bench(arch, args, Path(tmp))
            except CompressorError as err:
                print(f"{arch:22} failed: {err}", flush=True)
                rows.append({"arch": arch, "error": str(err)})
                continue
            rows.append(row)
            print(f"{arch:22} {row['macs_before'] / 1e9:6.3f}>{row['macs_after'] / 1e9:6.3f} "
                  f"{row['params_before'] / 1e6:6.2f}>{row['params_after'] / 1e6:6.2f} "
                  f"{row['ms_before']:8.2f}>{row['ms_after']:8.2f} {row['ms_before'] / row['ms_after']:7.2f}x "
                  f"{row['prune_s']:7.1f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"cpu": cpu, "args": {k: str(v) for k, v in vars(args).items()},
                                                       "rows": rows}, indent=2))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
