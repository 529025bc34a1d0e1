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


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0, ce_weight: float = 1.0,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha`` * TCKD + ``beta`` * NCKD + ``ce_weight`` * CE.

    TCKD matches the binary split target / all other classes; NCKD matches the distribution over
    the non-target classes only (the target logit is masked out of both softmaxes).
    """
    teacher_logits = teacher_logits.detach().float()
    student_logits = student_logits.float()
    t = temperature
    target = F.one_hot(labels, student_logits.shape[1]).bool()
    p_s = F.softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)

    def binary(p: torch.Tensor) -> torch.Tensor:
        gt = (p * target).sum(1, keepdim=True)
        return torch.cat([gt, 1 - gt], dim=1).clamp_min(1e-8)

    tckd = F.kl_div(binary(p_s).log(), binary(p_t), reduction="batchmean") * t**2
    masked = -1e4 * target  # removes the target class from the non-target distributions
    nckd = F.kl_div(
        F.log_softmax(student_logits / t + masked, dim=1),
        F.log_softmax(teacher_logits / t + masked, dim=1),
        reduction="batchmean", log_target=True,
    ) * t**2
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return alpha * tckd + beta * nckd + ce_weight * hard


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNet hint: mean squared error between an adapted student feature map and the teacher's.

    The student map (already projected to the teacher's channels) is resized to the teacher's
    spatial size when the two differ, so layers at different strides can be paired.
    """
    teacher_feature = teacher_feature.detach().float()
    student_feature = student_feature.float()
    if student_feature.shape[-2:] != teacher_feature.shape[-2:]:
        student_feature = F.interpolate(student_feature, size=teacher_feature.shape[-2:], mode="bilinear",
                                        align_corners=False)
    return F.mse_loss(student_feature, teacher_feature)


def triplet_batch_hard(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017): per anchor, its farthest positive and nearest negative
    in the batch (Euclidean); mean of ``relu(d_ap - d_an + margin)`` over anchors that have both."""
    squared = (emb**2).sum(1)
    dist = (squared[:, None] + squared[None, :] - 2 * emb @ emb.T).clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    positive, negative = same & ~eye, ~same
    hardest_pos = torch.where(positive, dist, torch.zeros_like(dist)).amax(1)
    hardest_neg = torch.where(negative, dist, torch.full_like(dist, float("inf"))).amin(1)
    valid = positive.any(1) & negative.any(1)
    if not valid.any():
        return emb.sum() * 0.0
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def embedding_distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Match the teacher's embeddings: ``1 - cos`` (mean) or mean squared error."""
    teacher = teacher.detach().float()
    student = student.float()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Match the batch's pairwise cosine-similarity matrix (relational KD); works across embedding sizes."""
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.detach().float(), dim=1)
    return F.mse_loss(s @ s.T, t @ t.T)
