"""``cuda``: the GPU through ONNX Runtime's CUDA execution provider (and OpenVINO GPU where installed).

Skipped with a note, never failed, on a machine without a CUDA device. TFLite files have no GPU path in
the runner and are skipped on this target. PyTorch CUDA FP32/FP16 rows of model artifacts come from the
benchmark stage itself (they need the package, which the runner does not import).
"""

from __future__ import annotations

from pathlib import Path

from compressor.runtime.targets.base import CudaTarget, Job, LocalTarget, TargetResult


def cuda_absent_reason() -> str | None:
    """Why there is no usable GPU here, or None when there is one."""
    try:
        import torch

        torch_gpu = torch.cuda.is_available()
    except ImportError:
        torch_gpu = False
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    if not torch_gpu:
        return ("no CUDA GPU on this machine (torch.cuda.is_available() is False; onnxruntime providers: "
                + ", ".join(providers) + ")")
    if "CUDAExecutionProvider" not in providers:
        return "a GPU is present but this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


def run_cuda(target: CudaTarget, job: Job, folder: Path) -> TargetResult:
    reason = cuda_absent_reason()
    if reason:
        return TargetResult.all_rows(target, job, "skipped", reason)
    from compressor.runtime.targets.local import run_local

    gpu_job = Job(**{**job.__dict__, "artifacts": [a for a in job.artifacts if a.format != "tflite"]})
    local = LocalTarget(name=target.label, threads=target.threads, cores=target.cores, timeout_s=target.timeout_s)
    result = run_local(local, gpu_job, folder, device="cuda")
    result.type = "cuda"
    for art in job.artifacts:
        if art.format == "tflite":
            result.rows[art.name] = [{"status": "skipped", "reason": "no GPU path for TFLite in the runner"}]
    return result
