"""Latency of torchvision models at 224x224 in every installed runtime backend (prints a table).

Run with ``make bench`` or ``.venv/bin/python benchmarks/bench_runtimes.py [--models ...] [--threads 1 2]``.
Untrained weights: this measures speed, not accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision

from compressor.backends import RuntimeOptions, get_backend
from compressor.envinfo import cpu_info
from compressor.measure import measure_latency


def export(model: torch.nn.Module, path: Path) -> None:
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=True, external_data=False,
                      opset_version=18, verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per row")
    args = parser.parse_args()
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}; features: {', '.join(cpu['features'])}")
    print(f"{'model':14} {'runtime':12} {'threads':>7} {'median ms':>10} {'p90 ms':>8} {'iters':>6}")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = torchvision.models.get_model(name, weights=None).eval()
            path = Path(tmp) / f"{name}.onnx"
            export(model, path)
            for threads in args.threads:
                session = get_backend("onnxruntime").load(path, {}, RuntimeOptions(threads=threads))
                stats = measure_latency(lambda s=session: s.run(x), warmup=10, min_iters=30,
                                        time_budget_s=args.budget, max_iters=5000)
                print(f"{name:14} {'onnxruntime':12} {threads:7d} {stats['median_ms']:10.3f} "
                      f"{stats['p90_ms']:8.3f} {stats['iterations']:6d}")
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    tx = torch.from_numpy(x)
                    stats = measure_latency(lambda t=tx, m=model: m(t), warmup=5, min_iters=20,
                                            time_budget_s=args.budget, max_iters=5000)
                print(f"{name:14} {'pytorch':12} {threads:7d} {stats['median_ms']:10.3f} "
                      f"{stats['p90_ms']:8.3f} {stats['iterations']:6d}")


if __name__ == "__main__":
    main()
