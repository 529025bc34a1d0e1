"""The explicit run context a stage receives: no stage reads global state."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from compressor.core.artifacts import Artifact
from compressor.core.config import EmbeddingConfig
from compressor.core.distributed import SINGLE, DistInfo

if TYPE_CHECKING:
    import torch

    from compressor.core.data import DataModule

T = TypeVar("T")


@dataclass(frozen=True)
class TaskSpec:
    """What the recipe's task is, the one part of the recipe that stages read.

    Attributes:
        kind: ``classification`` (logits, top-k) or ``embedding`` (vectors, rank-k and mAP).
        embedding: the recipe's ``embedding`` section (``None`` for classifiers).
    """

    kind: str = "classification"
    embedding: EmbeddingConfig | None = None

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"

    def require_embedding(self) -> EmbeddingConfig:
        """The embedding section of an embedding task (an internal error to ask a classifier for it)."""
        assert self.embedding is not None, "embedding section asked of a classification task"
        return self.embedding


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
        task: the recipe's task (classification or embedding, with its embedding section).
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
            registry marks ``distributed`` (see :mod:`compressor.core.distributed`).
    """

    name: str
    key: str
    task: TaskSpec
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

