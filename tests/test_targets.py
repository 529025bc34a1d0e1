"""Benchmark targets: local vs an SSH device at 127.0.0.1, failures as rows, arm64 emulation, CLI specs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.errors import CompressorError
from compressor.runtime.targets import (
    EmulatedTarget,
    Job,
    JobArtifact,
    LocalTarget,
    SshTarget,
    parse_target,
    run_targets,
)
from compressor.runtime.targets.cuda import CudaTarget, cuda_absent_reason
from compressor.runtime.targets.emulated import rootfs_problem
from tests.sshd import SshServer, needs_sshd, ssh_server_fixture  # noqa: F401 - the ssh_server fixture

REPO = Path(__file__).resolve().parent.parent
ROOTFS = REPO / ".cache" / "arm64-rootfs"
FAST = {"warmup": 1, "min_iters": 5, "time_budget_s": 0.02, "max_iters": 50}


def _tiny_onnx(folder: Path, seed: int = 0) -> Path:
    from tests.tinynet import tiny_cnn

    torch.manual_seed(seed)
    model = tiny_cnn().eval()
    path = folder / f"tiny{seed}.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return path


def _data(n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


@needs_sshd
def test_local_and_ssh_give_the_same_accuracy_and_failures_are_rows(tmp_path: Path, ssh_server: SshServer) -> None:
    onnx = _tiny_onnx(tmp_path)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    images, labels = _data()
    job = Job([JobArtifact("tiny", "onnx", onnx), JobArtifact("broken", "onnx", broken)], images, labels,
              batch_sizes=[1, 4], **FAST)
    common = {"host": "127.0.0.1", "port": ssh_server.port, "user": ssh_server.user, "key": ssh_server.key}
    wrong_hosts = tmp_path / "other_known_hosts"
    wrong_hosts.write_text(f"[127.0.0.1]:{ssh_server.port} ssh-ed25519 "
                           "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    targets = [
        LocalTarget(threads=1, cores=[0]),
        # the device's Python is this venv's: it has numpy and onnxruntime, as a board would
        SshTarget(name="board", known_hosts=ssh_server.known_hosts, python=sys.executable, **common),
        SshTarget(name="spoofed", known_hosts=wrong_hosts, **common),
        SshTarget(name="no-python", known_hosts=ssh_server.known_hosts, python="/nonexistent/python3", **common),
        SshTarget(name="down", host="127.0.0.1", port=1, user="nobody", key=ssh_server.key,
                  known_hosts=ssh_server.known_hosts, connect_timeout_s=3),
    ]
    local, board, spoofed, no_python, down = run_targets(targets, job, tmp_path / "work")

    for result in (local, board):
        ok = [r for r in result.rows["tiny"] if r["status"] == "ok"]
        assert [r["batch"] for r in ok] == [1, 4], result.rows
        assert ok[0]["median_ms"] > 0 and ok[0]["iterations"] >= 5 and ok[0]["peak_rss_mb"] > 10
        assert result.rows["broken"][0]["status"] == "failed"
        assert "broken" in result.rows["broken"][0]["reason"] or "Protobuf" in result.rows["broken"][0]["reason"]
    assert local.rows["tiny"][0]["top1"] == board.rows["tiny"][0]["top1"]
    assert local.rows["tiny"][0]["predictions"] == board.rows["tiny"][0]["predictions"]
    assert local.rows["tiny"][0]["cores"] == [0]
    assert board.environment["cpu"]["arch"] and "onnxruntime" in board.environment["runtimes"]
    assert "Host key verification failed" in spoofed.rows["tiny"][0]["reason"]
    assert no_python.rows["tiny"][0]["status"] == "failed" and "status 127" in no_python.rows["tiny"][0]["reason"]
    assert down.rows["tiny"][0]["status"] == "failed" and "ssh to down failed" in down.rows["tiny"][0]["reason"]


def test_cuda_target_is_skipped_with_a_note_without_a_gpu(tmp_path: Path) -> None:
    if cuda_absent_reason() is None:
        pytest.skip("a GPU is present: the cuda target runs instead")
    job = Job([JobArtifact("tiny", "onnx", _tiny_onnx(tmp_path))], **FAST)
    (result,) = run_targets([CudaTarget()], job, tmp_path / "work")
    assert result.rows["tiny"] == [{"status": "skipped", "reason": result.note}]
    assert "no CUDA GPU" in (result.note or "")


def test_emulated_target_without_rootfs_is_a_failed_row(tmp_path: Path) -> None:
    job = Job([JobArtifact("tiny", "onnx", tmp_path / "x.onnx")], **FAST)
    (result,) = run_targets([EmulatedTarget(rootfs=tmp_path / "none")], job, tmp_path / "work")
    assert result.rows["tiny"][0]["status"] == "failed"
    assert "make arm-rootfs" in result.rows["tiny"][0]["reason"]


def test_target_specs_from_the_command_line() -> None:
    t = parse_target("ssh:pi@board.local:2222,key=/k,known_hosts=/kh,name=pi4")
    assert (t.host, t.port, t.user, t.label, str(t.key)) == ("board.local", 2222, "pi", "pi4", "/k")
    assert parse_target("local:threads=2,cores=0-1").cores == [0, 1]
    assert str(parse_target("ssh:pi@h,key=~/k,known_hosts=/kh").key) == str(Path.home() / "k")
    assert parse_target("arm64-emulated").label == "arm64-emulated"
    with pytest.raises(CompressorError, match=r"target 'ssh:pi@h': key: Field required"):
        parse_target("ssh:pi@h")
    with pytest.raises(CompressorError, match=r"target 'locl': unknown type 'locl' \(did you mean \"local\"\?\)"):
        parse_target("locl")
    with pytest.raises(CompressorError, match=r"distinct names"):
        run_targets([LocalTarget(), LocalTarget()], Job([]), Path("/nonexistent"))


@pytest.mark.arm64
@pytest.mark.skipif(rootfs_problem(ROOTFS) is not None, reason=f"{rootfs_problem(ROOTFS)}")
def test_int8_onnx_and_tflite_agree_between_x86_and_emulated_arm64(tmp_path: Path) -> None:
    """Top-1 agreement of the same INT8 files on x86 and on arm64 (qemu) kernels, not raw logits:
    INT8 kernels round differently across architectures, so a few near-ties may flip. Tolerance:
    at least 97% of images get the same top-1, and top-1 accuracy differs by at most 2 points."""
    pytest.importorskip("litert_torch")
    from compressor.core.data import FASHION_MNIST_DIR, read_idx
    from tests.int8_artifacts import fit_tiny, onnx_int8, tflite_int8

    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("embedded data missing: run 'make data'")
    x = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:1200].astype(np.float32)[:, None] / 255
    y = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:1200].astype(np.int64)
    torch.set_num_threads(1)
    model = fit_tiny(x[:1000], y[:1000])
    onnx_path = onnx_int8(model, x[:64], tmp_path)
    tflite_path = tflite_int8(model, x[:64], tmp_path)
    job = Job([JobArtifact("onnx_int8", "onnx", onnx_path), JobArtifact("tflite_int8", "tflite", tflite_path)],
              x[1000:], y[1000:], **FAST)
    native, arm = run_targets([LocalTarget(threads=1), EmulatedTarget(rootfs=ROOTFS, threads=1)], job,
                              tmp_path / "work")
    assert arm.emulated and arm.environment["cpu"]["arch"] == "aarch64"
    for name in ("onnx_int8", "tflite_int8"):
        x86_row, arm_row = native.rows[name][0], arm.rows[name][0]
        assert x86_row["status"] == "ok" and arm_row["status"] == "ok", (x86_row, arm_row)
        assert x86_row["top1"] > 30, "the tiny model learned something"
        agree = np.mean(np.asarray(x86_row["predictions"]) == np.asarray(arm_row["predictions"])) * 100
        assert agree >= 97, f"{name}: x86 and arm64 top-1 agree on only {agree:.1f}%"
        assert abs(x86_row["top1"] - arm_row["top1"]) <= 2
    assert arm.rows["tflite_int8"][0]["runtime"]["input_dtype"] == "int8"
    assert arm.rows["tflite_int8"][0]["precision"] == "int8"


def test_a_target_can_score_an_even_subset(tmp_path: Path) -> None:
    from compressor.runtime.targets import subset, target_row

    assert subset(10, 3).tolist() == [0, 4, 9] and subset(3, None).tolist() == [0, 1, 2]
    images, labels = _data(40)
    job = Job([JobArtifact("tiny", "onnx", _tiny_onnx(tmp_path))], images, labels, **FAST)
    full, part = run_targets([LocalTarget(name="all"), LocalTarget(name="ten", accuracy_images=10)], job,
                             tmp_path / "work")
    assert full.rows["tiny"][0]["accuracy_images"] == 40 and part.rows["tiny"][0]["accuracy_images"] == 10
    reference = np.asarray(full.rows["tiny"][0]["predictions"])
    row = target_row({"stage": "tiny"}, part, part.rows["tiny"][0], reference)
    assert row["top1_agreement"] == 100.0 and "predictions" not in row
