"""Tiny CNNs for fast tests, importable as entry points (``tests.tinynet:tiny_cnn``)."""

from __future__ import annotations

from torch import nn


def tiny_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, width * 2, 3, padding=1, bias=False),
        nn.BatchNorm2d(width * 2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width * 2, num_classes),
    )


def not_a_module() -> str:
    return "I am a string"


def broken_factory() -> nn.Module:
    msg = "factory failed on purpose"
    raise RuntimeError(msg)


class Histogram(nn.Module):
    """Adds zero times a histogram: trainable, but ``aten::histc`` has no converter in OpenVINO or LiteRT."""

    def forward(self, logits):  # type: ignore[no-untyped-def]
        import torch

        return logits + 0 * torch.histc(logits.detach(), bins=4).sum()


def tiny_cnn_histc(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    model = tiny_cnn(num_classes, in_channels)
    model.add_module("odd", Histogram())
    return model
