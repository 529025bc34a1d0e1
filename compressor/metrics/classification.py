"""Accuracy metrics and model statistics (MACs, parameters)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5 (when there are more than 5 classes), per-class accuracy and the confusion matrix."""
    pred = logits.argmax(1)
    top1 = float((pred == labels).mean()) if len(labels) else 0.0
    k = min(5, logits.shape[1])
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top5 = float((topk == labels[:, None]).any(1).mean()) if len(labels) else 0.0
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    return {
        "top1": round(top1 * 100, 3),
        "top5": round(top5 * 100, 3),
        "images": int(len(labels)),
        "per_class_top1": [round(float(x) * 100, 2) for x in per_class],
        "confusion": confusion.tolist(),
    }


def agreement(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (%) and max absolute logit error of ``candidate`` against ``reference``."""
    agree = float((candidate.argmax(1) == reference.argmax(1)).mean()) * 100
    return {"top1_agreement": round(agree, 3), "max_abs_error": float(np.abs(candidate - reference).max())}


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` on preprocessed NCHW images."""
    model.eval().to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).to(device)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (convolutions and linear layers)."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        k = int(np.prod(module.kernel_size))
        total += out.numel() * (module.in_channels // module.groups) * k

    def linear_hook(module: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)
