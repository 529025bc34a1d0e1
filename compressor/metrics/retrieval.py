"""Retrieval metrics for embedding models: a seeded query/gallery split, rank-k, mAP, cosine agreement.

Pure numpy. Each query is ranked against the gallery (never against itself); a query whose identity
has no gallery image cannot be answered and is left out (the split never makes one: an identity
with a single image goes to the gallery only, as a distractor).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Distance = Literal["cosine", "euclidean"]


def query_gallery_split(labels: np.ndarray, query_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of query and gallery images: per identity, a seeded ``query_fraction`` share (at least
    one) becomes queries and the rest (at least one) the gallery; single-image identities are gallery only."""
    rng = np.random.default_rng(seed)
    queries, gallery = [], []
    for identity in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == identity))
        n_query = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, int(round(len(idx) * query_fraction))))
        queries.append(idx[:n_query])
        gallery.append(idx[n_query:])
    return np.sort(np.concatenate(queries)).astype(np.int64), np.sort(np.concatenate(gallery)).astype(np.int64)


def distances(query: np.ndarray, gallery: np.ndarray, distance: Distance) -> np.ndarray:
    """Query x gallery distance matrix: 1 - cosine similarity, or Euclidean distance."""
    q, g = query.astype(np.float64), gallery.astype(np.float64)
    if distance == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return 1.0 - q @ g.T
    squared = (q**2).sum(1)[:, None] + (g**2).sum(1)[None, :] - 2 * q @ g.T
    return np.sqrt(np.maximum(squared, 0.0))


def ranked_matches(dist: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Boolean matrix: row i, column j is whether query i's j-th nearest gallery image has its identity.

    Ties keep gallery order (stable sort), so the result is deterministic.
    """
    order = np.argsort(dist, axis=1, kind="stable")
    return gallery_labels[order] == query_labels[:, None]


def average_precision(matches: np.ndarray) -> np.ndarray:
    """AP per row of a ranked match matrix (rows without any match give NaN)."""
    hits = np.cumsum(matches, axis=1)
    ranks = np.arange(1, matches.shape[1] + 1)
    precision_at_hits = np.where(matches, hits / ranks, 0.0)
    total = matches.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, precision_at_hits.sum(1) / np.maximum(total, 1), np.nan)


def retrieval_outcomes(embeddings: np.ndarray, labels: np.ndarray, distance: Distance = "cosine",
                       query_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Per answerable query: rank-1 and rank-5 hits and AP, over the seeded query/gallery split
    (``queries``: their indices into ``labels``), plus the split's counts."""
    q_idx, g_idx = query_gallery_split(labels, query_fraction, seed)
    result: dict[str, Any] = {"images": int(len(labels)), "queries": int(len(q_idx)), "gallery": int(len(g_idx)),
                              "identities": int(len(np.unique(labels))), "distance": distance,
                              "rank1": np.zeros(0, bool), "rank5": np.zeros(0, bool), "ap": np.zeros(0),
                              "query_index": np.zeros(0, np.int64)}
    if len(q_idx) == 0 or len(g_idx) == 0:
        return result
    matches = ranked_matches(distances(embeddings[q_idx], embeddings[g_idx], distance), labels[q_idx], labels[g_idx])
    answerable = matches.any(1)
    matches = matches[answerable]
    result.update(queries=int(answerable.sum()), rank1=matches[:, 0], rank5=matches[:, :5].any(1),
                  ap=average_precision(matches), query_index=q_idx[answerable])
    return result


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, distance: Distance = "cosine",
                      query_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Rank-1, rank-5 and mAP (percent) of ``embeddings`` over a seeded query/gallery split of ``labels``."""
    out = retrieval_outcomes(embeddings, labels, distance, query_fraction, seed)
    rank1, rank5, ap = out.pop("rank1"), out.pop("rank5"), out.pop("ap")
    out.pop("query_index")
    if len(rank1) == 0:
        return out | {"rank1": 0.0, "rank5": 0.0, "map": 0.0}
    return out | {"rank1": round(float(rank1.mean()) * 100, 3), "rank5": round(float(rank5.mean()) * 100, 3),
                  "map": round(float(np.nanmean(ap)) * 100, 3)}


def cosine_agreement(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean and minimum cosine similarity of paired embeddings, plus the max absolute difference."""
    c, r = candidate.astype(np.float64), reference.astype(np.float64)
    cos = (c * r).sum(1) / np.maximum(np.linalg.norm(c, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
    return {"mean_cosine": round(float(cos.mean()), 6) if len(cos) else 0.0,
            "min_cosine": round(float(cos.min()), 6) if len(cos) else 0.0,
            "max_abs_error": float(np.abs(c - r).max()) if c.size else 0.0}
