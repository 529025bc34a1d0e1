"""One runtime layer: the in-process backends and the device runner share portable.py, so the same
artifact gives the same outputs through both, int8 inputs at half-way values included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compressor.runtime import portable
from compressor.runtime.backends import RuntimeOptions, get_backend
from compressor.runtime.targets import Job, JobArtifact, LocalTarget, stage_job


def test_quantize_rounds_half_way_values_before_the_zero_point() -> None:
    scale, zero = 0.5, 3
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 100.0, -100.0], dtype=np.float32)  # x/scale = k + 0.5
    q = portable.quantize(x, np.int8, scale, zero)
    # round half to even of x/scale (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2), then + zero, saturate
    assert q.tolist() == [3, 5, 5, 3, 1, 127, -128]
    # the old runner rounded x/scale + zero: 3.5 -> 4, which is the drift this layer removes
    assert np.round(x[0] / scale + zero) == 4
    assert portable.dequantize(q[:1], scale, zero).tolist() == [0.0]


def test_layout_is_declared_or_guessed_once() -> None:
    assert portable.input_layout([1, 28, 28, 1]) == "NHWC"
    assert portable.input_layout([1, 1, 28, 28]) == "NCHW"
    assert portable.input_layout([1, 1, 28, 28], "NHWC") == "NHWC"
    batch = np.zeros((2, 3, 4, 5), np.float32)
    assert portable.to_layout(batch, "NHWC").shape == (2, 4, 5, 3)


def test_the_backends_and_the_runner_use_the_one_module() -> None:
    from compressor.runtime import measure
    from compressor.runtime.backends import litert
    from compressor.runtime.targets import runner

    assert runner.portable is portable
    assert litert.quantize is portable.quantize
    assert measure.latency_stats is portable.latency_stats


class HalfwayInt8Input(torch.nn.Module):
    """A model whose quantized input scale makes many preprocessed pixels land on half-way values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def _outputs_of_the_runner(tmp_path: Path, art: JobArtifact, images: np.ndarray) -> np.ndarray:
    """Logits of ``art`` as the device runner computes them: its model class, in a child process where the
    package cannot be imported, so the runner uses the portable.py staged beside it (as on a device)."""
    job_json = stage_job(Job([art], images, None, warmup=0, min_iters=1, time_budget_s=0.01), tmp_path / "job",
                         LocalTarget())
    folder = job_json.parent
    spec = json.loads(job_json.read_text())["artifacts"][0]
    code = "\n".join([
        "import sys, numpy as np",
        "sys.modules['compressor'] = None  # as on a device: the package is not there",
        f"sys.path.insert(0, {str(folder)!r})",
        "import runner",
        "assert runner.portable.__file__.startswith(sys.path[0]), runner.portable.__file__",
        f"m = runner.LOADERS[{spec['format']!r}]({str(folder / spec['path'])!r}, 1, 'cpu')",
        "x = np.load('inputs.npy')",
        "np.save('out.npy', np.concatenate([m.run(x[i:i + 1]) for i in range(len(x))]))",
    ])
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=folder)
    return np.load(folder / "out.npy")


def test_int8_tflite_gives_identical_outputs_in_process_and_in_the_runner(tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    from tests.int8_artifacts import tflite_int8

    torch.manual_seed(0)
    model = HalfwayInt8Input().eval()
    # inputs in [-0.2, 0.8]: an odd zero point, where rounding before or after adding it differs
    calib = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32) - 0.2
    calib[0, 0, 0, :2] = -0.2, 0.8
    path = tflite_int8(model, calib, tmp_path)
    session = get_backend("litert").load(path, {}, RuntimeOptions(threads=1))
    scale, zero = session.input["quantization"]
    assert np.dtype(session.input["dtype"]).kind == "i", "the file takes int8 input"
    assert zero % 2 == 1, f"zero point {zero}: pick a calibration range that gives an odd one"
    # pixels at (k + 0.5) * scale - zero * scale: every one is a half-way value before the zero point
    k = np.random.default_rng(1).integers(-20, 20, size=(8, 1, 8, 8))
    images = ((k + 0.5 - zero) * scale).astype(np.float32)
    old_rule = np.clip(np.round(images / scale + zero), -128, 127)
    assert (old_rule != portable.quantize(images, np.int8, scale, zero)).any(), "the inputs test the drift"
    inproc = np.concatenate([session.run(images[i : i + 1]) for i in range(len(images))])
    art = JobArtifact("int8", "tflite", path)
    via_runner = _outputs_of_the_runner(tmp_path, art, images)
    np.testing.assert_array_equal(inproc, via_runner)


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tflite", "int8_tflite"])
def test_a_bound_input_times_the_inference_and_gives_the_outputs_of_run(fmt: str, model_files: Any,
                                                                        tmp_path: Path) -> None:
    """The latency call (input set once, in the file's layout and type, as benchmark_app times a model) returns
    what ``run`` returns, call after call; a backend without ``bind`` is timed through ``run``."""
    from compressor.runtime.backends import timed_call

    if fmt == "int8_tflite":
        pytest.importorskip("ai_edge_quantizer")
        from tests.int8_artifacts import tflite_int8

        torch.manual_seed(0)
        calib = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
        path, backend, shape = tflite_int8(HalfwayInt8Input().eval(), calib, tmp_path), "litert", (1, 1, 8, 8)
    else:
        path, backend = model_files.get(fmt), {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}[fmt]
        shape = (1, 1, 12, 12)
    session = get_backend(backend).load(path, {}, RuntimeOptions(threads=1))
    x = np.random.default_rng(2).random(shape, dtype=np.float32)
    expected = session.run(x)
    call = timed_call(session, x)
    assert hasattr(session, "bind") == (backend != "onnxruntime")
    for _ in range(3):
        np.testing.assert_array_equal(call(), expected)
