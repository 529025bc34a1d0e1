"""The metric vocabulary, once: every accuracy a row, a gate or a report may name.

Classifiers are scored by top-1/top-5 (one outcome per image), embedding models by rank-1/rank-5 (one
per query) and mAP (an average precision per query). Tables, plots, gates, accuracy control and the
paired statistics read names and kinds from :data:`METRICS` instead of spelling them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One accuracy metric.

    Attributes:
        key: the name in rows, metrics and recipes (``top1``).
        label: how people read it (``top-1``).
        task: ``classification`` or ``embedding``.
        binary: each image (or query) is right or wrong, so paired tests on 0/1 outcomes apply.
    """

    key: str
    label: str
    task: str
    binary: bool


METRICS: Mapping[str, Metric] = MappingProxyType({m.key: m for m in (
    Metric("top1", "top-1", "classification", True),
    Metric("top5", "top-5", "classification", True),
    Metric("rank1", "rank-1", "embedding", True),
    Metric("rank5", "rank-5", "embedding", True),
    Metric("map", "mAP", "embedding", False),
)})
# The order in which a row's headline accuracy is looked up: classifiers, then embedding models.
HEADLINE = ("top1", "rank1", "map")
BINARY = tuple(k for k, m in METRICS.items() if m.binary)


def label(key: str) -> str:
    """``top1`` -> ``top-1``; an unknown key is shown as it is."""
    metric = METRICS.get(key)
    return metric.label if metric is not None else key


def key_of(label_or_key: str) -> str:
    """``rank-1`` or ``rank1`` -> ``rank1``; top1 when it names no metric."""
    for m in METRICS.values():
        if label_or_key in (m.key, m.label):
            return m.key
    return "top1"


def headline_key(rows: list[dict[str, Any]]) -> str | None:
    """The first of :data:`HEADLINE` any of ``rows`` carries."""
    return next((k for k in HEADLINE if any(r.get(k) is not None for r in rows)), None)


def measured(row: dict[str, Any]) -> list[str]:
    """The metrics ``row`` carries, in vocabulary order."""
    return [k for k in METRICS if row.get(k) is not None]
