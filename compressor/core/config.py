"""Frozen, strict configuration models shared by recipes and stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Base for every config: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Preprocess(Strict):
    """How an image becomes the model's input tensor; recorded with every exported model."""

    resize: int | None = Field(None, ge=1, description="Resize the shorter side to this many pixels.")
    crop: int | None = Field(None, ge=1, description="Center crop to a square of this size.")
    channels: Literal[1, 3] = Field(3, description="1 converts images to greyscale, 3 to RGB (RGBA drops alpha).")
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @model_validator(mode="after")
    def _check_stats(self) -> Preprocess:
        for field in ("mean", "std"):
            values = getattr(self, field)
            if len(values) not in (1, self.channels):
                msg = f"{field} needs 1 or {self.channels} values for channels={self.channels}, got {len(values)}"
                raise ValueError(msg)
        if any(s <= 0 for s in self.std):
            msg = "std values must be positive"
            raise ValueError(msg)
        return self


class DataConfig(Strict):
    """Where the images come from and how many of them to use."""

    source: Literal["fashion-mnist", "imagefolder"] = "fashion-mnist"
    path: Path | None = Field(
        None,
        description="ImageFolder root (train/<class>/..., val/<class>/...), or the folder of the "
        "Fashion-MNIST IDX files (default: the Debian package's folder).",
    )
    train_per_class: int | None = Field(None, ge=1, description="Use at most this many training images per class.")
    val_per_class: int | None = Field(None, ge=1, description="Use at most this many validation images per class.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train split off as val when val is missing.")
    batch_size: int = Field(128, ge=1, le=65536)
    workers: int = Field(0, ge=0, le=64)
    augment: bool = Field(True, description="Random crop (padding 1/8 of the size) and horizontal flip in training.")
    preprocess: Preprocess = Preprocess()

    @model_validator(mode="after")
    def _check_path(self) -> DataConfig:
        if self.source == "imagefolder" and self.path is None:
            msg = "source 'imagefolder' needs data.path (the folder holding train/ and val/)"
            raise ValueError(msg)
        return self


class ModelSource(Strict):
    """A model to start from: a torchvision architecture or a ``package.module:factory`` entry point."""

    arch: str | None = Field(None, description="torchvision architecture name, e.g. resnet18.")
    entry_point: str | None = Field(None, description="'package.module:factory' returning an nn.Module.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")
    num_classes: int | None = Field(None, ge=1, description="Default: the number of classes in the data.")
    in_channels: int | None = Field(None, ge=1, description="Default: data.preprocess.channels.")
    checkpoint: Path | None = Field(None, description="A state dict (.pt) loaded with weights_only=True.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.arch is None) == (self.entry_point is None):
            msg = "give exactly one of 'arch' (a torchvision name) or 'entry_point' ('package.module:factory')"
            raise ValueError(msg)
        if self.entry_point is not None and ":" not in self.entry_point:
            msg = f"entry_point '{self.entry_point}' must look like 'package.module:factory'"
            raise ValueError(msg)
        return self


class StageConfig(Strict):
    """Fields every stage has. ``input`` names the stage whose artifact it takes (default: the previous one)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    input: str | None = Field(None, description="Stage whose output this stage takes; 'model' is the recipe's model.")


class PKSampling(Strict):
    """P x K batches: ``identities`` identities with ``images`` images each (batch-hard mining needs positives)."""

    identities: int = Field(8, ge=2, le=4096, description="P: identities per batch.")
    images: int = Field(4, ge=2, le=256, description="K: images per identity in a batch.")


class EmbeddingLoss(Strict):
    """How embedding models train (every stage that trains uses it: train, prune fine-tune, distill, QAT).

    The training head maps embeddings to identities and is kept out of the saved and exported model.
    """

    head: Literal["ce", "cosface", "arcface", "none"] = Field(
        "cosface", description="ce: cosine-softmax classifier with cross-entropy; cosface / arcface: the same "
        "with an additive cosine / angular margin; none: metric loss only.")
    scale: float = Field(16.0, gt=0, le=256, description="Logit scale of the cosine head.")
    margin: float | None = Field(None, ge=0, lt=1.5, description="Margin (default 0.25 cosface, 0.3 arcface).")
    triplet: float = Field(0.0, ge=0, le=100, description="Weight of the batch-hard triplet loss (0: off).")
    triplet_margin: float = Field(0.3, gt=0, le=10)
    sampler: PKSampling | None = Field(None, description="P x K identity batches (single process only); "
                                       "default: shuffled batches of the stage's batch_size.")

    @model_validator(mode="after")
    def _something(self) -> EmbeddingLoss:
        if self.head == "none" and self.triplet == 0:
            msg = "head: none with triplet: 0 trains nothing; set triplet > 0 or choose a head"
            raise ValueError(msg)
        if self.head == "ce" and self.margin:
            msg = "head: ce has no margin; use cosface or arcface for a margin"
            raise ValueError(msg)
        return self

    def resolved_margin(self) -> float:
        if self.margin is not None:
            return self.margin
        return {"cosface": 0.25, "arcface": 0.3}.get(self.head, 0.0)


class EmbeddingConfig(Strict):
    """``task: embedding``: where the embedding comes from, how it is compared, and how it trains."""

    output: Literal["penultimate", "layer", "model"] = Field(
        "penultimate", description="penultimate: drop the classifier's last Linear; layer: the output of "
        "'layer' (pooled and flattened); model: the model already returns embeddings.")
    layer: str | None = Field(None, min_length=1, description="Module name for output: layer, e.g. avgpool.")
    dim: int | None = Field(None, ge=1, le=65536, description="Add a Linear projection to this many dimensions.")
    normalize: bool = Field(True, description="L2-normalise inside the model, so exported files output unit vectors.")
    distance: Literal["cosine", "euclidean"] = "cosine"
    metric: Literal["rank1", "map"] = Field("rank1", description="Score that picks the best epoch and that "
                                            "accuracy control and the report's budget use.")
    query_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each val identity's images used as queries.")
    split_seed: int | None = Field(None, ge=0, description="Seed of the query/gallery split (default: the recipe's).")
    loss: EmbeddingLoss = EmbeddingLoss()

    @model_validator(mode="after")
    def _layer(self) -> EmbeddingConfig:
        if (self.output == "layer") != (self.layer is not None):
            msg = "output: layer needs 'layer' (a module name), and 'layer' is only used with output: layer"
            raise ValueError(msg)
        return self
