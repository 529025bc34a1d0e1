"""The interval code against hand-computed cases."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from compressor.metrics.stats import (
    PairedTable,
    accuracy_interval,
    bootstrap_mean,
    bootstrap_quantiles,
    decide,
    drop_interval,
    images_needed,
    images_to_pass_strict,
    mcnemar_exact,
    pack_bits,
    pack_floats,
    paired_bootstrap,
    paired_drop,
    paired_interval,
    paired_outcomes,
    prediction_outcomes,
    t_value,
    unpack_bits,
    unpack_floats,
    wilson_interval,
)
from compressor.runtime import portable
from compressor.runtime.measure import latency_stats, measure_steady


def outcomes(both: int, only_ref: int, only_cand: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    ref = np.array([1] * both + [1] * only_ref + [0] * only_cand + [0] * neither, dtype=bool)
    cand = np.array([1] * both + [0] * only_ref + [1] * only_cand + [0] * neither, dtype=bool)
    return ref, cand


def test_mcnemar_exact_on_a_2x2_table() -> None:
    # b = 12, c = 4: P(X <= 4 | Bin(16, 1/2)) = (1 + 16 + 120 + 560 + 1820) / 65536 = 2517 / 65536
    assert mcnemar_exact(12, 4) == pytest.approx(2 * 2517 / 65536)
    assert mcnemar_exact(4, 12) == mcnemar_exact(12, 4)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)


def test_paired_interval_by_hand() -> None:
    # Bonett-Price on (80, 12, 4, 4): b~ = 13/102, c~ = 5/102, var = (b~ + c~ - (b~ - c~)^2) / 102
    b, c = 13 / 102, 5 / 102
    half = 1.959963984540054 * math.sqrt((b + c - (b - c) ** 2) / 102)
    low, high = paired_interval(PairedTable(80, 12, 4, 4))
    assert (low, high) == pytest.approx((b - c - half, b - c + half))
    assert (low, high) == pytest.approx((-0.001659, 0.158522), abs=1e-6)
    ref, cand = outcomes(80, 12, 4, 4)
    drop = paired_drop(ref, cand)
    assert drop.value == pytest.approx(8.0) and drop.n == 100
    assert (drop.low, drop.high) == pytest.approx((100 * low, 100 * high))
    assert "mcnemar p=0.0768" in drop.method


def test_paired_interval_without_discordant_pairs_is_not_zero_wide() -> None:
    ref, cand = outcomes(1990, 0, 0, 10)
    drop = paired_drop(ref, cand)
    # +-z sqrt(2) / (n + 2): about 0.14 pt on 2,000 images
    assert drop.value == 0.0
    assert drop.half_width == pytest.approx(100 * 1.959964 * math.sqrt(2) / 2002, rel=1e-5)


def test_wilson_by_hand() -> None:
    # 8 of 10, z = 1.96: centre (0.8 + 0.19207) / 1.38415, half 1.96 sqrt(0.016 + 0.0096037) / 1.38415
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert wilson_interval(8, 10) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    acc = accuracy_interval(np.array([1] * 8 + [0] * 2))
    assert acc.value == pytest.approx(80.0) and acc.low == pytest.approx(49.02, abs=0.01)


def test_paired_bootstrap_on_two_images_by_hand() -> None:
    # drops per image [0, 1]: a resampled mean is 0, 1/2 or 1 with chance 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% percentiles of 2,000 resamples are 0 and 100 points
    result = paired_bootstrap(np.array([1, 1]), np.array([1, 0]))
    assert (result.value, result.low, result.high, result.n) == (50.0, 0.0, 100.0, 2)


def test_bootstrap_is_seeded_and_paired() -> None:
    rng = np.random.default_rng(7)
    ref = rng.random(500) < 0.8
    cand = ref.copy()
    cand[:10] = ~cand[:10]
    one = paired_bootstrap(ref, cand, seed=3)
    assert one == paired_bootstrap(ref, cand, seed=3)
    assert one != paired_bootstrap(ref, cand, seed=4)
    # pairing: the spread comes from the 10 changed images only, far narrower than an unpaired one
    unpaired = math.sqrt(2 * 0.8 * 0.2 / 500) * 100 * 1.96
    assert one.half_width < unpaired / 2
    identical = paired_bootstrap(ref, ref)
    assert (identical.low, identical.high) == (0.0, 0.0)
    kept = paired_bootstrap(ref, ref, kind="retained")
    assert (kept.value, kept.low, kept.high) == pytest.approx((100.0, 100.0, 100.0))


def test_bootstrap_mean_of_constant_and_known_values() -> None:
    assert bootstrap_mean(np.full(50, 0.25), scale=100).to_json()["low"] == 25.0
    values = np.random.default_rng(0).normal(0.5, 0.1, 4000)
    result = bootstrap_mean(values)
    # the bootstrap half-width of a mean approaches 1.96 sd / sqrt(n)
    assert result.half_width == pytest.approx(1.96 * values.std() / math.sqrt(4000), rel=0.1)


def test_bootstrap_quantiles_of_a_median() -> None:
    samples = np.concatenate([np.full(50, 1.0), np.full(50, 3.0)])
    (lo, hi), = bootstrap_quantiles(samples, (50,))
    assert lo == 1.0 and hi == 3.0
    (lo, hi), = bootstrap_quantiles(np.full(30, 2.0), (50,))
    assert lo == hi == 2.0
    wide = np.random.default_rng(1).gamma(5, 1, 2000)
    (lo, hi), (lo90, hi90) = bootstrap_quantiles(wide, (50, 90))
    assert lo < np.median(wide) < hi and lo90 < np.percentile(wide, 90) < hi90


def test_decide_modes() -> None:
    # a drop of 0.4 with interval [-0.3, 1.1] against a ceiling of 0.5 pt
    assert decide(0.4, -0.3, 1.1, 0.5, True, "point")
    assert decide(0.4, -0.3, 1.1, 0.5, True, "confident")
    assert not decide(0.4, -0.3, 1.1, 0.5, True, "strict")
    # a drop of 0.7 with interval [0.1, 1.3]: fails point, not confident (noise), fails strict
    assert not decide(0.7, 0.1, 1.3, 0.5, True, "point")
    assert decide(0.7, 0.1, 1.3, 0.5, True, "confident")
    # a floor: accuracy 80 [75, 85] >= 78
    assert decide(80, 75, 85, 78, False, "confident") and not decide(80, 75, 85, 78, False, "strict")
    assert not decide(80, None, None, 78, False, "strict") and decide(80, None, None, 78, False, "confident")


def test_images_needed() -> None:
    # a perfect copy passes a 0.5 pt gate in strict mode only once z sqrt(2) / (n + 2) <= 0.005
    need = images_to_pass_strict(0.5)
    assert need == math.ceil(100 * 1.959963984540054 * math.sqrt(2) / 0.5 - 2)
    # observed 3% lost, 1% gained (drop 2 pt) against a 1 pt ceiling: decided once the interval clears 1
    n = images_needed(0.03, 0.01, 1.0)
    assert n is not None
    for size, decided in ((n, True), (n - 1, False)):
        low, _ = paired_interval(PairedTable((size - 0.04 * size) / 2, 0.03 * size, 0.01 * size,
                                             (size - 0.04 * size) / 2))
        assert (100 * low > 1.0) is decided
    assert images_needed(0.02, 0.01, 1.0) is None  # the drop sits on the threshold


def test_t_values() -> None:
    assert t_value(2) == 4.303 and t_value(11) == 2.228 and t_value(1000) == pytest.approx(1.96, abs=1e-3)
    assert t_value(10, 0.9) == pytest.approx(1.812, abs=0.01)  # Cornish-Fisher away from the table


def test_packed_outcomes_round_trip() -> None:
    bits = np.random.default_rng(0).random(2001) < 0.5
    text = pack_bits(bits)
    assert len(text) <= 4 * math.ceil(251 / 3) and (unpack_bits(text, 2001) == bits).all()
    ap = np.array([0.0, 0.5, 1.0, 0.3333])
    assert unpack_floats(pack_floats(ap), 4) == pytest.approx(ap, abs=1e-3)


@pytest.mark.parametrize("steady", [measure_steady, portable.steady])
def test_a_noisy_latency_row_is_measured_again(steady: Any) -> None:
    """A planted noisy run (cv 0.5 over a 0.2 limit) is re-measured once; marked noisy only if it stays so."""
    made: list[float] = []

    def planted(cvs: list[float]) -> Any:
        calls = iter(cvs)

        def measure() -> dict[str, float]:
            made.append(cv := next(calls, 99.0))
            return {"median_ms": 1.0, "cv": cv}
        return measure

    calm = steady(planted([0.05]), 0.2)
    assert (calm["remeasured"], calm["noisy"]) == (False, False)
    settled = steady(planted([0.5, 0.1]), 0.2)
    assert (settled["remeasured"], settled["noisy"], settled["cv"], settled["first_cv"]) == (True, False, 0.1, 0.5)
    made.clear()
    stays = steady(planted([0.5, 0.4]), 0.2)
    assert (stays["remeasured"], stays["noisy"], stays["cv"]) == (True, True, 0.4)
    assert made == [0.5, 0.4]  # exactly one re-measurement, never a third
    assert steady(planted([0.9]), None)["remeasured"] is False


def test_latency_rows_carry_intervals_of_their_statistics() -> None:
    samples = [int(1e6 * v) for v in np.random.default_rng(0).gamma(9, 0.2, 400)]
    stats = latency_stats(samples)
    for key in ("median", "p90", "p99"):
        lo, hi = stats[f"{key}_ci_ms"]
        assert lo <= stats[f"{key}_ms"] <= hi
    assert stats["median_ci_ms"] == latency_stats(samples)["median_ci_ms"]  # seeded
    ms = np.asarray(samples) / 1e6
    assert portable.quantile_intervals(ms)["median_ci_ms"] == stats["median_ci_ms"]
    # the shipped copy resamples exactly as compressor.metrics.stats does
    expected = bootstrap_quantiles(ms, (50, 90, 99))
    got = portable.quantile_intervals(ms)
    for key, (lo, hi) in zip(("median", "p90", "p99"), expected, strict=True):
        assert got[f"{key}_ci_ms"] == [round(lo, 4), round(hi, 4)]


def test_rows_pair_only_on_the_same_images() -> None:
    labels = np.arange(100) % 10
    ref = {"outcomes": prediction_outcomes(labels, None, labels) | {"images": "aaaa"}}
    same = {"outcomes": prediction_outcomes(labels, None, labels) | {"images": "aaaa"}}
    other = {"outcomes": prediction_outcomes(labels, None, labels) | {"images": "bbbb"}}
    assert paired_outcomes(ref, same, "top1") is not None
    # another validation subset with the same labels in the same order is not paired
    assert paired_outcomes(ref, other, "top1") is None
    ref_row = {**ref, "top1": 100.0, "accuracy_images": 100}
    unpaired = drop_interval(ref_row, {**other, "top1": 100.0, "accuracy_images": 100}, "top1")
    assert unpaired is not None and unpaired.method.startswith("unpaired")
