from __future__ import annotations

import torch

from compressor.train.losses import kd_loss


def test_kd_loss_is_cross_entropy_when_alpha_zero_and_zero_kl_on_match() -> None:
    logits = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(kd_loss(logits, torch.randn(8, 5), labels, alpha=0.0), ce)
    assert kd_loss(logits, logits, labels, alpha=1.0).abs() < 1e-6
    assert kd_loss(logits, -logits, labels, alpha=1.0) > 0.1
