"""Per-layer profiles of the FP32 and INT8 files ``bench_int8_224.py --files DIR`` made, from each runtime's own
profiler, grouped into depthwise convolutions, dense convolutions and the other op types (batch 1):

    python benchmarks/profile_int8_layers.py --files runs/bench_int8_224/files mobilenet_v2 efficientnet_lite0

ONNX Runtime: its profiler's per-node kernel times; a convolution is depthwise by the ``group`` attribute of
the optimized graph ORT runs. OpenVINO: ``PERF_COUNT`` counters, by layer type (``GroupConvolution``, or a
``_dw_`` kernel, is depthwise). LiteRT's Python interpreter has no per-op profiler.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np

SAMPLE = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)


def ort_profile(path: Path, threads: int, runs: int) -> dict[str, float]:
    """Microseconds per run by group, from ONNX Runtime's profiler."""
    import onnx
    import onnxruntime as ort

    def options() -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        return so

    with tempfile.TemporaryDirectory() as tmp:
        so = options()
        so.optimized_model_filepath = f"{tmp}/optimized.onnx"
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(f"{tmp}/optimized.onnx", load_external_data=False).graph
        groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in graph.node}
        so = options()
        so.enable_profiling, so.profile_file_prefix = True, f"{tmp}/profile"
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs):
            session.run(None, {name: SAMPLE})
        trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = collections.defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            node, op = event["name"].removesuffix("_kernel_time"), event.get("args", {}).get("op_name", "")
            group = ("depthwise conv" if groups.get(node, 1) > 1 else "dense conv") if "Conv" in op else op
            totals[group] += float(event["dur"])
    return {k: v / runs for k, v in totals.items()}


def ov_profile(xml: Path, threads: int, runs: int) -> dict[str, float]:
    """Microseconds per run by group, from OpenVINO's per-layer counters."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": "1",
        "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(SAMPLE))
    for _ in range(10):
        request.infer()
    totals: dict[str, float] = collections.defaultdict(float)
    for _ in range(runs):
        request.infer()
        for layer in request.profiling_info:
            if layer.status != layer.Status.EXECUTED:
                continue
            kind = layer.node_type
            if kind in ("Convolution", "GroupConvolution"):
                depthwise = kind == "GroupConvolution" or "_dw_" in layer.exec_type
                kind = "depthwise conv" if depthwise else "dense conv"
            elif kind.startswith("FullyConnected"):
                kind = "FullyConnected"
            totals[kind] += layer.real_time.total_seconds() * 1e6
    return {k: v / runs for k, v in totals.items()}


def show(network: str, runtime: str, fp32: dict[str, float], int8: dict[str, float], top: int = 7) -> None:
    total_fp32, total_int8 = sum(fp32.values()), sum(int8.values())
    print(f"## {network} {runtime}: FP32 {total_fp32 / 1000:.3f} ms, INT8 {total_int8 / 1000:.3f} ms "
          f"({total_fp32 / total_int8:.2f}x)")
    for key in sorted(set(fp32) | set(int8), key=lambda k: -(fp32.get(k, 0) + int8.get(k, 0)))[:top]:
        a, b = fp32.get(key, 0.0), int8.get(key, 0.0)
        ratio = f"{a / b:.2f}x" if a and b else "-"
        print(f"   {key:18s} FP32 {a / 1000:.3f} ms ({a / total_fp32:5.1%})  INT8 {b / 1000:.3f} ms "
              f"({b / total_int8:5.1%})  {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--files", type=Path, required=True, help="bench_int8_224.py's --files folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--onnx-int8", default="qdq.True", help="ONNX INT8 file: NETWORK.<this>.onnx (qdq.True.rr: the "
                    "7-bit weights bench_int8_224.py makes on a CPU without VNNI)")
    ap.add_argument("--ov-int8", default="int8", help="OpenVINO INT8 IR: NETWORK.<this>.xml (int8.enable.float_dw "
                    "without VNNI)")
    ap.add_argument("networks", nargs="+")
    args = ap.parse_args()
    for net in args.networks:
        files = args.files
        show(net, "onnxruntime", ort_profile(files / f"{net}.onnx", args.threads, args.runs),
             ort_profile(files / f"{net}.{args.onnx_int8}.onnx", args.threads, args.runs))
        show(net, "openvino", ov_profile(files / f"{net}.xml", args.threads, args.runs),
             ov_profile(files / f"{net}.{args.ov_int8}.xml", args.threads, args.runs))


if __name__ == "__main__":
    main()
