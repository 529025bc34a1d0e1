"""The explicit run context a stage receives: no stage reads global state."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from compressor.artifacts import Artifact
from compressor.distributed import SINGLE, DistInfo

if TYPE_CHECKING:
    import torch

    from compressor.data import DataModule
    from compressor.recipe import Recipe

T = TypeVar("T")


@dataclass
class StageOutput:
    """What a stage returns: its artifact (or its input, passed through) and its metrics."""

    artifact: Artifact
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage may use.

    Attributes:
        name: the stage's name in the recipe.
        key: its cache key; its artifact's id.
        recipe: the validated recipe.
        out_dir: where the stage writes its files; a temporary folder renamed when the stage finishes.
        work_dir: kept across interrupted attempts of this same stage (epoch checkpoints); removed
            after success.
        cache_root: the cache folder; ``artifact.path(cache_root)`` finds an input's files.
        inputs: reference field -> artifact(s) it names (``input`` always present).
        refs: reference field -> the stage name(s) as the recipe gives them.
        data_loader: builds the data on first use (shared by the stages of one run).
        device: torch device for training and evaluation.
        threads: intra-op threads for runtimes.
        seed: the recipe's seed.
        log: one-line messages for the user.
        show_progress: whether to draw progress bars.
        dist: this process's rank in a ``torchrun`` job; ``world_size`` is 1 except in stages the
            registry marks ``distributed`` (see :mod:`compressor.distributed`).
    """

    name: str
    key: str
    recipe: Recipe
    out_dir: Path
    work_dir: Path
    cache_root: Path
    inputs: dict[str, Any]
    refs: dict[str, Any]
    data_loader: Callable[[], DataModule]
    device: torch.device
    threads: int
    seed: int
    log: Callable[[str], None] = print
    show_progress: bool = field(default_factory=lambda: sys.stderr.isatty())
    dist: DistInfo = SINGLE

    @property
    def input(self) -> Artifact:
        art = self.inputs["input"]
        assert isinstance(art, Artifact)
        return art

    @property
    def data(self) -> DataModule:
        return self.data_loader()

    def new_artifact(self, kind: str, files: dict[str, str], meta: dict[str, Any]) -> Artifact:
        """An artifact whose files this stage wrote into ``out_dir``."""
        return Artifact(kind=kind, id=self.key, folder=self.key, files=files, meta=meta)

    def progress(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        from tqdm import tqdm

        yield from tqdm(
            iterable, desc=f"{self.name}: {desc}", total=total, disable=not self.show_progress,
            leave=False, file=sys.stderr, dynamic_ncols=True,
        )


def load_model(ctx: StageContext, artifact: Artifact) -> torch.nn.Module:
    """The PyTorch model of a ``model`` artifact, rebuilt from its metadata and weights."""
    from compressor.models import load_model_artifact

    return load_model_artifact(artifact.meta, artifact.path(ctx.cache_root, "weights"))


def save_model(ctx: StageContext, model: torch.nn.Module, meta: dict[str, Any]) -> Artifact:
    """Write ``model``'s weights into the stage folder; MACs and parameters join ``meta``."""
    from compressor.metrics import count_macs, count_params
    from compressor.models import save_model as write_weights

    write_weights(model, ctx.out_dir / "model.pt")
    shape = tuple(ctx.data.input_shape)
    stats = {"macs": count_macs(model, shape), "params": count_params(model), "input_shape": list(shape)}
    return ctx.new_artifact("model", {"weights": "model.pt"}, {**meta, **stats})
