"""Hyperparameters, their scales and priority tiers, and how a stage's bounds narrow around the best trials.

Every parameter lives on a :class:`Scale` (``linear``, ``log``, ``log-near-1`` for betas, ``pow2`` for powers
of two), and sampling, grid points, narrowing, importances and plot axes all work in that scale's coordinate.
:func:`default_space` is the built-in space, tiered as the classic tuning advice ranks the parameters (1
matters most); docs/tuning.md tabulates it. A study tunes tiers 1..k and the other parameters keep their
defaults.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import optuna

OPTIMIZERS = ("sgd", "adam")

Bounds = dict[str, tuple[float, float]]


class SpaceError(ValueError):
    """A hyperparameter, range, tier or override that cannot be used."""


@dataclass(frozen=True)
class Scale:
    """The linear scale, which the other scales override where they differ: it maps a natural value to its
    coordinate (the axis sampling is uniform on) and to what Optuna samples and stores."""

    name: str = "linear"
    description: str = "the value itself"
    axis_label: str = "{name} (linear scale)"
    log: bool = False  # whether Optuna samples the value itself log-uniformly
    prefix: str = ""  # Optuna samples "<prefix><name>"; a prefixed parameter's value is also recorded

    def check(self, param: str, low: float, high: float, integer: bool) -> None:
        """Raise :class:`SpaceError` unless ``[low, high]`` is a usable range on this scale."""
        if not (math.isfinite(low) and math.isfinite(high)):
            raise SpaceError(f"{param}: range bounds must be finite, got [{low}, {high}]")
        if low >= high:
            raise SpaceError(f"{param}: empty or inverted range [{low}, {high}]; need low < high")
        if integer and not (float(low).is_integer() and float(high).is_integer()):
            raise SpaceError(f"{param}: integer parameter needs integer bounds, got [{low}, {high}]")

    def to_coord(self, value: float) -> float:
        """The value's coordinate on this scale."""
        return float(value)

    def from_coord(self, coord: float) -> float:
        """The value at a coordinate (inverse of :meth:`to_coord`)."""
        return coord

    def suggest(self, trial: optuna.Trial, param: str, low: float, high: float, integer: bool) -> float:
        """Sample ``param`` within ``[low, high]`` (natural units) on this scale; returns the value."""
        if integer:
            return trial.suggest_int(param, int(low), int(high), log=self.log)
        return trial.suggest_float(param, low, high, log=self.log)

    def value_from(self, sampled: float) -> float:
        """The natural value of what Optuna stored in ``trial.params``."""
        return sampled

    def round_coords(self, lo: float, hi: float) -> tuple[float, float]:
        """Widen coordinate bounds to the nearest ones this scale can sample (only ``pow2`` rounds)."""
        return lo, hi


@dataclass(frozen=True)
class LogScale(Scale):
    """log10(value): each decade of the range gets the same share of draws."""

    name: str = "log"
    description: str = "log10(value)"
    axis_label: str = "{name} (log scale)"
    log: bool = True

    def check(self, param: str, low: float, high: float, integer: bool) -> None:
        super().check(param, low, high, integer)
        if low <= 0:
            raise SpaceError(f"{param}: a log-scale range must be positive, got [{low}, {high}]")

    def to_coord(self, value: float) -> float:
        return math.log10(value)

    def from_coord(self, coord: float) -> float:
        return 10.0**coord


@dataclass(frozen=True)
class LogNear1Scale(Scale):
    """log10(1 - value), for betas in (0, 1); Optuna samples ``one_minus_<name>``."""

    name: str = "log-near-1"
    description: str = "log10(1 - value)"
    axis_label: str = "{name} (axis: log of 1 - beta)"
    prefix: str = "one_minus_"

    def check(self, param: str, low: float, high: float, integer: bool) -> None:
        super().check(param, low, high, integer)
        if not (0 < low and high < 1):
            raise SpaceError(f"{param}: a beta must lie strictly between 0 and 1, got [{low}, {high}]")
        if integer:
            raise SpaceError(f"{param}: a log-near-1 parameter cannot be an integer")

    def to_coord(self, value: float) -> float:
        return math.log10(1.0 - value)

    def from_coord(self, coord: float) -> float:
        return 1.0 - 10.0**coord

    def suggest(self, trial: optuna.Trial, param: str, low: float, high: float, integer: bool) -> float:
        return 1.0 - trial.suggest_float(self.prefix + param, 1.0 - high, 1.0 - low, log=True)

    def value_from(self, sampled: float) -> float:
        return 1.0 - sampled


@dataclass(frozen=True)
class Pow2Scale(Scale):
    """log2(value) with integer exponents, for powers of two; Optuna samples ``log2_<name>``."""

    name: str = "pow2"
    description: str = "log2(value), integer exponents"
    axis_label: str = "{name} (log2 scale)"
    prefix: str = "log2_"

    def check(self, param: str, low: float, high: float, integer: bool) -> None:
        super().check(param, low, high, integer)
        if not all(v >= 1 and float(v).is_integer() and (int(v) & (int(v) - 1)) == 0 for v in (low, high)):
            raise SpaceError(f"{param}: a pow2 range needs powers of two as bounds, got [{low}, {high}]")

    def to_coord(self, value: float) -> float:
        return math.log2(value)

    def from_coord(self, coord: float) -> float:
        return 2.0**coord

    def suggest(self, trial: optuna.Trial, param: str, low: float, high: float, integer: bool) -> float:
        return 2 ** trial.suggest_int(self.prefix + param, round(math.log2(low)), round(math.log2(high)))

    def value_from(self, sampled: float) -> float:
        return 2 ** int(sampled)

    def round_coords(self, lo: float, hi: float) -> tuple[float, float]:
        return math.floor(lo + 1e-9), math.ceil(hi - 1e-9)


SCALES: dict[str, Scale] = {s.name: s for s in (Scale(), LogScale(), LogNear1Scale(), Pow2Scale())}


@dataclass(frozen=True, kw_only=True)
class Param:
    """One hyperparameter: its range ``[low, high]`` (natural units), scale (a :class:`Scale` or its name),
    priority tier and ``default`` (used when its tier is not tuned; it may lie outside the range). ``integer``
    makes a ``linear`` or ``log`` parameter an int (``pow2`` always is). Raises :class:`SpaceError` for an
    unusable declaration."""

    name: str
    low: float
    high: float
    scale: Scale | str
    tier: int
    default: float
    integer: bool = field(default=False)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise SpaceError(f"parameter name {self.name!r} is not a Python identifier")
        if isinstance(self.scale, str):
            if self.scale not in SCALES:
                raise SpaceError(
                    f"{self.name}: unknown scale {self.scale!r}; choose one of {', '.join(SCALES)}"
                )
            object.__setattr__(self, "scale", SCALES[self.scale])
        if not (isinstance(self.tier, int) and self.tier >= 1):
            raise SpaceError(f"{self.name}: tier must be an integer >= 1, got {self.tier!r}")
        self.scale.check(self.name, self.low, self.high, self.integer)

    @property
    def is_int(self) -> bool:
        """Whether values are integers."""
        return self.integer or isinstance(self.scale, Pow2Scale)

    @property
    def optuna_name(self) -> str:
        """The name Optuna samples and stores in ``trial.params``."""
        return self.scale.prefix + self.name

    def suggest(self, trial: optuna.Trial, low: float, high: float) -> float:
        """Sample this parameter within ``[low, high]`` (natural units) on its scale; returns the value (also
        the trial's user attribute ``<name>`` when Optuna samples it under another name)."""
        value = self.scale.suggest(trial, self.name, low, high, self.integer)
        if self.scale.prefix:
            trial.set_user_attr(self.name, value)
        return value

    def value_from(self, trial_params: Mapping[str, float]) -> float:
        """This parameter's value in natural units, read from a finished trial's ``params``."""
        return self.scale.value_from(trial_params[self.optuna_name])

    def axis_label(self) -> str:
        """How a plot axis along this parameter is labelled: its name and its scale."""
        return self.scale.axis_label.format(name=self.name)


def default_space(optimizer: str = "sgd") -> list[Param]:
    """The built-in search space for ``optimizer`` ("sgd" or "adam"), tabulated in docs/tuning.md."""
    if optimizer not in OPTIMIZERS:
        raise SpaceError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    space = [
        Param(name="learning_rate", low=1e-4, high=1.0, scale="log", tier=1, default=0.01),
        Param(name="hidden_units", low=16, high=256, scale="log", tier=2, default=64, integer=True),
        Param(name="batch_size", low=16, high=256, scale="pow2", tier=2, default=64),
        Param(name="num_layers", low=1, high=4, scale="linear", tier=3, default=2, integer=True),
        Param(name="lr_decay", low=1e-3, high=1.0, scale="log", tier=3, default=0.0),
        Param(name="bn_beta", low=0.9, high=0.999, scale="log-near-1", tier=4, default=0.9),
    ]
    if optimizer == "sgd":
        space.insert(1, Param(name="momentum", low=0.9, high=0.999, scale="log-near-1", tier=2, default=0.9))
    else:
        space += [
            Param(name="adam_beta1", low=0.9, high=0.999, scale="log-near-1", tier=4, default=0.9),
            Param(name="adam_beta2", low=0.99, high=0.9999, scale="log-near-1", tier=4, default=0.999),
            Param(name="adam_epsilon", low=1e-10, high=1e-6, scale="log", tier=4, default=1e-8),
        ]
    return space


def check_space(space: Sequence[Param]) -> None:
    """Raise :class:`SpaceError` when the space is empty or two parameters share a name."""
    if not space:
        raise SpaceError("the search space is empty")
    seen: set[str] = set()
    for param in space:
        for name in {param.name, param.optuna_name}:
            if name in seen:
                raise SpaceError(f"two parameters are both named {name!r}")
            seen.add(name)


def _check_known(space: Sequence[Param], overrides: Mapping[str, object]) -> None:
    """Raise :class:`SpaceError` naming every key of ``overrides`` that is not a parameter of ``space``."""
    known = [param.name for param in space]
    if unknown := sorted(set(overrides) - set(known)):
        raise SpaceError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(known)}")


def with_scales(space: Sequence[Param], scales: Mapping[str, str]) -> list[Param]:
    """A copy of ``space`` with the scales in ``scales`` (name -> scale name) instead of the declared ones (a
    ``pow2`` parameter put on ``linear`` keeps integer values). Raises :class:`SpaceError`."""
    _check_known(space, scales)
    return [replace(p, scale=scales[p.name], integer=p.is_int) if p.name in scales else p for p in space]


def with_ranges(space: Sequence[Param], ranges: Mapping[str, tuple[float, float]]) -> list[Param]:
    """A copy of ``space`` with the ranges in ``ranges`` (name -> (low, high)) instead of the declared ones.
    Raises :class:`SpaceError`."""
    _check_known(space, ranges)
    return [
        replace(p, low=ranges[p.name][0], high=ranges[p.name][1]) if p.name in ranges else p for p in space
    ]


def split_by_tier(space: Sequence[Param], tiers: int) -> tuple[list[Param], dict[str, float]]:
    """The parameters tuned when tiers 1..``tiers`` are searched, and the defaults of the others."""
    if not (isinstance(tiers, int) and tiers >= 1):
        raise SpaceError(f"tiers must be an integer >= 1, got {tiers!r}")
    return [p for p in space if p.tier <= tiers], {p.name: p.default for p in space if p.tier > tiers}


def narrow(
    param: Param, current: tuple[float, float], best_values: Sequence[float], margin: float
) -> tuple[float, float]:
    """New bounds for ``param``: the span of ``best_values`` widened by ``margin`` x the current width, on the
    parameter's scale, within the ``current`` bounds (natural units); integer bounds rounded outwards, then
    clipped."""
    if not best_values:
        raise ValueError(f"{param.name}: narrowing needs at least one value from a best trial")
    coords = [param.scale.to_coord(v) for v in best_values]
    current_lo, current_hi = sorted(param.scale.to_coord(v) for v in current)
    pad = margin * (current_hi - current_lo)
    lo = max(min(coords) - pad, current_lo)
    hi = min(max(coords) + pad, current_hi)
    lo, hi = param.scale.round_coords(lo, hi)
    low, high = sorted((param.scale.from_coord(lo), param.scale.from_coord(hi)))
    if param.integer:
        low, high = math.floor(low + 1e-9), math.ceil(high - 1e-9)
    low, high = max(low, current[0]), min(high, current[1])
    return (int(low), int(high)) if param.is_int else (low, high)
