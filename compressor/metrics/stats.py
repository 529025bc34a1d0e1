"""Statistics behind gates and claims: paired accuracy differences, bootstraps, and sample sizes.

Standard library and numpy only. Everything works on per-image (or per-query) outcomes of two models
scored on the same images, so the noise a comparison carries is the noise of *those* images:

- :func:`mcnemar_exact`: the exact (binomial) McNemar test on the discordant pairs of a 2x2 table.
- :func:`paired_interval`: Bonett and Price's adjusted Wald interval (2012) for a paired difference
  of proportions, e.g. a top-1 drop; it stays sensible with no discordant pairs at all.
- :func:`wilson_interval`: one proportion (an accuracy against a floor).
- :func:`paired_bootstrap` / :func:`bootstrap_mean`: percentile bootstrap with a fixed seed, over
  images (top-1/top-5 drops, a retained ratio) or over queries (rank-k, mAP).
- :func:`bootstrap_quantiles`: intervals of a latency median (and p90, p99) from the timing samples.
- :func:`images_needed`: how many images an interval needs to decide at a threshold.

Percentages in, percentages out where the caller works in points; the low-level functions work in
fractions.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from compressor.metrics.names import BINARY

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
Decide = Literal["point", "confident", "strict"]


def z_value(level: float = DEFAULT_LEVEL) -> float:
    """Two-sided normal quantile for a ``level`` interval (1.96 for 95%)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


# Student's t, two-sided 95%, by degrees of freedom (for a mean over a few seeds)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}


def t_value(df: int, level: float = DEFAULT_LEVEL) -> float:
    """Two-sided Student's t quantile: the table at 95% (the nearest smaller tabulated df beyond 10),
    else the Cornish-Fisher expansion around the normal quantile (good to about 1% from df = 5)."""
    if df < 1:
        return float("inf")
    if abs(level - 0.95) < 1e-12:
        if df > 60:
            return z_value(level)
        return _T95[max(k for k in _T95 if k <= df)]
    z = z_value(level)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval, in the caller's unit (points, percent, ms)."""

    value: float
    low: float
    high: float
    n: int
    method: str
    level: float = DEFAULT_LEVEL

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def scaled(self, factor: float) -> Interval:
        lo, hi = sorted((self.low * factor, self.high * factor))
        return Interval(self.value * factor, lo, hi, self.n, self.method, self.level)

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


# -- 2x2 tables --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairedTable:
    """Outcomes of a reference (1) and a candidate (2) on the same n images.

    ``both``: both right; ``only_ref``: the reference right, the candidate wrong (the candidate lost
    the image); ``only_cand``: the candidate right, the reference wrong; ``neither``: both wrong.
    """

    both: float
    only_ref: float
    only_cand: float
    neither: float

    @classmethod
    def from_outcomes(cls, reference: np.ndarray, candidate: np.ndarray) -> PairedTable:
        r, c = np.asarray(reference, dtype=bool), np.asarray(candidate, dtype=bool)
        if r.shape != c.shape:
            msg = f"paired outcomes need the same images: {r.shape} vs {c.shape}"
            raise ValueError(msg)
        return cls(int((r & c).sum()), int((r & ~c).sum()), int((~r & c).sum()), int((~r & ~c).sum()))

    @property
    def n(self) -> float:
        return self.both + self.only_ref + self.only_cand + self.neither

    @property
    def drop(self) -> float:
        """Reference accuracy minus candidate accuracy, as a fraction."""
        return (self.only_ref - self.only_cand) / self.n if self.n else 0.0


def mcnemar_exact(only_ref: int, only_cand: int) -> float:
    """Two-sided exact McNemar p-value: twice the smaller binomial(b + c, 1/2) tail, at most 1."""
    discordant = only_ref + only_cand
    if discordant == 0:
        return 1.0
    k = min(only_ref, only_cand)
    tail = sum(math.comb(discordant, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**discordant)


def wilson_interval(successes: float, n: float, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion (fractions)."""
    if n <= 0:
        return 0.0, 1.0
    z = z_value(level)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_interval(table: PairedTable, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Bonett and Price's adjusted Wald interval (2012) for ``table.drop`` = p_ref - p_cand (fractions).

    One pseudo-image is added to each discordant cell (and two to n): with no discordant pairs at
    all the interval is still about +-2.8/n wide, not zero, and its coverage stays near ``level``.
    """
    n = table.n
    if n <= 0:
        return -1.0, 1.0
    b, c = (table.only_ref + 1) / (n + 2), (table.only_cand + 1) / (n + 2)
    diff = b - c
    half = z_value(level) * math.sqrt(max(0.0, b + c - diff * diff) / (n + 2))
    return max(-1.0, diff - half), min(1.0, diff + half)


def paired_drop(reference: np.ndarray, candidate: np.ndarray, level: float = DEFAULT_LEVEL) -> Interval:
    """Drop in points (reference - candidate) of two per-image correctness vectors, with the
    Bonett-Price interval; ``method`` carries the exact McNemar p-value too."""
    table = PairedTable.from_outcomes(reference, candidate)
    low, high = paired_interval(table, level)
    p = mcnemar_exact(int(table.only_ref), int(table.only_cand))
    return Interval(100 * table.drop, 100 * low, 100 * high, int(table.n), f"paired (mcnemar p={p:.3g})", level)


def accuracy_interval(correct: np.ndarray, level: float = DEFAULT_LEVEL) -> Interval:
    """Accuracy in percent with its Wilson interval."""
    x = np.asarray(correct, dtype=bool)
    low, high = wilson_interval(float(x.sum()), float(len(x)), level)
    return Interval(100 * float(x.mean()) if len(x) else 0.0, 100 * low, 100 * high, int(len(x)), "wilson", level)


# -- bootstraps -------------------------------------------------------------------------------

def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_statistic(columns: Sequence[np.ndarray], statistic: Callable[..., np.ndarray],
                        resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                        level: float = DEFAULT_LEVEL, chunk: int = 200) -> tuple[float, float]:
    """Percentile bootstrap of ``statistic``: rows (images, queries) are resampled together.

    ``statistic(*resampled)`` gets arrays of shape (k, n) and returns k values; the same index draw
    is applied to every column, so paired columns stay paired. The generator is numpy's PCG64 with
    ``seed``, so the interval is the same on every machine.
    """
    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    n = len(cols[0])
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        out.append(np.asarray(statistic(*(c[idx] for c in cols)), dtype=np.float64))
    return _percentiles(np.concatenate(out), level)


def bootstrap_mean(values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                   level: float = DEFAULT_LEVEL, scale: float = 1.0, method: str = "bootstrap") -> Interval:
    """Mean of ``values`` (e.g. per-query AP) with its bootstrap interval, times ``scale``."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_statistic([v], lambda x: x.mean(1), resamples, seed, level)
    return Interval(scale * float(v.mean()) if len(v) else 0.0, scale * lo, scale * hi, int(len(v)), method, level)


def paired_bootstrap(reference: np.ndarray, candidate: np.ndarray, kind: Literal["drop", "retained"] = "drop",
                     resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                     level: float = DEFAULT_LEVEL) -> Interval:
    """Paired bootstrap over images (or queries) of a drop in points, mean(ref) - mean(cand), or of
    the retained share in percent, 100 mean(cand) / mean(ref). Values may be 0/1 or continuous (AP)."""
    r, c = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if r.shape != c.shape:
        msg = f"paired outcomes need the same images: {r.shape} vs {c.shape}"
        raise ValueError(msg)
    if kind == "drop":
        def stat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return 100 * (x.mean(1) - y.mean(1))
        value = 100 * float(r.mean() - c.mean()) if len(r) else 0.0
    else:
        def stat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            ref = x.mean(1)
            return np.where(ref > 0, 100 * y.mean(1) / np.where(ref > 0, ref, 1), 100.0)
        value = 100 * float(c.mean() / r.mean()) if len(r) and r.mean() > 0 else 100.0
    lo, hi = bootstrap_statistic([r, c], stat, resamples, seed, level)
    return Interval(value, lo, hi, int(len(r)), f"paired bootstrap ({resamples}, seed {seed})", level)


def bootstrap_quantiles(samples: np.ndarray, quantiles: Sequence[float] = (50, 90, 99),
                        resamples: int = 1000, seed: int = DEFAULT_SEED,
                        level: float = DEFAULT_LEVEL) -> list[tuple[float, float]]:
    """Bootstrap intervals of latency quantiles (percent, e.g. 50 = median) from timing samples."""
    s = np.asarray(samples, dtype=np.float64)
    if len(s) < 2:
        v = float(s[0]) if len(s) else float("nan")
        return [(v, v) for _ in quantiles]
    rng = np.random.default_rng(seed)
    draws: list[np.ndarray] = []
    chunk = max(1, 2_000_000 // len(s))
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(s), size=(min(chunk, resamples - start), len(s)))
        draws.append(np.percentile(s[idx], list(quantiles), axis=1).T)
    stack = np.concatenate(draws)
    return [_percentiles(stack[:, j], level) for j in range(len(quantiles))]


# -- decisions --------------------------------------------------------------------------------

def decide(value: float, low: float | None, high: float | None, limit: float, upper: bool,
           mode: Decide) -> bool:
    """Whether a measurement passes ``limit`` under ``mode``.

    ``upper``: the limit is a ceiling (a drop, a latency); else a floor (an accuracy, a speed-up).
    point: the estimate alone. confident: fail only when the whole interval is on the wrong side
    (noise never fails a gate). strict: pass only when the whole interval is on the right side (noise
    never passes one). Without an interval (``low``/``high`` None), confident is point and strict fails.
    """
    eps = 1e-9
    if mode == "point" or (mode == "confident" and (low is None or high is None)):
        return value <= limit + eps if upper else value >= limit - eps
    if low is None or high is None:
        return False
    if mode == "confident":
        return low <= limit + eps if upper else high >= limit - eps
    return high <= limit + eps if upper else low >= limit - eps


def images_needed(only_ref_rate: float, only_cand_rate: float, threshold_pt: float, decidable: Callable[
        [float, float], bool] | None = None, level: float = DEFAULT_LEVEL, max_n: int = 10_000_000) -> int | None:
    """Images a paired comparison needs before its interval leaves ``threshold_pt`` (a drop in points).

    The discordance rates (share of images only the reference gets right, only the candidate gets
    right) are held at the observed ones; the answer is the smallest n whose paired interval lies
    wholly above or wholly below the threshold. None: the observed drop sits on the threshold (no
    sample size decides), or more than ``max_n`` images would be needed.
    """
    def interval(n: int) -> tuple[float, float]:
        b, c = only_ref_rate * n, only_cand_rate * n
        # the concordant mass is split evenly: it barely moves the interval of a difference
        rest = max(0.0, n - b - c)
        lo, hi = paired_interval(PairedTable(rest / 2, b, c, rest / 2), level)
        return 100 * lo, 100 * hi

    def ok(n: int) -> bool:
        lo, hi = interval(n)
        return decidable(lo, hi) if decidable is not None else (hi <= threshold_pt or lo > threshold_pt)

    drop = 100 * (only_ref_rate - only_cand_rate)
    if decidable is None and abs(drop - threshold_pt) < 1e-12:
        return None
    n = 8
    while not ok(n):
        n *= 2
        if n > max_n:
            return None
    lo_n, hi_n = n // 2, n
    while hi_n - lo_n > 1:
        mid = (lo_n + hi_n) // 2
        lo_n, hi_n = (lo_n, mid) if ok(mid) else (mid, hi_n)
    return hi_n


def images_to_pass_strict(threshold_pt: float, level: float = DEFAULT_LEVEL, max_n: int = 10_000_000) -> int | None:
    """The fewest images with which a drop gate at ``threshold_pt`` can pass in strict mode at all:
    the best case, a candidate that agrees with the reference on every image (drop 0, no discordance)."""
    if threshold_pt <= 0:
        return None
    return images_needed(0.0, 0.0, threshold_pt, lambda lo, hi: hi <= threshold_pt, level, max_n)


# -- compact per-image outcomes -----------------------------------------------------------------

def pack_bits(values: np.ndarray) -> str:
    """Booleans -> base64 of numpy's packbits (big-endian bit order): 2,000 images in 336 characters."""
    return base64.b64encode(np.packbits(np.asarray(values, dtype=bool)).tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(raw)[:n].astype(bool)


def pack_floats(values: np.ndarray) -> str:
    """Floats in [0, 1] (per-query AP) -> base64 of float16: 3 significant digits, 2 bytes each."""
    return base64.b64encode(np.asarray(values, dtype="<f2").tobytes()).decode("ascii")


def unpack_floats(text: str, n: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2")[:n].astype(np.float64)


def unpaired_interval(p_ref: float, n_ref: int, p_cand: float, n_cand: int,
                      level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p_ref - p_cand of two independent samples (fractions):
    what is left when the per-image outcomes were not recorded (wider than the paired one)."""
    l1, u1 = wilson_interval(p_ref * n_ref, n_ref, level)
    l2, u2 = wilson_interval(p_cand * n_cand, n_cand, level)
    diff = p_ref - p_cand
    return (diff - math.sqrt((p_ref - l1) ** 2 + (u2 - p_cand) ** 2),
            diff + math.sqrt((u1 - p_ref) ** 2 + (p_cand - l2) ** 2))


def images_for_floor(min_pct: float, level: float = DEFAULT_LEVEL) -> int | None:
    """The fewest images with which an accuracy floor can pass in strict mode at all (every image
    right: the Wilson lower bound n / (n + z^2) must reach the floor)."""
    m = min_pct / 100
    if m >= 1:
        return None
    z = z_value(level)
    return max(1, math.ceil(z * z * m / (1 - m) - 1e-9))


def even_subset(total: int, count: int | None) -> np.ndarray:
    """Indices of an even subset of ``count`` out of ``total`` (all when count is None or larger):
    the images a benchmark target with ``accuracy_images`` scores."""
    if count is None or count >= total:
        return np.arange(total)
    return np.linspace(0, total - 1, count).round().astype(int)


# -- benchmark rows ---------------------------------------------------------------------------
# A row's ``outcomes``: {"unit": "image" | "query", "n": N, "labels": sha256 prefix of the labels
# scored, "images": the same of the images (the benchmark's full set), optional "subset_of": the full
# count when a target scored an even subset, and one packed
# vector per metric: bits for top1 / top5 / rank1 / rank5, float16 AP per query for map}.

BINARY_METRICS = BINARY


def labels_digest(labels: np.ndarray) -> str:
    return array_digest(np.asarray(labels, dtype=np.int64))


def array_digest(values: np.ndarray) -> str:
    """The first 16 hex digits of the sha256 of an array's bytes (which images, which labels)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]


def classification_outcomes(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Per-image top-1 and top-5 correctness of ``logits``, packed for a benchmark row."""
    k = min(5, logits.shape[1]) if logits.ndim == 2 and len(logits) else 1
    top1 = logits.argmax(1) == labels
    topk = (np.argpartition(-logits, k - 1, axis=1)[:, :k] == labels[:, None]).any(1)
    return {"unit": "image", "n": int(len(labels)), "labels": labels_digest(labels),
            "top1": pack_bits(top1), "top5": pack_bits(topk)}


def prediction_outcomes(pred: np.ndarray, top5_hits: np.ndarray | None, labels: np.ndarray,
                        subset_of: int | None = None) -> dict[str, Any]:
    """The same from a runner's predictions (a device returns class indices, not logits)."""
    out: dict[str, Any] = {"unit": "image", "n": int(len(labels)), "labels": labels_digest(labels),
                           "top1": pack_bits(np.asarray(pred) == labels)}
    if top5_hits is not None and len(top5_hits) == len(labels):
        out["top5"] = pack_bits(np.asarray(top5_hits, dtype=bool))
    if subset_of is not None and subset_of != len(labels):
        out["subset_of"] = int(subset_of)
    return out


def row_outcomes(row: dict[str, Any], metric: str) -> np.ndarray | None:
    """The per-image (per-query) values of ``metric`` a row recorded: 0/1, or AP in [0, 1]."""
    out = row.get("outcomes")
    if not isinstance(out, dict) or metric not in out:
        return None
    n = int(out["n"])
    if metric in BINARY_METRICS:
        return unpack_bits(out[metric], n).astype(np.float64)
    return unpack_floats(out[metric], n)


def paired_outcomes(reference: dict[str, Any], row: dict[str, Any], metric: str
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Both rows' outcomes on the same images, or None when they were not scored on the same ones."""
    ref, mine = row_outcomes(reference, metric), row_outcomes(row, metric)
    if ref is None or mine is None:
        return None
    r_out, m_out = reference["outcomes"], row["outcomes"]
    if r_out.get("images") and m_out.get("images") and r_out["images"] != m_out["images"]:
        return None  # scored on other images (e.g. a baseline run with another validation subset)
    if len(ref) == len(mine) and r_out.get("labels") == m_out.get("labels"):
        return ref, mine
    # a target that scored an even subset of the images its reference scored in full
    if m_out.get("subset_of") == len(ref) and "subset_of" not in r_out:
        return ref[even_subset(len(ref), len(mine))], mine
    return None


def _count(row: dict[str, Any], metric: str) -> int | None:
    n = row.get("accuracy_images")
    return int(n) if isinstance(n, int | float) and n > 0 and metric in ("top1", "top5") else None


def drop_interval(reference: dict[str, Any], row: dict[str, Any], metric: str,
                  level: float = DEFAULT_LEVEL) -> Interval | None:
    """``reference[metric] - row[metric]`` in points with its interval: paired on the same images
    (Bonett-Price with the exact McNemar p for top-k, a bootstrap over queries for rank-k and mAP),
    else unpaired from the two accuracies and image counts; None when neither is possible."""
    pair = paired_outcomes(reference, row, metric)
    if pair is not None:
        ref, mine = pair
        if metric in ("top1", "top5"):
            return paired_drop(ref.astype(bool), mine.astype(bool), level)
        return paired_bootstrap(ref, mine, "drop", level=level)
    n_ref, n_row = _count(reference, metric), _count(row, metric)
    if n_ref is None or n_row is None or reference.get(metric) is None or row.get(metric) is None:
        return None
    p_ref, p_row = float(reference[metric]) / 100, float(row[metric]) / 100
    low, high = unpaired_interval(p_ref, n_ref, p_row, n_row, level)
    return Interval(100 * (p_ref - p_row), 100 * low, 100 * high, min(n_ref, n_row),
                    "unpaired (no per-image outcomes)", level)


def retained_interval(reference: dict[str, Any], row: dict[str, Any], metric: str,
                      level: float = DEFAULT_LEVEL) -> Interval | None:
    """``100 row[metric] / reference[metric]`` with its paired bootstrap interval (None: not paired)."""
    pair = paired_outcomes(reference, row, metric)
    return None if pair is None else paired_bootstrap(pair[0], pair[1], "retained", level=level)


def accuracy_of(row: dict[str, Any], metric: str, level: float = DEFAULT_LEVEL) -> Interval | None:
    """A row's ``metric`` with its interval: Wilson for 0/1 outcomes, a bootstrap over queries for mAP."""
    values = row_outcomes(row, metric)
    if values is not None:
        if metric in BINARY_METRICS:
            return accuracy_interval(values.astype(bool), level)
        return bootstrap_mean(values, level=level, scale=100.0, method="bootstrap over queries")
    n = _count(row, metric)
    if n is None or row.get(metric) is None:
        return None
    k = round(float(row[metric]) * n / 100)
    low, high = wilson_interval(k, n, level)
    return Interval(float(row[metric]), 100 * low, 100 * high, n, "wilson", level)


def latency_interval(row: dict[str, Any], statistic: str) -> Interval | None:
    """A row's latency statistic (median, p90, p99) with its bootstrap interval, when recorded."""
    value, ci = row.get(f"{statistic}_ms"), row.get(f"{statistic}_ci_ms")
    if value is None or not isinstance(ci, list | tuple) or len(ci) != 2:
        return None
    return Interval(float(value), float(ci[0]), float(ci[1]), int(row.get("iterations") or 0), "bootstrap")
