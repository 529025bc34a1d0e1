"""Embedding models: the network that outputs embeddings, and the objective that trains it.

A model artifact of an embedding recipe holds an :class:`EmbeddingNet`: the source model with its
classifier dropped (or cut at a named layer), global-average pooled and flattened, optionally
projected to ``dim`` and L2-normalised *inside* the network, so every exported file (ONNX, OpenVINO,
TFLite) outputs the same unit vectors PyTorch does. The training head (cosine softmax, CosFace,
ArcFace) lives in :class:`EmbeddingObjective`, a separate module the training loop optimises and
checkpoints but never saves into the artifact.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from compressor.core.config import EmbeddingConfig, EmbeddingLoss
from compressor.errors import ModelSourceError, did_you_mean
from compressor.train.losses import triplet_batch_hard


class EmbeddingNet(nn.Module):
    """``backbone`` -> pool/flatten -> optional Linear projection -> optional L2 normalisation."""

    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int | None, normalize: bool):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(feature_dim, dim) if dim is not None else None
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        if isinstance(f, dict):  # a feature extractor returns {layer: tensor}
            f = next(iter(f.values()))
        if f.dim() == 4:
            f = F.adaptive_avg_pool2d(f, 1)
        f = torch.flatten(f, 1)
        if self.proj is not None:
            f = self.proj(f)
        if self.normalize:
            f = F.normalize(f, dim=1)
        return f


def _drop_head(model: nn.Module) -> int:
    """Replace the model's last Linear (its classifier) by Identity; return its input features."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        msg = ("embedding.output: penultimate drops the model's last Linear layer, but the model has none; use "
               "output: layer with a module name, or output: model if it returns embeddings")
        raise ModelSourceError(msg)
    name, head = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Identity())
    return int(head.in_features)


def _cut_at(model: nn.Module, layer: str) -> nn.Module:
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    modules = [n for n, _ in model.named_modules() if n]
    if layer not in modules:
        msg = f"embedding.layer: the model has no module '{layer}'{did_you_mean(layer, modules)}"
        raise ModelSourceError(msg)
    nodes = get_graph_node_names(model)[1]
    if layer not in nodes:
        msg = f"embedding.layer: '{layer}' is not a traceable output of the model; traceable: {', '.join(nodes[-8:])}"
        raise ModelSourceError(msg)
    return create_feature_extractor(model, return_nodes={layer: "embedding"})


def embedding_spec(cfg: EmbeddingConfig, model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The JSON-ready description (in the artifact's meta) that rebuilds the embedding net of ``model``."""
    spec: dict[str, Any] = {"output": cfg.output, "layer": cfg.layer, "dim": cfg.dim, "normalize": cfg.normalize}
    probe = embedding_net(copy.deepcopy(model), {**spec, "dim": None, "normalize": False, "feature_dim": 1})
    with torch.no_grad():
        spec["feature_dim"] = int(probe.eval()(torch.zeros(1, *input_shape)).shape[1])
    return spec


def embedding_net(model: nn.Module, spec: dict[str, Any]) -> EmbeddingNet:
    """Wrap a freshly built (or checkpoint-loaded) source model as the embedding network ``spec`` describes."""
    if spec["output"] == "penultimate":
        _drop_head(model)
    elif spec["output"] == "layer":
        model = _cut_at(model, str(spec["layer"]))
    return EmbeddingNet(model, int(spec["feature_dim"]), spec.get("dim"), bool(spec["normalize"]))


class MarginHead(nn.Module):
    """Cosine classifier over identities: ``scale`` * cos, with a CosFace (cos - m) or ArcFace (cos(theta + m))
    margin on the true identity's logit."""

    def __init__(self, dim: int, classes: int, kind: str, scale: float, margin: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.kind, self.scale, self.margin = kind, scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb.float(), dim=1) @ F.normalize(self.weight, dim=1).T
        target = F.one_hot(labels, cos.shape[1]).bool()
        if self.kind == "cosface":
            cos = cos - self.margin * target
        elif self.kind == "arcface":
            theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
            # past pi - m the angle would wrap around; fall back to CosFace's linear penalty there
            arc = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin),
                              cos - self.margin * math.sin(self.margin))
            cos = torch.where(target, arc, cos)
        return self.scale * cos


class EmbeddingObjective(nn.Module):
    """Loss on a batch of embeddings: the head's cross-entropy plus ``triplet`` x batch-hard triplet."""

    def __init__(self, cfg: EmbeddingLoss, dim: int, classes: int):
        super().__init__()
        self.cfg = cfg
        self.head = (MarginHead(dim, classes, cfg.head, cfg.scale, cfg.resolved_margin())
                     if cfg.head != "none" else None)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = emb.new_zeros((), dtype=torch.float32)
        if self.head is not None:
            loss = loss + F.cross_entropy(self.head(emb, labels), labels)
        if self.cfg.triplet > 0:
            loss = loss + self.cfg.triplet * triplet_batch_hard(emb.float(), labels, self.cfg.triplet_margin)
        return loss


def output_dim(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> int:
    was_training = model.training
    with torch.no_grad():
        dim = int(model.eval()(torch.zeros(2, *input_shape, device=device)).shape[1])
    model.train(was_training)
    return dim


def objective_for(cfg: EmbeddingConfig, model: nn.Module, classes: int, input_shape: tuple[int, ...],
                  device: torch.device) -> EmbeddingObjective:
    """The training objective of ``model`` (its head sized to the model's embedding and the identities)."""
    return EmbeddingObjective(cfg.loss, output_dim(model, input_shape, device), classes).to(device)
