"""PNG plots of a finished study, drawn on matplotlib Figure objects (no display, no global backend).

- ``history.png``: accuracy of every trial in the order they ran, stage by stage, and the best so far.
- ``learning_rate.png``: accuracy against the learning rate on a log axis.
- ``beta.png``: accuracy against the momentum beta (SGD's ``momentum`` or Adam's ``adam_beta1``; else the
  first tuned beta), on a log axis of 1 - beta labelled in beta (a linear axis when sampled linearly).
- ``learning_rate_beta.png``: learning rate x beta, coloured by accuracy, with accuracy contours.
- ``importances.png``: parameter importances from the summary with their bootstrap intervals, coloured
  by tier, over the noise floor (the importance of a dummy parameter with no effect, and its interval),
  when the summary has importances.

Complete trials are filled dots coloured by stage; pruned trials are grey crosses at their last reported
accuracy; diverged and failed trials have no accuracy and are left out (the summary counts them).
"""

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib.ticker as mticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from fusedbn.tuning.importance import Importances
from fusedbn.tuning.report import Summary, scored_value
from fusedbn.tuning.search import TuningResult
from fusedbn.tuning.space import LogNear1Scale, LogScale, Param

STAGE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
MIN_POINTS_FOR_CONTOUR = 8
MOMENTUM_BETAS = ("momentum", "adam_beta1")


def _scored(result: TuningResult) -> list[tuple[int, FrozenTrial, float]]:
    """(stage index from 0, trial, accuracy) for every trial with an accuracy, stage by stage."""
    return [
        (index, trial, accuracy)
        for index, stage in enumerate(result.stages)
        for trial in sorted(stage.trials(), key=lambda t: t.number)
        if (accuracy := scored_value(trial)) is not None
    ]


def _coord_limits(result: TuningResult, param: Param, pad: float = 0.05) -> tuple[float, float]:
    """The declared range of ``param`` on its scale's coordinate, padded by ``pad`` x its width per side."""
    lo, hi = sorted(param.to_coord(v) for v in result.stages[0].bounds[param.name])
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


def _stage_colour(index: int) -> str:
    return STAGE_COLOURS[index % len(STAGE_COLOURS)]


def _scatter(
    ax: Axes, result: TuningResult, param: Param, x_of: Callable[[float], float] | None = None
) -> None:
    """Accuracy against ``param``'s value (or ``x_of(value)``): dots by stage, crosses for pruned."""
    for index, trial, accuracy in _scored(result):
        value = param.value_from(trial.params)
        x = x_of(value) if x_of else value
        if trial.state == TrialState.COMPLETE:
            ax.scatter(
                x, accuracy, color=_stage_colour(index), s=30, edgecolor="black", linewidth=0.4, zorder=3
            )
        else:
            ax.scatter(x, accuracy, color="grey", marker="x", s=25, zorder=2)
    _stage_legend(ax, len(result.stages))
    ax.set_ylabel("validation accuracy")
    ax.grid(True, which="both", alpha=0.3)


def _stage_legend(ax: Axes, stages: int) -> None:
    handles = [
        ax.scatter([], [], color=_stage_colour(i), edgecolor="black", linewidth=0.4, label=f"stage {i + 1}")
        for i in range(stages)
    ]
    handles.append(ax.scatter([], [], color="grey", marker="x", label="pruned (last report)"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)


def beta_label(one_minus_beta: float) -> str:
    """Beta written with as many decimals as 1 - beta needs: 0.1 -> "0.9", 0.001 -> "0.999"."""
    if one_minus_beta <= 0:  # beyond 1, only on a padded linear axis
        return f"{1 - one_minus_beta:.3g}"
    return f"{1 - one_minus_beta:.{max(1, round(-math.log10(one_minus_beta)))}f}"


def _history(result: TuningResult, path: Path) -> None:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    best_so_far, xs, best_line = -math.inf, [], []
    for position, (index, trial, accuracy) in enumerate(_scored(result)):
        if trial.state == TrialState.COMPLETE:
            ax.scatter(position, accuracy, color=_stage_colour(index), s=30, edgecolor="black", linewidth=0.4)
            best_so_far = max(best_so_far, accuracy)
        else:
            ax.scatter(position, accuracy, color="grey", marker="x", s=25)
        xs.append(position)
        best_line.append(best_so_far if best_so_far > -math.inf else math.nan)
    ax.step(xs, best_line, where="post", color="black", label="best so far")
    _stage_legend(ax, len(result.stages))
    ax.set_xlabel("trial (in order, stage after stage)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Optimisation history")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _learning_rate(result: TuningResult, lr: Param, path: Path) -> None:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    _scatter(ax, result, lr)
    if isinstance(lr.scale, LogScale):
        ax.set_xscale("log")
    ax.set_xlim(*(lr.from_coord(c) for c in _coord_limits(result, lr)))
    ax.set_xlabel(lr.axis_label())
    ax.set_title("Accuracy vs learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _beta(result: TuningResult, beta: Param, path: Path) -> None:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if isinstance(beta.scale, LogNear1Scale):
        _scatter(ax, result, beta, x_of=lambda value: 1.0 - value)
        ax.set_xscale("log")
        ax.set_xlim(*(10**c for c in reversed(_coord_limits(result, beta))))  # beta grows to the right
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: beta_label(v)))
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    else:
        _scatter(ax, result, beta)
        ax.set_xlim(*_coord_limits(result, beta))
    ax.set_xlabel(beta.axis_label())
    ax.set_title(f"Accuracy vs {beta.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _learning_rate_beta(result: TuningResult, lr: Param, beta: Param, path: Path) -> None:
    # Drawn in the sampling coordinates (log10(learning rate) and log10(1 - beta) on the default scales),
    # so contours are interpolated on the scales the points were drawn on; ticks show natural units.
    points = [
        (lr.to_coord(lr.value_from(t.params)), beta.to_coord(beta.value_from(t.params)), a)
        for _, t, a in _scored(result)
        if t.state == TrialState.COMPLETE
    ]
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    if points:
        xs, ys, accs = zip(*points, strict=True)
        if len(points) >= MIN_POINTS_FOR_CONTOUR:
            ax.tricontourf(xs, ys, accs, levels=10, cmap="viridis", alpha=0.45)
        dots = ax.scatter(xs, ys, c=accs, cmap="viridis", s=40, edgecolor="black", linewidth=0.5, zorder=3)
        fig.colorbar(dots, ax=ax, label="validation accuracy")
    for axis, param in ((ax.xaxis, lr), (ax.yaxis, beta)):
        if isinstance(param.scale, (LogScale, LogNear1Scale)):
            axis.set_major_locator(mticker.MultipleLocator(1))  # one tick per decade
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{lr.from_coord(v):.3g}"))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: beta_label(1 - beta.from_coord(v))))
    ax.set_xlim(*_coord_limits(result, lr))
    ax.set_ylim(*reversed(_coord_limits(result, beta)))  # beta grows upwards
    ax.set_xlabel(lr.axis_label())
    ax.set_ylabel(beta.axis_label())
    ax.set_title(f"Learning rate x {beta.name} (complete trials)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def draw_importances(ax: Axes, measured: Importances, tiers: Mapping[str, int]) -> None:
    """Importances on ``ax``: a bar per parameter (most important on top, coloured by tier) with its
    5-95% bootstrap interval, over the noise floor drawn behind the bars: the noise dummy's importance
    (dashed line) and its interval (grey band). Both are in the legend."""
    order = measured.order()
    rows = list(range(len(order)))[::-1]
    # The whisker spans the interval, which need not contain the fit on all trials (the bar).
    intervals = [measured.intervals[name] for name in order]
    low, high = measured.noise_interval
    ax.axvspan(low, high, color="grey", alpha=0.25, zorder=0, label="noise floor: dummy's 5-95% interval")
    ax.axvline(
        measured.noise, color="dimgrey", linestyle="--", zorder=1, label="noise floor: dummy's importance"
    )
    colours = [_stage_colour(tiers[name] - 1) for name in order]
    ax.barh(rows, [measured.values[name] for name in order], color=colours, zorder=2)
    ax.errorbar(
        [(a + b) / 2 for a, b in intervals],
        rows,
        xerr=[(b - a) / 2 for a, b in intervals],
        fmt="none",
        ecolor="black",
        capsize=3,
        zorder=3,
    )
    ax.set_yticks(rows, [f"{name} (tier {tiers[name]})" for name in order])
    ax.set_xlim(0, max(high, *(b for _, b in intervals), *measured.values.values()) * 1.1)
    ax.set_xlabel("fANOVA importance (sampled scales); whiskers: 5-95% bootstrap interval")
    # Below the axes, where it hides no bar or whisker.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)


def _importances(summary: Summary, path: Path) -> None:
    measured = summary.importances
    fig = Figure(figsize=(7, 0.5 * len(measured.values) + 2.0))
    ax = fig.subplots()
    draw_importances(ax, measured, summary.tiers)
    ax.set_title(
        f"Parameter importances over {measured.trials} trials (bar colour = tier)\n"
        f"above the noise floor in 95% of resamples: {', '.join(measured.above_noise()) or 'none'}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_plots(result: TuningResult, summary: Summary, out_dir: Path) -> list[Path]:
    """Draw the plots that the study's parameters allow into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    tuned = {p.name: p for p in result.tuned}
    lr = tuned.get("learning_rate")
    betas = sorted(
        (p for p in result.tuned if p.name in MOMENTUM_BETAS or isinstance(p.scale, LogNear1Scale)),
        key=lambda p: p.name not in MOMENTUM_BETAS,
    )
    beta = betas[0] if betas else None
    written = [out_dir / "history.png"]
    _history(result, written[-1])
    if lr is not None:
        written.append(out_dir / "learning_rate.png")
        _learning_rate(result, lr, written[-1])
    if beta is not None:
        written.append(out_dir / "beta.png")
        _beta(result, beta, written[-1])
    if lr is not None and beta is not None:
        written.append(out_dir / "learning_rate_beta.png")
        _learning_rate_beta(result, lr, beta, written[-1])
    if summary.importances is not None:
        written.append(out_dir / "importances.png")
        _importances(summary, written[-1])
    return written
