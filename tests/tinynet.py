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
