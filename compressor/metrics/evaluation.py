"""Task-aware evaluation: the one place that knows how a model's outputs are scored.

Classification outputs are logits scored by top-1/top-5; embedding outputs are scored by retrieval
(rank-1, rank-5, mAP over a seeded query/gallery split). Stages ask a :class:`Task` for the score of
their outputs, its primary metric (what picks the best epoch, what accuracy control and gates
compare) and the agreement of a candidate (an export, an INT8 model) with its reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from compressor.core.config import EmbeddingConfig
from compressor.metrics.classification import agreement, classification_metrics
from compressor.metrics.names import HEADLINE, METRICS

if TYPE_CHECKING:
    from compressor.core.context import StageContext

LABELS = {k: METRICS[k].label for k in HEADLINE}


@dataclass(frozen=True)
class Task:
    """What the model outputs and how those outputs are judged."""

    kind: str = "classification"
    num_classes: int = 0
    embedding: EmbeddingConfig | None = None
    seed: int = 0

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"

    @property
    def primary(self) -> str:
        """Key of the metric that ranks models: top1, rank1 or map."""
        return self.embedding.metric if self.embedding is not None and self.is_embedding else "top1"

    @property
    def label(self) -> str:
        return LABELS[self.primary]

    def score(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Every metric of the task on ``outputs`` (logits or embeddings) for ``labels``."""
        if self.is_embedding:
            from compressor.metrics.retrieval import retrieval_metrics

            emb = self.embedding or EmbeddingConfig()
            return retrieval_metrics(outputs, labels, emb.distance, emb.query_fraction, self.seed)
        return classification_metrics(outputs, labels, self.num_classes or int(outputs.shape[1]))

    def value(self, outputs: np.ndarray, labels: np.ndarray) -> float:
        """The primary metric, percent."""
        return float(self.score(outputs, labels)[self.primary])

    def agreement(self, candidate: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        """How closely ``candidate`` outputs follow ``reference`` outputs on the same images.

        Classification: top-1 agreement (percent) and max abs logit error. Embedding: mean and minimum
        cosine similarity and max abs error, with ``agreement`` = 100 x mean cosine.
        """
        if self.is_embedding:
            from compressor.metrics.retrieval import cosine_agreement

            result: dict[str, Any] = cosine_agreement(candidate, reference)
            result["agreement"] = round(100 * result["mean_cosine"], 3)
            return result
        return dict(agreement(candidate, reference))

    def agreement_value(self, result: dict[str, Any]) -> float:
        """The percentage that thresholds such as ``min_agreement`` compare."""
        return float(result["agreement"] if self.is_embedding else result["top1_agreement"])

    @property
    def agreement_label(self) -> str:
        return "mean cosine similarity x 100" if self.is_embedding else "top-1 agreement"

    def outcomes(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Per-image (classification) or per-query (embedding) outcomes, packed for a benchmark row, so
        two rows can be compared on the same images (:mod:`compressor.metrics.stats`)."""
        from compressor.metrics import stats

        if not self.is_embedding:
            return stats.classification_outcomes(outputs, labels)
        from compressor.metrics.retrieval import retrieval_outcomes

        emb = self.embedding or EmbeddingConfig()
        out = retrieval_outcomes(outputs, labels, emb.distance, emb.query_fraction, self.seed)
        return {"unit": "query", "n": int(len(out["rank1"])), "labels": stats.labels_digest(labels[out["query_index"]]),
                "rank1": stats.pack_bits(out["rank1"]), "rank5": stats.pack_bits(out["rank5"]),
                "map": stats.pack_floats(out["ap"])}

    def row_metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """The accuracy columns of a benchmark row."""
        s = self.score(outputs, labels)
        if self.is_embedding:
            return {"rank1": s["rank1"], "rank5": s["rank5"], "map": s["map"], "accuracy_images": s["images"]}
        return {"top1": s["top1"], "top5": s["top5"], "accuracy_images": s["images"]}


CLASSIFICATION = Task()


def task_of(ctx: StageContext) -> Task:
    """The recipe's task, with the data's class count and the split seed."""
    kind = ctx.task.kind
    emb = ctx.task.embedding if ctx.task.is_embedding else None
    seed = emb.split_seed if emb is not None and emb.split_seed is not None else ctx.seed
    return Task(kind=kind, num_classes=len(ctx.data.classes), embedding=emb, seed=seed)


def row_accuracy(row: dict[str, Any]) -> tuple[str, float | None]:
    """(metric key, value) of a benchmark row's headline accuracy: top1, else rank1."""
    for key in HEADLINE:
        if row.get(key) is not None:
            return key, float(row[key])
    return "top1", None
