"""Paired statistics for the experiments: bootstrap intervals, Wilcoxon and McNemar tests, and verdicts (*not
shown* is absence of evidence, not evidence of absence)."""

from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
HELD, NOT_SHOWN, CONTRADICTED = "held", "not shown", "contradicted"


@dataclass
class PairedTest:
    """A paired comparison: ``n`` pairs, mean difference with its 95% bootstrap interval, a p-value."""

    name: str
    test: str
    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, resamples: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values``."""
    means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def wilcoxon(
    name: str, first: np.ndarray, second: np.ndarray, rng: np.random.Generator, resamples: int
) -> PairedTest:
    """Wilcoxon signed-rank test of ``first - second`` (pairs with no difference split between signs)."""
    differences = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    same = np.allclose(differences, 0.0)
    p_value = 1.0 if same else float(stats.wilcoxon(differences, zero_method="zsplit").pvalue)
    low, high = bootstrap_ci(differences, rng, resamples)
    return PairedTest(
        name, "Wilcoxon signed-rank", len(differences), float(differences.mean()), low, high, p_value
    )


def mcnemar(
    name: str, first: np.ndarray, second: np.ndarray, rng: np.random.Generator, resamples: int
) -> PairedTest:
    """Exact McNemar test on paired successes (booleans): does ``first`` succeed more often than ``second``?
    The mean difference is that of the success rates, with its bootstrap interval over pairs."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    only_first, only_second = int(np.sum(first & ~second)), int(np.sum(second & ~first))
    discordant = only_first + only_second
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(only_first, discordant, 0.5).pvalue)
    differences = first.astype(float) - second.astype(float)
    low, high = bootstrap_ci(differences, rng, resamples)
    return PairedTest(name, "exact McNemar", len(differences), float(differences.mean()), low, high, p_value)


def verdict(test: PairedTest, claimed_sign: int) -> str:
    """HELD when ``test`` is significant (p below ALPHA, its interval on one side of zero) in the direction
    ``claimed_sign`` (+1 or -1), CONTRADICTED when significant the other way, NOT_SHOWN otherwise."""
    if not (test.p_value < ALPHA and (test.ci_low > 0 or test.ci_high < 0)):
        return NOT_SHOWN
    side = 1 if test.ci_low > 0 else -1  # the interval lies wholly above or wholly below zero
    return HELD if side == claimed_sign else CONTRADICTED


def equivalence_verdict(test: PairedTest, margin: float) -> str:
    """For a claim of *no* meaningful difference: HELD when the interval lies within +-``margin``,
    CONTRADICTED when the difference is significant and its interval lies wholly outside, else NOT_SHOWN."""
    if -margin < test.ci_low and test.ci_high < margin:
        return HELD
    if test.p_value < ALPHA and (test.ci_low >= margin or test.ci_high <= -margin):
        return CONTRADICTED
    return NOT_SHOWN


def log_log_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log(y) against log(x)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])
