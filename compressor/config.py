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
