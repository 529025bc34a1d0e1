"""Latency of torchvision models at 224x224 in every format and runtime backend (prints a table).

Each model is exported to ONNX (FP32), OpenVINO IR (FP32, FP16) and TFLite (FP32, FP16), every file is
checked against PyTorch on the benchmark input (max abs logit error over the largest logit), then each
runs on its runtime at each thread count, beside PyTorch eager and torch.compile. With
``--benchmark-app SECONDS`` the harness's OpenVINO median is compared with OpenVINO's own
``benchmark_app -hint latency`` at the same thread count on the same IR.

Run with ``make bench`` or ``.venv/bin/python benchmarks/bench_runtimes.py [--models ...] [--threads 1 2]``.
Untrained weights: this measures speed, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from compressor.runtime.backends import RuntimeOptions, available_backends, get_backend
from compressor.runtime.envinfo import cpu_info
from compressor.runtime.measure import measure_latency


def export_all(model: torch.nn.Module, folder: Path, x: torch.Tensor,
               formats: list[str]) -> list[tuple[str, str, str, Path]]:
    """(format, precision, backend, path) of every file of ``formats`` exported for ``model`` into ``folder``."""
    from compressor.export.openvino import convert_to_openvino, save_openvino
    from compressor.export.tflite import convert_to_tflite, write_tflite

    files = []
    backends = available_backends()
    if "onnxruntime" in backends and "onnx" in formats:
        path = folder / "model.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, opset_version=18, verbose=False)
        files.append(("onnx", "fp32", "onnxruntime", path))
    if "openvino" in backends and "openvino" in formats:
        for precision in ("fp32", "fp16"):
            xml = folder / f"model_{precision}.xml"
            save_openvino(convert_to_openvino(model, x, dynamic_batch=False), xml, precision, {})
            files.append(("openvino", precision, "openvino", xml))
    if "litert" in backends and "tflite" in formats:
        for precision in ("fp32", "fp16"):
            path = folder / f"model_{precision}.tflite"
            write_tflite(path, convert_to_tflite(model, x, precision, "NCHW"), {"input_layout": "NCHW"})
            files.append(("tflite", precision, "litert", path))
    return files


def timed(fn: Callable[[], Any], budget: float) -> dict[str, Any]:
    return measure_latency(fn, warmup=10, min_iters=30, time_budget_s=budget, max_iters=5000)


def benchmark_app_median(xml: Path, threads: int, seconds: int, precision: str | None) -> float | None:
    """Median latency (ms) that OpenVINO's ``benchmark_app -hint latency`` reports for ``xml`` at ``threads``.

    The Python ``benchmark_app`` refuses ``-nthreads`` together with ``-hint latency`` (a UI rule, it says),
    so the thread count, one stream and the precision go through ``-load_config``: the same properties.
    """
    tool = shutil.which("benchmark_app", path=str(Path(sys.executable).parent)) or shutil.which("benchmark_app")
    if tool is None:
        return None
    config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    cfg = xml.with_name(f"benchmark_app_{threads}_{precision}.json")
    cfg.write_text(json.dumps({"CPU": config}))
    # -ip f32: benchmark_app otherwise makes an image input u8 (a Convert added in front): another graph
    cmd = [tool, "-m", str(xml), "-d", "CPU", "-hint", "latency", "-load_config", str(cfg), "-ip", "f32",
           "-t", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600).stdout
    match = re.search(r"Median:\s+([\d.]+)\s*ms", out)
    return float(match.group(1)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per row")
    parser.add_argument("--formats", nargs="+", default=["onnx", "openvino", "tflite"],
                        choices=["onnx", "openvino", "tflite"])
    parser.add_argument("--no-pytorch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    parser.add_argument("--benchmark-app", type=int, default=0, metavar="SECONDS",
                        help="also run OpenVINO's benchmark_app for this many seconds per IR and thread count")
    args = parser.parse_args()
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}; features: {', '.join(cpu['features'])}")
    print(f"{'model':13} {'format':9} {'prec':5} {'runtime':16} {'threads':>7} {'median ms':>10} {'p90 ms':>8} "
          f"{'iters':>6} {'rel err':>9}")

    def show(name: str, fmt: str, prec: str, runtime: str, threads: int, stats: dict[str, Any], err: float) -> None:
        print(f"{name:13} {fmt:9} {prec:5} {runtime:16} {threads:7d} {stats['median_ms']:10.3f} "
              f"{stats['p90_ms']:8.3f} {stats['iterations']:6d} {err:9.1e}", flush=True)

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    tx = torch.from_numpy(x)
    comparisons = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = torchvision.models.get_model(name, weights=None).eval()
            with torch.inference_mode():
                reference = model(tx).numpy()
            scale = float(np.abs(reference).max())  # errors relative to the largest logit
            folder = Path(tmp) / name
            folder.mkdir()
            files = export_all(model, folder, tx, args.formats)
            compiled = None if args.no_compile or args.no_pytorch else torch.compile(model, dynamic=False)
            for threads in args.threads:
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    if not args.no_pytorch:
                        show(name, "pytorch", "fp32", "pytorch", threads,
                             timed(lambda m=model: m(tx), args.budget), 0.0)
                    if compiled is not None:
                        err = float(np.abs(compiled(tx).numpy() - reference).max()) / scale
                        show(name, "pytorch", "fp32", "pytorch-compile", threads,
                             timed(lambda c=compiled: c(tx), args.budget), err)
                for fmt, prec, backend, path in files:
                    session = get_backend(backend).load(path, {"layout": "NCHW"}, RuntimeOptions(threads=threads))
                    err = float(np.abs(session.run(x) - reference).max()) / scale
                    stats = timed(lambda s=session: s.run(x), args.budget)
                    show(name, fmt, prec, backend, threads, stats, err)
                    if backend == "openvino" and args.benchmark_app:
                        comparisons.append((name, prec, threads, "f32", stats["median_ms"],
                                            benchmark_app_median(path, threads, args.benchmark_app, "f32")))
                        # OpenVINO's own default inference precision (bf16 on CPUs with AVX512-BF16/AMX).
                        native = get_backend(backend).load(path, {"layout": "NCHW"}, RuntimeOptions(
                            threads=threads, settings={"inference_precision": "default"}))
                        stats = timed(lambda s=native: s.run(x), args.budget)
                        comparisons.append((name, prec, threads, "default", stats["median_ms"],
                                            benchmark_app_median(path, threads, args.benchmark_app, None)))
    if comparisons:
        print("\nOpenVINO: harness (sync infer, LATENCY hint, 1 stream) vs benchmark_app -hint latency -nthreads N "
              "on the same IR; inference precision f32 (-infer_precision f32) or OpenVINO's default")
        for name, prec, threads, infer, harness, app in comparisons:
            diff = f"{100 * (harness - app) / app:+.1f}%" if app else "benchmark_app not found or no median"
            print(f"{name:13} IR {prec:5} infer {infer:8} threads {threads}: harness {harness:.3f} ms, "
                  f"benchmark_app {app if app is not None else float('nan'):.3f} ms ({diff})")


if __name__ == "__main__":
    main()
