"""Self-contained benchmark runner, copied to a device and run there: ``python3 runner.py job.json``.

Standard library and numpy only, plus whichever of onnxruntime, ai_edge_litert / tflite_runtime and
openvino import on the device. It reads ONNX, TFLite or OpenVINO IR files, takes input shape, layout
(NCHW/NHWC) and dtype (float, or int8/uint8 with the file's quantization parameters) from the file,
times latency (one request at a time) and throughput (parallel requests), scores accuracy when labels
are shipped, and prints one JSON document on stdout. Each artifact runs in a forked child, so a crash
is a failed row and the peak resident memory is that artifact's own. Do not import compressor here,
except :mod:`compressor.runtime.portable`, which is shipped beside this file as ``portable.py`` (the layout,
(de)quantization, latency loop and CPU info the in-process backends use too).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

if __package__:  # imported from the package (tests)
    from compressor.runtime import portable
else:  # run as a script in a staged folder: the copy staged beside this file, never another installed version
    import portable  # type: ignore[no-redef]

RUNNER_VERSION = 1
def runtime_versions() -> dict[str, str]:
    found = {}
    for module in ("onnxruntime", "ai_edge_litert", "tflite_runtime", "openvino"):
        try:
            mod = __import__(module)
            found[module] = str(getattr(mod, "__version__", "?"))
        except Exception:  # noqa: BLE001 - any import failure means "not usable here"
            continue
    if "ai_edge_litert" in found and found["ai_edge_litert"] == "?":
        try:
            from importlib.metadata import version
            found["ai_edge_litert"] = version("ai-edge-litert")
        except Exception:  # noqa: BLE001
            pass
    return found


class OnnxModel:
    def __init__(self, path: str, threads: int, device: str):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                msg = "onnxruntime here has no CUDAExecutionProvider"
                raise RuntimeError(msg)
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(path, so, providers=providers)
        inp = self.session.get_inputs()[0]
        self.name, self.shape = inp.name, list(inp.shape)
        self.dtype = portable.ONNX_DTYPES.get(inp.type, np.float32)
        self.layout = portable.input_layout(self.shape)
        self.fixed_batch = self.shape[0] if isinstance(self.shape[0], int) else None
        self.describe = {"runtime": "onnxruntime", "version": ort.__version__,
                         "provider": self.session.get_providers()[0], "threads": threads,
                         "layout": self.layout, "input_dtype": np.dtype(self.dtype).name}

    def run(self, x: np.ndarray) -> np.ndarray:
        x = portable.to_layout(x, self.layout)
        out = self.session.run(None, {self.name: np.ascontiguousarray(x, dtype=self.dtype)})[0]
        return np.asarray(out, dtype=np.float32)

    def clone(self) -> OnnxModel:
        return self  # InferenceSession.run is thread-safe


class TfliteModel:
    def __init__(self, path: str, threads: int, device: str):
        if device != "cpu":
            msg = "the TFLite runner measures CPU only"
            raise RuntimeError(msg)
        try:
            import ai_edge_litert as rt_mod
            from ai_edge_litert.interpreter import Interpreter
            name = "ai-edge-litert"
        except ImportError:
            import tflite_runtime as rt_mod  # type: ignore[no-redef]
            from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
            name = "tflite-runtime"
        self.path, self.threads, self.cls = path, threads, Interpreter
        self.interp = Interpreter(model_path=path, num_threads=threads)
        self.interp.allocate_tensors()
        inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.inp = inp
        self.shape = [int(d) for d in inp["shape"]]
        self.dtype = inp["dtype"]
        self.layout = portable.input_layout(self.shape)
        self.fixed_batch = self.shape[0]
        self.in_q = inp.get("quantization", (0.0, 0))
        self.out_q = self.out.get("quantization", (0.0, 0))
        self.precision = "int8" if any(t["dtype"] in (np.int8, np.uint8) and "quantization" in t and
                                       t["quantization"][0] for t in self.interp.get_tensor_details()) else None
        self.describe = {"runtime": name, "version": str(getattr(rt_mod, "__version__", "?")), "provider": "cpu",
                         "threads": threads, "layout": self.layout, "input_dtype": np.dtype(self.dtype).name,
                         "input_quantization": [float(self.in_q[0]), int(self.in_q[1])]}
        self.lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        x = portable.to_layout(x, self.layout)
        if self.dtype in (np.int8, np.uint8):
            x = portable.quantize(x, self.dtype, *self.in_q)
        self.interp.set_tensor(self.inp["index"], np.ascontiguousarray(x, dtype=self.dtype))
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        if y.dtype in (np.int8, np.uint8) and self.out_q[0]:
            return portable.dequantize(y, self.out_q[0], self.out_q[1])
        return np.asarray(y, dtype=np.float32)

    def clone(self) -> TfliteModel:
        return TfliteModel(self.path, self.threads, "cpu")  # an interpreter is not thread-safe


class OpenvinoModel:
    def __init__(self, path: str, threads: int, device: str, streams: int = 1):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        dev = "GPU" if device == "cuda" else "CPU"
        self.path, self.threads, self.device = path, threads, device
        # What the in-process backend and benchmark_app run: latency hint, one stream, FP32 kept FP32 (OpenVINO
        # would otherwise run an FP32 IR in bf16 on AVX512-BF16/AMX CPUs, a different model than the one verified).
        # Throughput mode compiles one stream per parallel request (threads each), as ORT runs one session call
        # per request thread; one stream would queue the requests.
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
                                  "NUM_STREAMS": str(streams)}
        if dev == "CPU":
            config.update(INFERENCE_NUM_THREADS=threads * streams, INFERENCE_PRECISION_HINT="f32")
        self.compiled = core.compile_model(model, dev, config)
        inp = self.compiled.inputs[0]
        ps = inp.get_partial_shape()
        self.shape = [d.get_length() if d.is_static else None for d in ps]
        self.layout = portable.input_layout(self.shape)
        self.fixed_batch = self.shape[0]
        self.dtype = np.float32
        self.request = self.compiled.create_infer_request()
        self.describe = {"runtime": "openvino", "version": ov.__version__, "provider": dev, "threads": threads,
                         "layout": self.layout, "input_dtype": "float32",
                         "config": {k: str(v) for k, v in config.items()}}

    def run(self, x: np.ndarray) -> np.ndarray:
        x = portable.to_layout(x, self.layout)
        res = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(next(iter(res.values())), dtype=np.float32)

    def clone(self) -> OpenvinoModel:
        twin = object.__new__(OpenvinoModel)
        twin.__dict__.update(self.__dict__)
        twin.request = self.compiled.create_infer_request()
        return twin


LOADERS = {"onnx": OnnxModel, "tflite": TfliteModel, "openvino": OpenvinoModel}


def _time_calls(fn: Any, job: dict[str, Any]) -> list[int]:
    return portable.time_calls(fn, warmup=job["warmup"], min_iters=job["min_iters"],
                               time_budget_s=job["time_budget_s"], max_iters=job["max_iters"])


def throughput(model: Any, sample: np.ndarray, job: dict[str, Any]) -> dict[str, Any]:
    """``requests`` threads, each with its own request object, issue back-to-back calls for the budget."""
    if isinstance(model, OpenvinoModel) and job["requests"] > 1:
        model = OpenvinoModel(model.path, model.threads, model.device, streams=job["requests"])
    workers = [model.clone() for _ in range(job["requests"])]
    per_thread: list[list[int]] = [[] for _ in workers]
    for w in workers:
        w.run(sample)
    start = time.perf_counter_ns()

    def loop(i: int) -> None:
        sub = dict(job, warmup=0, min_iters=max(1, job["min_iters"] // len(workers)))
        per_thread[i] = _time_calls(lambda: workers[i].run(sample), sub)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = (time.perf_counter_ns() - start) / 1e9
    samples = [s for lst in per_thread for s in lst]
    out = portable.latency_stats(samples)
    out["throughput_ips"] = round(len(samples) * len(sample) / wall_s, 2)
    out["requests"] = len(workers)
    return out


def predict(model: Any, images: np.ndarray) -> np.ndarray:
    step = model.fixed_batch or 32
    outs = []
    for i in range(0, len(images), step):
        chunk = images[i:i + step]
        n = len(chunk)
        if model.fixed_batch and n < step:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
        outs.append(model.run(chunk)[:n])
    return np.concatenate(outs)


def bench_artifact(art: dict[str, Any], job: dict[str, Any], base: Path) -> list[dict[str, Any]]:
    if job.get("cores"):
        os.sched_setaffinity(0, set(job["cores"]))
    threads = job["threads"] or len(os.sched_getaffinity(0))
    model: Any = LOADERS[art["format"]](str(base / art["path"]), threads, job.get("device", "cpu"))
    images = np.load(base / job["inputs"]) if job.get("inputs") else None
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in model.shape]
    if images is None:  # latency only: random data of the file's own shape, as NCHW float
        hw = shape[1:3] if model.layout == "NHWC" else shape[2:4]
        ch = shape[3] if model.layout == "NHWC" else shape[1]
        images = np.random.default_rng(0).standard_normal((8, ch, *hw)).astype(np.float32)
    common: dict[str, Any] = {"runtime": model.describe, "cores": sorted(os.sched_getaffinity(0)),
                              "input_shape": shape, "layout": model.layout}
    if getattr(model, "precision", None):
        common["precision"] = model.precision
    if job.get("labels"):
        labels = np.load(base / job["labels"])
        logits = predict(model, images)
        pred = logits.argmax(1)
        top5 = np.argsort(-logits, axis=1)[:, :5]
        common.update(top1=round(float((pred == labels).mean() * 100), 2),
                      top5=round(float((top5 == labels[:, None]).any(1).mean() * 100), 2),
                      accuracy_images=int(len(labels)), predictions=pred.astype(int).tolist(),
                      top5_hits=(top5 == labels[:, None]).any(1).astype(int).tolist())
    rows = []
    for batch in job["batch_sizes"]:
        for mode in job["modes"]:
            row = dict(common, batch=batch, mode=mode, status="ok")
            if model.fixed_batch and batch != model.fixed_batch:
                row.update(status="skipped", reason=f"file has a fixed batch of {model.fixed_batch}")
                rows.append(row)
                continue
            sample = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
            if mode == "latency":
                def timed(s: np.ndarray = sample) -> dict[str, Any]:
                    return portable.latency_stats(_time_calls(lambda: model.run(s), job))

                row.update(portable.steady(timed, job.get("max_cv")))
                row["throughput_ips"] = round(batch * 1000 / row["median_ms"], 2) if row["median_ms"] else None
            else:
                row.update(throughput(model, sample, job))
            rows.append(row)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for row in rows:
        row["peak_rss_mb"] = round(peak_kb / 1024, 1)
    return rows


def run_in_child(art: dict[str, Any], job: dict[str, Any], base: Path) -> list[dict[str, Any]]:
    """Fork (no exec, so it works under qemu user-mode without binfmt) and collect the child's rows."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            payload: dict[str, Any] = {"rows": bench_artifact(art, job, base)}
        except BaseException as err:  # noqa: BLE001 - everything becomes the row's reason
            last = traceback.format_exc().strip().splitlines()[-1]
            payload = {"error": f"{type(err).__name__}: {err}" if str(err) else last}
        with os.fdopen(write_fd, "w") as fh:
            json.dump(payload, fh)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        text = fh.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return [{"status": "failed", "reason": f"runner crashed on this artifact (signal {os.WTERMSIG(status)})"}]
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return [{"status": "failed", "reason": f"runner child exited with status {os.WEXITSTATUS(status)}"}]
    if "error" in payload:
        return [{"status": "failed", "reason": payload["error"]}]
    return list(payload["rows"])


def main(argv: list[str]) -> int:
    job_path = Path(argv[1])
    job = json.loads(job_path.read_text())
    base = job_path.parent
    result: dict[str, Any] = {
        "runner_version": RUNNER_VERSION,
        "environment": {"cpu": portable.cpu_info(), "python": platform.python_version(), "platform": platform.platform(),
                        "runtimes": runtime_versions(), "threads": job["threads"], "cores": job.get("cores"),
                        "device": job.get("device", "cpu")},
        "artifacts": [],
    }
    for art in job["artifacts"]:
        if art["format"] not in LOADERS:
            rows = [{"status": "failed", "reason": f"the runner cannot read format {art['format']}"}]
        else:
            rows = run_in_child(art, job, base)
        result["artifacts"].append({"name": art["name"], "rows": rows})
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
