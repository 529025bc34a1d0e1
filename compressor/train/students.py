"""Pieces of distillation that are not the stage itself: student construction, feature taps, teacher cache."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.core.config import ModelSource
from compressor.errors import CompressorError, did_you_mean
from compressor.train.models import build_model, load_source_weights, model_meta, structure_of


def _stem_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    msg = "the student has no Conv2d layer, so stem_stride cannot be applied; remove stem_stride"
    raise CompressorError(msg)


def set_stem_stride(model: nn.Module, stride: int) -> None:
    """Rebuild the first convolution with ``stride`` (1 keeps small images, e.g. 28-32 px, from vanishing)."""
    name, conv = _stem_conv(model)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                    stride, conv.padding, conv.dilation, conv.groups,  # type: ignore[arg-type]
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def build_student(source: ModelSource, num_classes: int, in_channels: int, stem_stride: int | None,
                  seed: int, embedding: Any = None, input_shape: tuple[int, ...] | None = None,
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """An untrained (or ``source.checkpoint``-initialised) student and the metadata that rebuilds it.

    With ``embedding`` (an :class:`~compressor.core.config.EmbeddingConfig`) the student is wrapped as an
    embedding net (``input_shape`` sizes its projection), and its structure is recorded on the wrapper.
    """
    classes = source.num_classes or num_classes
    channels = source.in_channels or in_channels
    torch.manual_seed(seed)
    model = build_model(source, classes, channels)
    if stem_stride is not None:
        set_stem_stride(model, stem_stride)
    pretrained = load_source_weights(model, source, classes)
    reference = build_model(source, classes, channels)
    spec = None
    if embedding is not None:
        from compressor.train.embedding import embedding_net, embedding_spec

        assert input_shape is not None
        spec = embedding_spec(embedding, model, input_shape)
        model, reference = embedding_net(model, spec), embedding_net(reference, spec)
    meta = model_meta(source, classes, channels, structure_of(model, reference))
    if spec is not None:
        meta["embedding"] = spec
    if pretrained is not None:
        meta["pretrained"] = pretrained
    return model, meta


class FeatureTap:
    """Keeps the latest output of one named layer (a forward hook)."""

    def __init__(self, model: nn.Module, layer: str, role: str, field: str):
        modules = dict(model.named_modules())
        if layer not in modules or layer == "":
            names = [n for n in modules if n]
            msg = (f"{field}: the {role} has no layer named '{layer}'{did_you_mean(layer, names)}; "
                   f"top-level layers: {', '.join(n for n in names if '.' not in n)}")
            raise CompressorError(msg)
        self.value: torch.Tensor | None = None
        self.handle = modules[layer].register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inp: Any, out: Any) -> None:
        self.value = out[0] if isinstance(out, tuple | list) else out

    def take(self) -> torch.Tensor:
        assert self.value is not None, "forward pass did not reach the tapped layer"
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        self.handle.remove()


def hint_adapter(student: nn.Module, s_tap: FeatureTap, teacher: nn.Module, t_tap: FeatureTap,
                 input_shape: tuple[int, ...], field: str) -> nn.Module:
    """A 1x1 convolution + batch norm mapping the student layer's channels to the teacher layer's."""
    shapes = []
    for model, tap in ((student, s_tap), (teacher, t_tap)):
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(2, *input_shape, device=device))
        model.train(was_training)
        shapes.append(tuple(tap.take().shape))
    (s_shape, t_shape) = shapes
    if len(s_shape) != 4 or len(t_shape) != 4:
        msg = (f"{field}: feature hints pair convolutional feature maps (N, C, H, W); the chosen layers give "
               f"{s_shape} (student) and {t_shape} (teacher); pick convolutional blocks")
        raise CompressorError(msg)
    return nn.Sequential(nn.Conv2d(s_shape[1], t_shape[1], 1, bias=False), nn.BatchNorm2d(t_shape[1]))


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(image.tobytes(), digest_size=16).digest()


class TeacherLogitCache:
    """Teacher logits computed once per training image, looked up by the image's content.

    Valid only when training images are not augmented (each image is the same tensor every epoch),
    which the stage checks. Looking up by content keeps the cache correct under any sampling order,
    sharding across ranks included. An image not in the cache goes through the teacher.
    """

    def __init__(self, teacher: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256):
        from compressor.metrics.classification import predict

        logits = predict(teacher, images, device, batch_size)
        self.table = {_digest(img): torch.from_numpy(row) for img, row in zip(images, logits, strict=True)}
        self.teacher = teacher
        self.hits = 0
        self.misses = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.table.get(_digest(img)) for img in x.detach().float().cpu().numpy()]
        if all(r is not None for r in rows):
            self.hits += len(rows)
            return torch.stack(rows).to(x.device)  # type: ignore[arg-type]
        self.misses += len(rows)
        with torch.no_grad():
            return self.teacher(x)
