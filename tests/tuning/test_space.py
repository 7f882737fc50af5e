"""Scales, declarations, tiers, range overrides and narrowing of fusedbn.tuning.space."""

import math

import numpy as np
import optuna
import pytest

from fusedbn.tuning.space import (
    Param,
    SpaceError,
    check_space,
    default_space,
    narrow,
    split_by_tier,
    with_ranges,
)

DRAWS = 4000


def draws(param: Param, n: int = DRAWS) -> np.ndarray:
    """``n`` values of ``param`` sampled over its declared range by Optuna's seeded random sampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    return np.array([param.suggest(study.ask(), param.low, param.high) for _ in range(n)])


def by_name(name: str, optimizer: str = "sgd") -> Param:
    return next(p for p in default_space(optimizer) if p.name == name)


def test_learning_rate_gives_each_decade_the_same_share() -> None:
    values = draws(by_name("learning_rate"))
    assert values.min() >= 1e-4 and values.max() <= 1.0
    shares = np.histogram(np.log10(values), bins=[-4, -3, -2, -1, 0])[0] / DRAWS
    # Binomial standard error of a 1/4 share over 4000 draws is 0.007: 0.03 is over 4 of them.
    assert np.allclose(shares, 0.25, atol=0.03), shares


def test_beta_draws_split_evenly_between_0_9_to_0_99_and_0_99_to_0_999() -> None:
    values = draws(by_name("momentum"))
    assert values.min() >= 0.9 and values.max() <= 0.999
    assert abs(np.mean(values < 0.99) - 0.5) < 0.03
    # A uniform draw over [0.9, 0.999] would put only ~9% above 0.99.
    assert abs(np.mean(values > 0.99) - 0.5) < 0.03


def test_beta_trial_records_beta_and_samples_one_minus_beta() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    beta = by_name("adam_beta2", "adam").suggest(trial, 0.99, 0.9999)
    assert 0.99 <= beta <= 0.9999
    assert trial.user_attrs["adam_beta2"] == beta
    assert trial.params["one_minus_adam_beta2"] == pytest.approx(1 - beta)


def test_batch_size_is_a_power_of_two_with_every_exponent_equally_likely() -> None:
    values = draws(by_name("batch_size"), n=2000)
    assert set(values) == {16, 32, 64, 128, 256}
    counts = np.array([np.sum(values == v) for v in (16, 32, 64, 128, 256)]) / 2000
    assert np.allclose(counts, 0.2, atol=0.04), counts


def test_hidden_units_are_integers_on_a_log_scale() -> None:
    values = draws(by_name("hidden_units"), n=2000)
    assert all(float(v).is_integer() for v in values)
    assert values.min() >= 16 and values.max() <= 256
    # [16, 64] and [64, 256] are the two halves of the range in log space.
    assert abs(np.mean(values < 64) - 0.5) < 0.05


def test_user_parameter_on_a_linear_scale_is_uniform() -> None:
    values = draws(Param(name="dropout", low=0.0, high=0.5, scale="linear", tier=2, default=0.0))
    assert abs(np.mean(values < 0.25) - 0.5) < 0.03


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"low": 0.5, "high": 0.1, "scale": "linear"}, "empty or inverted range"),
        ({"low": 0.3, "high": 0.3, "scale": "linear"}, "empty or inverted range"),
        ({"low": 0.5, "high": 1.2, "scale": "log-near-1"}, "strictly between 0 and 1"),
        ({"low": 0.0, "high": 0.9, "scale": "log-near-1"}, "strictly between 0 and 1"),
        ({"low": 0.0, "high": 1.0, "scale": "log"}, "must be positive"),
        ({"low": 16, "high": 100, "scale": "pow2"}, "powers of two"),
        ({"low": 1, "high": 2, "scale": "cubic"}, "unknown scale"),
        ({"low": 1, "high": math.inf, "scale": "linear"}, "finite"),
        ({"low": 1.5, "high": 4, "scale": "linear", "integer": True}, "integer bounds"),
    ],
)
def test_unusable_declarations_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(SpaceError, match=message):
        Param(name="x", tier=1, default=1, **kwargs)


def test_with_ranges_replaces_a_range_and_refuses_unknown_names() -> None:
    space = with_ranges(default_space(), {"learning_rate": (1e-3, 0.1)})
    lr = next(p for p in space if p.name == "learning_rate")
    assert (lr.low, lr.high, lr.scale.name) == (1e-3, 0.1, "log")
    with pytest.raises(SpaceError, match="unknown parameter.*learnig_rate"):
        with_ranges(default_space(), {"learnig_rate": (1e-3, 0.1)})
    with pytest.raises(SpaceError, match="strictly between 0 and 1"):
        with_ranges(default_space(), {"momentum": (0.9, 1.5)})


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(SpaceError, match="learning_rate"):
        check_space(default_space() + [by_name("learning_rate")])
    with pytest.raises(SpaceError, match="empty"):
        check_space([])


def test_tiers_choose_the_tuned_parameters_and_fix_the_rest_at_defaults() -> None:
    tuned, fixed = split_by_tier(default_space("sgd"), 2)
    assert [p.name for p in tuned] == ["learning_rate", "momentum", "hidden_units", "batch_size"]
    assert fixed == {"num_layers": 2, "lr_decay": 0.0, "bn_beta": 0.9}
    tuned, fixed = split_by_tier(default_space("adam"), 1)
    assert [p.name for p in tuned] == ["learning_rate"]
    assert fixed["adam_beta1"] == 0.9 and fixed["adam_beta2"] == 0.999 and fixed["adam_epsilon"] == 1e-8
    assert {p.name for p in split_by_tier(default_space("adam"), 4)[0]} == {
        p.name for p in default_space("adam")
    }
    with pytest.raises(SpaceError, match="tiers"):
        split_by_tier(default_space(), 0)


def test_narrowing_a_log_parameter_works_in_decades() -> None:
    lr = by_name("learning_rate")
    # Best at 1e-3 and 1e-2; the range spans 4 decades, so the margin of 0.1 adds 0.4 decade per side.
    low, high = narrow(lr, (1e-4, 1.0), [1e-3, 1e-2], margin=0.1)
    assert low == pytest.approx(10**-3.4) and high == pytest.approx(10**-1.6)


def test_narrowing_a_beta_works_on_one_minus_beta() -> None:
    beta = by_name("momentum")
    # 1 - beta at 0.01 and 0.005: log10 -2 and -2.301; width 2 decades, so 0.2 decade per side.
    low, high = narrow(beta, (0.9, 0.999), [0.99, 0.995], margin=0.1)
    assert low == pytest.approx(1 - 10**-1.8) and high == pytest.approx(1 - 10 ** (math.log10(0.005) - 0.2))


def test_narrowing_never_leaves_the_current_bounds() -> None:
    lr = by_name("learning_rate")
    assert narrow(lr, (1e-3, 0.1), [0.1, 0.09], margin=0.5) == (
        pytest.approx(0.1 * 10**-1.0457575, rel=1e-4),
        0.1,
    )
    beta = by_name("momentum")
    low, high = narrow(beta, (0.9, 0.999), [0.999], margin=0.2)
    assert high == 0.999 and low == pytest.approx(1 - 10**-2.6)


def test_narrowing_integers_rounds_outwards_within_the_range() -> None:
    batch = by_name("batch_size")
    # Exponents 5 and 6 of [4, 8]: 0.4 per side gives [4.6, 6.4], rounded out to [4, 7].
    assert narrow(batch, (16, 256), [32, 64], margin=0.1) == (16, 128)
    hidden = by_name("hidden_units")
    low, high = narrow(hidden, (16, 256), [100], margin=0.05)
    assert isinstance(low, int) and isinstance(high, int)
    # 100 * 16 ** +-0.05 = [87.1, 114.9], rounded out.
    assert (low, high) == (87, 115)
