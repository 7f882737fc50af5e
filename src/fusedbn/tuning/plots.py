"""PNG plots of a finished study, drawn on matplotlib Figure objects (no display, no global backend).

``history.png`` (every trial, stage after stage), ``learning_rate.png``, ``beta.png`` (the momentum beta, else
the first tuned beta), ``learning_rate_beta.png`` and, when the summary has them, ``importances.png``.
Complete trials are dots coloured by stage, pruned trials grey crosses at their last report; diverged and
failed trials have no accuracy (marks along the bottom of the history). Legends list only what a plot shows.
"""

import itertools
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib.ticker as mticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from optuna.trial import FrozenTrial, TrialState

from fusedbn.tuning.importance import ABOVE_NOISE, Importances
from fusedbn.tuning.report import Summary, scored_trials, scored_value
from fusedbn.tuning.search import TuningResult
from fusedbn.tuning.space import LogNear1Scale, LogScale, Param

STAGE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
MIN_POINTS_FOR_CONTOUR = 8
MAX_TICKS = 24
MOMENTUM_BETAS = ("momentum", "adam_beta1")
MEANINGS = {
    "learning_rate": "the initial learning rate",
    "momentum": "SGD's momentum beta",
    "adam_beta1": "Adam's first-moment beta",
    "adam_beta2": "Adam's second-moment beta",
    "bn_beta": "BatchNorm's running-statistics beta",
}
DOT = {"s": 30, "edgecolor": "black", "linewidth": 0.4, "zorder": 3}
CROSS = {"color": "grey", "marker": "x", "s": 25, "zorder": 2}


def _coord_limits(result: TuningResult, param: Param) -> tuple[float, float]:
    """The declared range of ``param`` on its scale's coordinate, padded by 5% of its width per side."""
    lo, hi = result.coord_range(param)
    return lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)


def _stage_colour(index: int) -> str:
    return STAGE_COLOURS[index % len(STAGE_COLOURS)]


def _mark(ax: Axes, x: float, accuracy: float, trial: FrozenTrial, index: int) -> None:
    """A trial's point: a dot in its stage's colour when complete, a grey cross when pruned."""
    if trial.state == TrialState.COMPLETE:
        ax.scatter(x, accuracy, color=_stage_colour(index), **DOT)
    else:
        ax.scatter(x, accuracy, **CROSS)


def _key(label: str, **style: object) -> Line2D:
    """A legend entry for markers drawn with ``style``."""
    return Line2D([], [], linestyle="", label=label, **style)


def _legend(ax: Axes, result: TuningResult, *extra: Line2D) -> None:
    """A legend of the stages, of pruned trials when any is drawn, and of ``extra`` entries."""
    handles = [
        _key(f"stage {i + 1}", marker="o", markerfacecolor=_stage_colour(i), markeredgecolor="black")
        for i in range(len(result.stages))
    ]
    if any(trial.state == TrialState.PRUNED for _, trial, _ in scored_trials(result)):
        handles.append(_key("pruned (last report)", marker="x", color="grey"))
    ax.legend(handles=[*handles, *extra], loc="lower right", fontsize=8)


def beta_label(one_minus_beta: float) -> str:
    """Beta written with as many decimals as 1 - beta needs: 0.1 -> "0.9", 0.001 -> "0.999"."""
    if one_minus_beta <= 0:  # beyond 1, only on a padded linear axis
        return f"{1 - one_minus_beta:.3g}"
    return f"{1 - one_minus_beta:.{max(1, round(-math.log10(one_minus_beta)))}f}"


def history_figure(result: TuningResult) -> Figure:
    """Every trial at x = (trials of the earlier stages) + its number in its stage, ticks labelled with the
    number in the stage, dotted lines between stages, the best so far."""
    ax = Figure(figsize=(8, 4.5)).subplots()
    sizes = [len(stage.trials()) for stage in result.stages]
    offsets = [0, *itertools.accumulate(sizes)]
    best_so_far, xs, best_line, unscored = -math.inf, [], [], []
    for index, stage in enumerate(result.stages):
        for trial in sorted(stage.trials(), key=lambda t: t.number):
            x, accuracy = offsets[index] + trial.number, scored_value(trial)
            if accuracy is None:
                unscored.append(x)
                continue
            _mark(ax, x, accuracy, trial, index)
            if trial.state == TrialState.COMPLETE:
                best_so_far = max(best_so_far, accuracy)
            xs.append(x)
            best_line.append(best_so_far if best_so_far > -math.inf else math.nan)
        if index:
            ax.axvline(offsets[index] - 0.5, color="grey", linestyle=":", linewidth=1)
    extra = []
    if best_so_far > -math.inf:
        extra += ax.step(xs, best_line, where="post", color="black", label="best so far")
    if unscored:  # along the bottom of the axes
        bottom = ax.get_xaxis_transform()
        ax.scatter(unscored, [0.0] * len(unscored), transform=bottom, marker="^", color="tab:red", zorder=4)
        extra.append(_key("no accuracy (failed, interrupted or diverged)", marker="^", color="tab:red"))
    _legend(ax, result, *extra)
    step = 1  # 1, 2, 5, 10, 20, 50...: at most MAX_TICKS ticks
    while offsets[-1] / step > MAX_TICKS:
        step = step * 5 // 2 if str(step).startswith("2") else step * 2
    ticks = [(x + n, n) for x, size in zip(offsets, sizes, strict=False) for n in range(0, size, step)]
    ax.set_xticks([x for x, _ in ticks], [str(n) for _, n in ticks])
    ax.set_xlim(-0.5, max(offsets[-1] - 0.5, 0.5))
    ax.set_xlabel("trial number in its stage (stages left to right, dotted lines between them)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy of every trial, stage after stage")
    ax.grid(True, alpha=0.3)
    return ax.figure


def accuracy_figure(result: TuningResult, param: Param) -> Figure:
    """Validation accuracy against ``param`` on its scale: a log axis for ``log``, a log axis of 1 - beta
    labelled in beta (growing to the right) for ``log-near-1``, else a linear one."""
    ax = Figure(figsize=(7, 4.5)).subplots()
    near_1 = isinstance(param.scale, LogNear1Scale)
    for index, trial, accuracy in scored_trials(result):
        value = param.value_from(trial.params)
        _mark(ax, 1.0 - value if near_1 else value, accuracy, trial, index)
    _legend(ax, result)
    ax.set_ylabel("validation accuracy")
    ax.grid(True, which="both", alpha=0.3)
    if near_1:
        ax.set_xscale("log")
        ax.set_xlim(*(10**c for c in reversed(_coord_limits(result, param))))
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: beta_label(v)))
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    else:
        ax.set_xscale("log" if isinstance(param.scale, LogScale) else "linear")
        ax.set_xlim(*(param.scale.from_coord(c) for c in _coord_limits(result, param)))
    ax.set_xlabel(param.axis_label())
    meaning = f", {MEANINGS[param.name]}" if param.name in MEANINGS else ""
    ax.set_title(f"Validation accuracy of each trial vs {param.name}{meaning}")
    return ax.figure


def _learning_rate_beta(result: TuningResult, lr: Param, beta: Param) -> Figure:
    # Drawn in the sampling coordinates (log10(learning rate) and log10(1 - beta) on the default scales),
    # so contours are interpolated on the scales the points were drawn on; ticks show natural units.
    points = [
        (lr.scale.to_coord(lr.value_from(t.params)), beta.scale.to_coord(beta.value_from(t.params)), a)
        for _, t, a in scored_trials(result)
        if t.state == TrialState.COMPLETE
    ]
    ax = Figure(figsize=(7, 5)).subplots()
    if points:
        xs, ys, accs = zip(*points, strict=True)
        if len(points) >= MIN_POINTS_FOR_CONTOUR:
            ax.tricontourf(xs, ys, accs, levels=10, cmap="viridis", alpha=0.45)
        dots = ax.scatter(xs, ys, c=accs, cmap="viridis", s=40, edgecolor="black", linewidth=0.5, zorder=3)
        ax.figure.colorbar(dots, ax=ax, label="validation accuracy")
    for axis, param in ((ax.xaxis, lr), (ax.yaxis, beta)):
        if isinstance(param.scale, (LogScale, LogNear1Scale)):
            axis.set_major_locator(mticker.MultipleLocator(1))  # one tick per decade
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{lr.scale.from_coord(v):.3g}"))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: beta_label(1 - beta.scale.from_coord(v))))
    ax.set_xlim(*_coord_limits(result, lr))
    ax.set_ylim(*reversed(_coord_limits(result, beta)))  # beta grows upwards
    ax.set_xlabel(lr.axis_label())
    ax.set_ylabel(beta.axis_label())
    ax.set_title(f"Learning rate x {beta.name} (complete trials)")
    ax.grid(True, alpha=0.3)
    return ax.figure


def draw_importances(ax: Axes, measured: Importances, tiers: Mapping[str, int]) -> None:
    """A bar per parameter on ``ax`` (most important on top, coloured by tier) with its 5-95% interval, over
    the noise floor: the dummy's importance (dashed) and its interval (grey band)."""
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
    centres, halves = [(a + b) / 2 for a, b in intervals], [(b - a) / 2 for a, b in intervals]
    ax.errorbar(centres, rows, xerr=halves, fmt="none", ecolor="black", capsize=3, zorder=3)
    ax.set_yticks(rows, [f"{name} (tier {tiers[name]})" for name in order])
    ax.set_xlim(0, max(high, *(b for _, b in intervals), *measured.values.values()) * 1.1)
    ax.set_xlabel("fANOVA importance (sampled scales); whiskers: 5-95% bootstrap interval")
    # Below the axes, where it hides no bar or whisker.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)


def figures(result: TuningResult, summary: Summary) -> dict[str, Figure]:
    """The plots that the study's parameters allow, by file name."""
    lr = next((p for p in result.tuned if p.name == "learning_rate"), None)
    betas = [p for p in result.tuned if p.name in MOMENTUM_BETAS or isinstance(p.scale, LogNear1Scale)]
    beta = min(betas, key=lambda p: p.name not in MOMENTUM_BETAS, default=None)
    drawn = {"history.png": history_figure(result)}
    for name, param in (("learning_rate.png", lr), ("beta.png", beta)):
        if param is not None:
            drawn[name] = accuracy_figure(result, param)
    if lr is not None and beta is not None:
        drawn["learning_rate_beta.png"] = _learning_rate_beta(result, lr, beta)
    if (measured := summary.importances) is not None:
        ax = Figure(figsize=(7, 0.5 * len(measured.values) + 2.0)).subplots()
        draw_importances(ax, measured, summary.tiers)
        ax.set_title(
            f"Parameter importances over {measured.trials} trials (bar colour = tier)\n"
            f"{ABOVE_NOISE}: {', '.join(measured.above_noise()) or 'none'}",
            fontsize=10,
        )
        drawn["importances.png"] = ax.figure
    return drawn


def write_plots(result: TuningResult, summary: Summary, out_dir: Path) -> list[Path]:
    """Draw the plots that the study's parameters allow into ``out_dir``; returns their paths."""
    written = []
    for name, fig in figures(result, summary).items():
        written.append(Path(out_dir) / name)
        fig.tight_layout()
        fig.savefig(written[-1], dpi=110)
    return written
