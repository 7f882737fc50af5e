"""The figures of ``fusedbn science``, drawn from what each finding keeps in ``science.json``.

Each :class:`~fusedbn.science.experiments.Finding` names its figure file and keeps the figure's data
(``figure_data``: a ``kind`` and plain lists), so :func:`draw_figure` draws a figure the same way
right after the experiments and later from ``science.json`` alone (``fusedbn science --replot``).
Every figure is titled with its experiment and verdict. Axes that several panels compare share their
limits, and an axis that does not start at zero says where it starts.

Drawn on matplotlib Figure objects (no display, no global backend): each function takes the figure's
title and data and returns the Figure; :func:`draw_figure` writes it as a PNG.
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from fusedbn.science.experiments import Finding
from fusedbn.tuning.importance import Importances
from fusedbn.tuning.plots import draw_importances

ARM_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
PAD = 0.05  # share of a data range added on each side of it


def _titled(fig: Figure, heading: str, top: float = 1.0) -> Figure:
    """``fig`` with ``heading`` as its title, laid out so that the panels fill it up to ``top``."""
    fig.suptitle(heading, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def _padded(low: float, high: float) -> tuple[float, float]:
    pad = PAD * max(high - low, 1e-3)
    return low - pad, high + pad


def _plain_numbers(axis: object, values: Sequence[float]) -> None:
    """Ticks of a log axis at ``values`` only, written as plain numbers (0.06, not 6x10^-2)."""
    axis.set_major_locator(FixedLocator(values))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def paired_panels(
    heading: str,
    panels: Sequence[Mapping[str, object]],
    arms: Sequence[str],
    ylabel: str,
) -> Figure:
    """Paired comparisons, one column per panel.

    Top row: each seed's pair of values joined by a line, and each arm's mean; every panel shares one
    value axis, whose start the axis label states. Bottom row: the paired differences first - second
    in percentage points, their mean with its 95% bootstrap interval and p-value, and the zero line;
    one difference axis, symmetric about zero, for all panels. Each panel is a mapping with ``title``,
    ``first`` and ``second`` (per-seed values) and ``test`` (a PairedTest as a dict).
    """
    firsts = [np.asarray(panel["first"], dtype=float) for panel in panels]
    seconds = [np.asarray(panel["second"], dtype=float) for panel in panels]
    low, high = _padded(
        min(min(a.min(), b.min()) for a, b in zip(firsts, seconds, strict=True)),
        max(max(a.max(), b.max()) for a, b in zip(firsts, seconds, strict=True)),
    )
    differences = [100 * (a - b) for a, b in zip(firsts, seconds, strict=True)]
    reach = max(
        max(np.abs(d).max(), 100 * abs(p["test"]["ci_low"]), 100 * abs(p["test"]["ci_high"]))
        for d, p in zip(differences, panels, strict=True)
    )
    reach = 1.15 * max(reach, 0.1)
    fig = Figure(figsize=(4.4 * len(panels), 7.2))
    axes = fig.subplots(2, len(panels), squeeze=False)
    for column, panel in enumerate(panels):
        values_ax, difference_ax = axes[0][column], axes[1][column]
        for a, b in zip(firsts[column], seconds[column], strict=True):
            values_ax.plot([0, 1], [a, b], color="grey", alpha=0.45, marker="o", markersize=3)
        values_ax.plot(
            [0, 1], [firsts[column].mean(), seconds[column].mean()], color="black", marker="D", linewidth=2
        )
        values_ax.set_xticks([0, 1], arms)
        values_ax.set_xlim(-0.3, 1.3)
        values_ax.set_ylim(low, high)
        values_ax.set_ylabel(f"{ylabel}\n(axis from {low:.3f}, not 0)", fontsize=9)
        values_ax.set_title(panel["title"], fontsize=10)
        values_ax.grid(True, axis="y", alpha=0.3)
        _difference_panel(difference_ax, differences[column], panel["test"], reach, arms)
    # One legend for every panel, between the title and the panels, where it hides no data.
    fig.legend(
        handles=[
            Line2D([], [], color="grey", alpha=0.45, marker="o", markersize=3, label="one seed (paired)"),
            Line2D([], [], color="black", marker="D", linewidth=2, label="mean over seeds"),
            Line2D([], [], color="black", marker="D", linestyle="none", label="mean difference, 95% CI"),
            Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="no difference"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.94),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    return _titled(fig, heading, top=0.95)


def _difference_panel(
    ax: Axes, differences: np.ndarray, test: Mapping[str, float], reach: float, arms: Sequence[str]
) -> None:
    """Per-seed differences in points, their mean and 95% interval, and zero, on [-reach, reach]."""
    spread = np.linspace(-0.15, 0.15, len(differences)) if len(differences) > 1 else np.zeros(1)
    ax.scatter(spread, differences, color="grey", alpha=0.6, s=14)
    mean, ci = 100 * test["mean_difference"], (100 * test["ci_low"], 100 * test["ci_high"])
    ax.errorbar([0.45], [mean], yerr=[[mean - ci[0]], [ci[1] - mean]], color="black", marker="D", capsize=4)
    ax.axhline(0.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_title(
        f"mean {mean:+.2f} points, 95% interval [{ci[0]:+.2f}, {ci[1]:+.2f}], p = {test['p_value']:.2g}",
        fontsize=8,
    )
    ax.set_xlim(-0.4, 0.8)
    ax.set_xticks([])
    ax.set_ylim(-reach, reach)
    ax.set_ylabel(f"{arms[0]} - {arms[1]}\n(percentage points)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)


def accuracy_vs_learning_rate(
    heading: str, points: Mapping[str, Sequence[tuple[float, float]]]
) -> Figure:
    """Validation accuracy of every trial against its learning rate (log axis), one colour per arm;
    diverged trials (no accuracy) as crosses at 0."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    for colour, (arm, pairs) in zip(ARM_COLOURS, points.items(), strict=False):
        lrs, accuracies = np.asarray(pairs, dtype=float).T
        diverged = np.isnan(accuracies)
        ax.scatter(
            lrs[~diverged], accuracies[~diverged], color=colour, s=18, alpha=0.7, label=f"{arm} scales"
        )
        if diverged.any():
            ax.scatter(
                lrs[diverged],
                np.zeros(diverged.sum()),
                color=colour,
                marker="x",
                s=18,
                label=f"{arm} scales: diverged (drawn at 0)",
            )
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    _plain_numbers(ax.xaxis, [10.0**e for e in range(-6, 3) if low <= 10.0**e <= high])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("learning rate (log axis)")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=8, loc="center left")
    ax.grid(True, alpha=0.3)
    return _titled(fig, heading)


def batchnorm_comparison(
    heading: str,
    accuracy: Mapping[str, Sequence[float]],
    depths: Sequence[int],
    good: float,
) -> Figure:
    """Left: sorted accuracies of the same configurations per arm, with the threshold ``good``.
    Right: the share of configurations reaching ``good`` by depth, on a 0-1 axis."""
    depths = np.asarray(depths)
    fig = Figure(figsize=(11, 4.6))
    left, right = fig.subplots(1, 2)
    levels = sorted(set(depths.tolist()))
    width = 0.8 / len(accuracy)
    for i, (colour, (arm, values)) in enumerate(zip(ARM_COLOURS, accuracy.items(), strict=False)):
        values = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
        shown = np.sort(values)[::-1]
        left.plot(np.arange(len(shown)) / len(shown), shown, color=colour, label=arm)
        shares = [np.mean(values[depths == d] >= good) for d in levels]
        right.bar(np.arange(len(levels)) + i * width, shares, width=width, color=colour, label=arm)
    left.axhline(good, color="black", linestyle="--", linewidth=0.8, label=f"threshold: accuracy {good}")
    left.set_ylim(0, 1.02)
    left.set_xlabel("fraction of configurations (best first; diverged at 0)")
    left.set_ylabel("validation accuracy")
    left.set_title("Accuracy of each configuration, sorted", fontsize=10)
    left.legend(loc="lower left", fontsize=8)
    left.grid(True, alpha=0.3)
    right.set_xticks(np.arange(len(levels)) + width * (len(accuracy) - 1) / 2, [str(d) for d in levels])
    right.set_ylim(0, 1)
    right.set_xlabel("hidden layers")
    right.set_ylabel(f"share of configurations reaching {good}")
    right.set_title("Depth sensitivity", fontsize=10)
    right.legend(fontsize=8)
    return _titled(fig, heading)


def noise_and_gap(
    heading: str,
    sizes: Sequence[int],
    spreads: Sequence[Sequence[float]],
    gaps: Sequence[Sequence[float]],
) -> Figure:
    """Left: spread of one example's normalised value vs batch size (log-log, with B^-1/2).
    Right: the train-test gap per batch size in percentage points, on an axis from zero."""
    sizes, spreads, gaps = (np.asarray(a, dtype=float) for a in (sizes, spreads, gaps))
    fig = Figure(figsize=(11, 4.6))
    left, right = fig.subplots(1, 2)
    for row in spreads:
        left.plot(sizes, row, color="grey", alpha=0.4, marker="o", markersize=3)
    mean = spreads.mean(axis=0)
    left.plot(sizes, mean, color="tab:blue", marker="o", label="mean over seeds (grey: one seed)")
    left.plot(sizes, mean[0] * np.sqrt(sizes[0] / sizes), color="black", linestyle="--", label="B^-1/2")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    _plain_numbers(left.xaxis, sizes.tolist())
    ticks = [0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    _plain_numbers(left.yaxis, [v for v in ticks if spreads.min() / 1.5 <= v <= spreads.max() * 1.5])
    left.set_xlabel("batch size B (log axis)")
    left.set_ylabel("spread of the normalised value (log axis)")
    left.set_title("BatchNorm noise", fontsize=10)
    left.legend(fontsize=8)
    points = 100 * gaps
    for row in points:
        right.plot(sizes, row, color="grey", alpha=0.4, marker="o", markersize=3)
    right.plot(
        sizes, points.mean(axis=0), color="tab:orange", marker="o", label="mean over seeds (grey: one seed)"
    )
    right.set_xscale("log", base=2)
    _plain_numbers(right.xaxis, sizes.tolist())
    right.set_ylim(min(0.0, points.min() * 1.1), points.max() * 1.1)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xlabel("batch size B (log axis)")
    right.set_ylabel("train accuracy - test accuracy (points)")
    right.set_title("Train-test gap", fontsize=10)
    right.legend(fontsize=8)
    return _titled(fig, heading)


def importance_bars(
    heading: str,
    measured: Mapping[str, Mapping[str, object] | None],
    tiers: Mapping[str, Mapping[str, int]],
) -> Figure:
    """One panel per optimizer: importances with their intervals, coloured by tier, over the noise
    floor (as in ``fusedbn tune``'s importances.png)."""
    fig = Figure(figsize=(7.5 * len(measured), 5.4))
    for ax, (optimizer, found) in zip(
        np.atleast_1d(fig.subplots(1, len(measured))), measured.items(), strict=True
    ):
        ax.set_title(optimizer.upper(), fontsize=10)
        if found is None:
            ax.text(0.5, 0.5, "too few trials", ha="center")
            continue
        draw_importances(ax, Importances(**found), tiers[optimizer])
    return _titled(fig, heading)


FIGURES: dict[str, Callable[..., Figure]] = {
    "paired_panels": paired_panels,
    "accuracy_vs_learning_rate": accuracy_vs_learning_rate,
    "batchnorm_comparison": batchnorm_comparison,
    "noise_and_gap": noise_and_gap,
    "importance_bars": importance_bars,
}


def heading(finding: Finding) -> str:
    """A figure's title: the experiment and its verdict."""
    return f"{finding.title}\nverdict: {finding.verdict}"


def draw_figure(finding: Finding, out_dir: Path) -> Path:
    """Draw ``finding``'s figure from its ``figure_data`` into ``out_dir``; returns the PNG's path."""
    data = dict(finding.figure_data)
    path = Path(out_dir) / finding.figure
    FIGURES[data.pop("kind")](heading(finding), **data).savefig(path, dpi=100)
    return path
