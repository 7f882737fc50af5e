"""fANOVA importances with a noise floor and bootstrap intervals (fusedbn.tuning.importance)."""

import numpy as np
import pytest

from fusedbn.tuning.importance import NOISE, fanova_importances


def test_a_parameter_that_drives_the_score_ranks_above_noise_and_an_idle_one_does_not() -> None:
    rng = np.random.default_rng(5)
    coords = rng.uniform(size=(40, 2))
    values = np.sin(3 * coords[:, 0]) + 0.01 * rng.normal(size=40)  # column 1 has no effect
    found = fanova_importances(["strong", "idle"], coords, values, [(0.0, 1.0)] * 2, seed=0, resamples=10)
    assert found.trials == 40 and found.resamples == 10
    assert found.order()[0] == "strong" and found.values["strong"] > 0.7
    assert found.ranks_above("strong", NOISE) and found.ranks_above("strong", "idle")
    assert not found.ranks_above("idle", NOISE)
    assert found.above_noise() == ["strong"]
    assert sum(found.values.values()) + found.noise == pytest.approx(1.0)
    for low, high in [*found.intervals.values(), found.noise_interval]:
        assert 0.0 <= low <= high <= 1.0


def test_importances_are_seeded() -> None:
    rng = np.random.default_rng(6)
    coords, values = rng.uniform(size=(25, 3)), rng.normal(size=25)
    first = fanova_importances(list("abc"), coords, values, [(0.0, 1.0)] * 3, seed=3, resamples=4)
    again = fanova_importances(list("abc"), coords, values, [(0.0, 1.0)] * 3, seed=3, resamples=4)
    assert first == again


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="one row of 2 coordinates per value"):
        fanova_importances(["a", "b"], np.zeros((5, 3)), np.zeros(5), [(0.0, 1.0)] * 2, seed=0)
