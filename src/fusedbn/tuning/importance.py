"""Parameter importances on the scales parameters are sampled on, with bootstrap intervals and a noise floor.

fANOVA (Optuna's evaluator) is fitted to each parameter's coordinate on its scale, over the box of the bounds,
with a dummy parameter ``noise`` drawn uniformly per trial: its importance is what a parameter with no effect
scores (the noise floor). The fit is repeated on bootstrap resamples of the trials; one parameter "ranks
above" another when it does so in at least ``CONFIDENCE`` of them.
"""

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.distributions import FloatDistribution

from fusedbn.tuning.search import optuna_logs

NOISE = "noise"
CONFIDENCE = 0.95
ABOVE_NOISE = f"above the noise floor in at least {CONFIDENCE:.0%} of the resamples"


@dataclass
class Importances:
    """fANOVA importances (summing to 1 with the noise dummy's) over ``trials`` trials: ``values`` fitted on
    all, ``intervals`` the 5th-95th percentiles over the resamples, ``noise`` and ``noise_interval`` the
    dummy's; ``above[a][b]``: the share of resamples where a scores above b (or ``noise``)."""

    trials: int
    resamples: int
    values: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    noise: float
    noise_interval: tuple[float, float]
    above: dict[str, dict[str, float]]

    def order(self) -> list[str]:
        """Parameter names, most important first."""
        return sorted(self.values, key=self.values.get, reverse=True)

    def ranks_above(self, first: str, second: str) -> bool:
        """Whether ``first`` scores above ``second`` (a parameter or ``noise``) in enough resamples."""
        return self.above[first][second] >= CONFIDENCE

    def above_noise(self) -> list[str]:
        """The parameters that score :data:`ABOVE_NOISE` (the dummy), most important first."""
        return [name for name in self.order() if self.ranks_above(name, NOISE)]


def _fanova(
    coords: np.ndarray, values: np.ndarray, bounds: list[tuple[float, float]], seed: int
) -> np.ndarray:
    """Normalised fANOVA importance of each column of ``coords`` for ``values`` (0 for a constant column)."""
    names = [f"x{i}" for i in range(coords.shape[1])]
    distributions = {name: FloatDistribution(lo, hi) for name, (lo, hi) in zip(names, bounds, strict=True)}
    with optuna_logs(optuna.logging.WARNING):  # no "new study created" line per fit
        study = optuna.create_study(direction="maximize")
    lows, highs = np.array(bounds).T
    for row, value in zip(np.clip(coords, lows, highs), values, strict=True):
        params = dict(zip(names, map(float, row), strict=True))
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    measured = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return np.array([measured.get(name, 0.0) for name in names])


def fanova_importances(
    names: list[str],
    coords: np.ndarray,
    values: np.ndarray,
    bounds: list[tuple[float, float]],
    seed: int,
    resamples: int = 20,
) -> Importances:
    """Importances of the parameters ``names`` from ``coords`` (trials x parameters, on their scales) and the
    trials' ``values``, within ``bounds`` (per parameter, on the same scales)."""
    coords, values = np.asarray(coords, dtype=float), np.asarray(values, dtype=float)
    if coords.shape != (len(values), len(names)) or len(values) < 2:
        raise ValueError(
            f"need one row of {len(names)} coordinates per value, got {coords.shape} for {len(values)}"
        )
    rng = np.random.default_rng(seed)
    with_noise = np.column_stack([coords, rng.uniform(size=len(values))])
    all_bounds = [*bounds, (0.0, 1.0)]
    point = _fanova(with_noise, values, all_bounds, seed)
    samples = [rng.integers(0, len(values), len(values)) for _ in range(resamples)]
    draws = np.array([_fanova(with_noise[rows], values[rows], all_bounds, seed) for rows in samples])
    columns = [*names, NOISE]
    low, high = np.percentile(draws, [5, 95], axis=0)
    above = {
        first: {
            second: float(np.mean(draws[:, i] > draws[:, j])) for j, second in enumerate(columns) if j != i
        }
        for i, first in enumerate(columns)
    }
    return Importances(
        trials=len(values),
        resamples=resamples,
        values={name: float(point[i]) for i, name in enumerate(names)},
        intervals={name: (float(low[i]), float(high[i])) for i, name in enumerate(names)},
        noise=float(point[-1]),
        noise_interval=(float(low[-1]), float(high[-1])),
        above=above,
    )
