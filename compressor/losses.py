"""Training losses shared by stages (distillation during pruning fine-tune, the distill stage, QAT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton knowledge distillation: ``alpha`` * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=1),
        reduction="batchmean", log_target=True,
    ) * temperature**2
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return alpha * soft + (1 - alpha) * hard
