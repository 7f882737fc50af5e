"""Paired tests, bootstrap intervals and verdicts (fusedbn.science.stats)."""

import numpy as np
import pytest

from fusedbn.science.stats import (
    CONTRADICTED,
    HELD,
    NOT_SHOWN,
    PairedTest,
    bootstrap_ci,
    equivalence_verdict,
    log_log_slope,
    mcnemar,
    verdict,
    wilcoxon,
)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small = rng.normal(3.0, 1.0, size=20)
    large = rng.normal(3.0, 1.0, size=2000)
    low, high = bootstrap_ci(small, np.random.default_rng(1), 2000)
    assert low < small.mean() < high
    low_large, high_large = bootstrap_ci(large, np.random.default_rng(1), 2000)
    assert low_large < 3.0 < high_large
    assert high_large - low_large < (high - low) / 5


@pytest.mark.parametrize("shift", [0.5, -0.5])
def test_wilcoxon_finds_a_clear_paired_shift_in_its_direction(shift: float) -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=30)
    test = wilcoxon("shift", base + shift + 0.05 * rng.normal(size=30), base, rng, 1000)
    assert test.n == 30 and test.mean_difference == pytest.approx(shift, abs=0.05)
    assert test.p_value < 1e-4 and test.ci_low < shift < test.ci_high
    assert verdict(test, +1) == (HELD if shift > 0 else CONTRADICTED)


def test_wilcoxon_without_any_difference_shows_nothing() -> None:
    values = np.random.default_rng(3).normal(size=12)
    test = wilcoxon("same", values, values.copy(), np.random.default_rng(0), 500)
    assert test.p_value == 1.0 and test.mean_difference == 0.0
    assert verdict(test, +1) == NOT_SHOWN


def test_mcnemar_uses_only_the_discordant_pairs() -> None:
    # 8 pairs where only the first succeeds, none the other way, 12 concordant: p = 2 * 0.5**8.
    first = np.array([True] * 8 + [True] * 6 + [False] * 6)
    second = np.array([False] * 8 + [True] * 6 + [False] * 6)
    test = mcnemar("reach", first, second, np.random.default_rng(0), 500)
    assert test.p_value == pytest.approx(2 * 0.5**8)
    assert test.mean_difference == pytest.approx(8 / 20)
    assert verdict(test, +1) == HELD
    swapped = mcnemar("reach", second, first, np.random.default_rng(0), 500)
    assert swapped.p_value == pytest.approx(test.p_value) and verdict(swapped, +1) == CONTRADICTED


@pytest.mark.parametrize(
    ("low", "high", "p", "claimed_sign", "expected"),
    [
        (0.01, 0.03, 0.01, +1, HELD),  # significant, interval above zero, as claimed
        (0.01, 0.03, 0.01, -1, CONTRADICTED),  # the same test against the opposite claim
        (-0.03, -0.01, 0.01, -1, HELD),  # significant, interval below zero, as claimed
        (-0.03, -0.01, 0.01, +1, CONTRADICTED),
        (-0.01, 0.03, 0.01, +1, NOT_SHOWN),  # p below 5% but the interval straddles zero
        (-0.01, 0.03, 0.01, -1, NOT_SHOWN),
        (0.01, 0.03, 0.2, +1, NOT_SHOWN),  # interval above zero but p not below 5%
        (-0.03, -0.01, 0.05, -1, NOT_SHOWN),  # p exactly 5% is not below it
    ],
)
def test_verdict_needs_significance_and_an_interval_on_one_side_of_zero(
    low: float, high: float, p: float, claimed_sign: int, expected: str
) -> None:
    test = PairedTest("d", "Wilcoxon signed-rank", 20, (low + high) / 2, low, high, p)
    assert verdict(test, claimed_sign) == expected


@pytest.mark.parametrize(
    ("low", "high", "p", "expected"),
    [
        (-0.002, 0.003, 0.6, HELD),  # inside the margin
        (-0.002, 0.009, 0.3, NOT_SHOWN),  # straddles the margin
        (0.006, 0.02, 0.001, CONTRADICTED),  # significant and wholly outside
        (0.006, 0.02, 0.2, NOT_SHOWN),  # outside but not significant
    ],
)
def test_equivalence_needs_the_interval_inside_the_margin(
    low: float, high: float, p: float, expected: str
) -> None:
    test = PairedTest("d", "Wilcoxon signed-rank", 20, (low + high) / 2, low, high, p)
    assert equivalence_verdict(test, 0.005) == expected


def test_log_log_slope_recovers_a_power_law() -> None:
    sizes = np.array([8, 16, 32, 64, 128])
    assert log_log_slope(sizes, 3.0 * sizes**-0.5) == pytest.approx(-0.5)
