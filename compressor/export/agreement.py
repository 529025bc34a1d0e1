"""Check an exported artifact against the PyTorch model it came from, on the same images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from compressor.errors import ExportError
from compressor.metrics.evaluation import CLASSIFICATION, Task


def run_batched(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                batch_sizes: tuple[int, ...] | None, batch: int = 64) -> np.ndarray:
    """Logits over ``images``; a file with a fixed batch gets exactly that batch (last one padded)."""
    size = batch_sizes[0] if batch_sizes else batch
    outputs = []
    for i in range(0, len(images), size):
        chunk = images[i : i + size]
        n = len(chunk)
        if batch_sizes and n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(run(chunk)[:n])
    return np.concatenate(outputs)


def check_agreement(
    fmt: str, precision: str, candidate: np.ndarray, reference: np.ndarray, min_agreement: float,
    task: Task = CLASSIFICATION,
) -> dict[str, Any]:
    """Agreement metrics; raises :class:`ExportError` naming format and figures below ``min_agreement``.

    Classification compares top-1 predictions; embeddings compare by mean cosine similarity x 100.
    """
    result = task.agreement(candidate, reference)
    result["verify_images"] = int(len(reference))
    if task.is_embedding and result["agreement"] < min_agreement:
        msg = (f"{fmt} {precision} embedding artifact has mean cosine similarity {result['mean_cosine']:.4f} "
               f"(x 100 = {result['agreement']:.2f}) with PyTorch on {len(reference)} validation images "
               f"(min {result['min_cosine']:.4f}); the stage requires {min_agreement} (option min_agreement)")
        raise ExportError(msg)
    if not task.is_embedding and result["top1_agreement"] < min_agreement:
        msg = (f"{fmt} {precision} artifact agrees with PyTorch on only {result['top1_agreement']:.2f}% of "
               f"{len(reference)} validation images (max abs logit error {result['max_abs_error']:.4g}); "
               f"the stage requires {min_agreement}% (option min_agreement)")
        raise ExportError(msg)
    return result


DEFAULT_MIN_AGREEMENT = {"fp32": 99.9, "fp16": 99.0}


def verify_artifact(backend: str, path: Any, meta: dict[str, Any], reference: np.ndarray, images: np.ndarray,
                    min_agreement: float | None, threads: int, settings: dict[str, Any] | None = None,
                    task: Task = CLASSIFICATION) -> dict[str, Any]:
    """Run an exported file on ``backend`` over ``images`` and check it against PyTorch's ``reference`` logits.

    ``min_agreement`` None takes the precision's default (99.9% for fp32, 99% for fp16). The metrics
    (top-1 agreement, max abs logit error, image count, the threshold) go to the stage's manifest.
    """
    from compressor.runtime.backends import RuntimeOptions, get_backend

    fmt, precision = str(meta["format"]), str(meta["precision"])
    threshold = min_agreement if min_agreement is not None else DEFAULT_MIN_AGREEMENT.get(precision, 99.0)
    session = get_backend(backend).load(path, meta, RuntimeOptions(threads=threads, settings=settings or {}))
    candidate = run_batched(session.run, images, session.batch_sizes())
    result = check_agreement(fmt, precision, candidate, reference, threshold, task)
    result["min_agreement"] = threshold
    result["verified_with"] = backend
    return result
