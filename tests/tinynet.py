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


def tiny_cnn_bn_head(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A BatchNorm1d on the pooled features: one value per channel on a batch of one image, as in
    ResNets on small inputs, so a training batch of one image fails in BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, num_classes),
    )


def tiny_cnn_tf_bn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """BatchNorm with TensorFlow's slow running average (momentum 0.01, as TF ports of EfficientNet keep)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.01), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


def tiny_cnn_plain(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """No normalization at all (12 x 12 inputs): a learning rate far too high makes it diverge in a few steps."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12 * 12, num_classes),
    )


def tiny_cnn_nan(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """tiny_cnn with one NaN weight: training it gives a NaN loss at the first step."""
    import torch

    model = tiny_cnn(num_classes, in_channels)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return model


def tiny_cnn_histc(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    model = tiny_cnn(num_classes, in_channels)
    model.add_module("odd", Histogram())
    return model


# --- tiny members of the torchvision families covered by the zoo contract (tests/test_zoo_contract.py) ---
# Built from torchvision's own blocks at small widths, so the default suite exercises each family's graph
# features (AlexNet's 6x6 adaptive pool and dropout MLP, GoogLeNet's and Inception v3's branch concats,
# ResNeXt's grouped bottlenecks) in seconds; the full-size models run in the slow suite.

def tiny_alexnet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's AlexNet (its forward, adaptive 6x6 pool and dropout MLP) at 1/8 width."""
    from torchvision.models import AlexNet

    model = AlexNet(num_classes=num_classes)
    model.features = nn.Sequential(
        nn.Conv2d(in_channels, 8, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(8, 24, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(24, 48, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(48, 32, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
    )
    model.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(32 * 6 * 6, 256), nn.ReLU(inplace=True),
        nn.Dropout(), nn.Linear(256, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes),
    )
    return model


def tiny_googlenet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A stem and two of torchvision's GoogLeNet ``Inception`` blocks (four branches concatenated)."""
    from torchvision.models.googlenet import BasicConv2d, Inception

    return nn.Sequential(
        BasicConv2d(in_channels, 16, kernel_size=3, stride=2, padding=1),
        Inception(16, 8, 8, 16, 4, 8, 8),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Inception(40, 16, 8, 16, 4, 8, 8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(48, num_classes),
    )


def tiny_inception_v3(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A stem, torchvision's InceptionA (four branches) and InceptionC (7x1/1x7 factorised convolutions)."""
    from torchvision.models.inception import BasicConv2d, InceptionA, InceptionC

    return nn.Sequential(
        BasicConv2d(in_channels, 16, kernel_size=3, stride=2),
        InceptionA(16, pool_features=8),  # 64 + 64 + 96 + 8 = 232 channels
        nn.MaxPool2d(3, stride=2),
        InceptionC(232, channels_7x7=16),  # 4 x 192 = 768 channels
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(768, num_classes),
    )


def tiny_resnext(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet with grouped bottlenecks (ResNeXt: 8 groups x 4 channels), one block per stage."""
    from torchvision.models.resnet import Bottleneck, ResNet

    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes, groups=8, width_per_group=4)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


# --- a user's own layer classes (what timm and model ports are made of) ---------------------------------

class PaddedConv2d(nn.Conv2d):
    """A Conv2d subclass with extra padding of its own ("same" padding computed in forward, as in ports of
    TensorFlow models) and a learned per-channel output gain: a parameter torch-pruning meets unwrapped."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, **kwargs)
        import torch

        self.extra_pad = kernel_size // 2
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1))

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = nn.functional.pad(x, [self.extra_pad] * 4)
        return super().forward(x) * self.gain


class BatchNormAct(nn.BatchNorm2d):
    """A BatchNorm2d subclass with a fused activation (timm's BatchNormAct2d pattern)."""

    def __init__(self, num_features: int, act: str = "hardswish"):
        super().__init__(num_features)
        self.act = nn.Hardswish() if act == "hardswish" else nn.ReLU()

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.act(super().forward(x))


class HardCodedScale(nn.Module):
    """A per-channel scale whose forward hard-codes its channel count: breaks once channels are removed."""

    def __init__(self, channels: int):
        super().__init__()
        import torch

        self.channels = channels
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x * self.scale[None, :, None, None].expand(1, self.channels, 1, 1)


def custom_layers_net(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    """A user model built from its own layer classes, with a depthwise PaddedConv2d."""
    return nn.Sequential(
        PaddedConv2d(in_channels, width, 3, stride=2, bias=False), BatchNormAct(width),
        PaddedConv2d(width, width, 3, groups=width, bias=False), BatchNormAct(width, act="relu"),
        PaddedConv2d(width, width * 2, 1, bias=False), BatchNormAct(width * 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width * 2, num_classes),
    )


class SplitPaths(nn.Module):
    """Fixed-width paths over a split of its input (as timm's SelectiveKernel and Res2Net's Bottle2neck):
    the convolution inside breaks once the channels before it are pruned, the split being a constant."""

    def __init__(self, channels: int):
        super().__init__()
        self.width = channels // 2
        self.paths = nn.ModuleList(nn.Sequential(nn.Conv2d(self.width, self.width, 3, padding=1), nn.ReLU())
                                   for _ in range(2))

    def forward(self, x):  # type: ignore[no-untyped-def]
        import torch

        return torch.cat([path(part) for path, part in zip(self.paths, torch.split(x, self.width, dim=1),
                                                              strict=True)], 1)


def split_paths_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), SplitPaths(16),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


def hard_coded_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), HardCodedScale(16),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
