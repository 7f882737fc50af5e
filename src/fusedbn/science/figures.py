"""The figures of ``fusedbn science``, drawn on matplotlib Figure objects from each finding's ``figure_data``
(its ``kind`` and plain lists), so :func:`draw_figure` draws the same figure after the experiments and later
from ``science.json`` (``--replot``). Panels that are compared share their axis limits, and an axis that does
not start at zero says where it starts."""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from fusedbn.science.experiments import Finding
from fusedbn.tuning.importance import Importances
from fusedbn.tuning.plots import draw_importances

ARM_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _titled(fig: Figure, heading: str, top: float = 1.0) -> Figure:
    """``fig`` with ``heading`` as its title, laid out so that the panels fill it up to ``top``."""
    fig.suptitle(heading, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def _plain_numbers(axis: object, values: Sequence[float]) -> None:
    """Ticks of a log axis at ``values`` only, written as plain numbers (0.06, not 6x10^-2)."""
    axis.set_major_locator(FixedLocator(values))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def paired_panels(
    heading: str, panels: Sequence[Mapping[str, object]], arms: Sequence[str], ylabel: str,
    margin: float | None = None, unit: str = "seed",
) -> Figure:  # fmt: skip
    """Paired comparisons, a column per panel (a mapping of ``title``, ``first`` and ``second``: values per
    ``unit``, and ``test``: a PairedTest as a dict). Top: each pair joined by a line and each arm's mean, on
    one value axis; bottom: the differences in percentage points with their mean, 95% interval and p-value,
    zero and, for an equivalence test, the band of +-``margin``, on one symmetric axis."""
    firsts, seconds = ([np.asarray(p[arm], dtype=float) for p in panels] for arm in ("first", "second"))
    every = np.concatenate([*firsts, *seconds])
    pad = 0.05 * max(every.max() - every.min(), 1e-3)  # on each side of the values
    low, high = every.min() - pad, every.max() + pad
    differences = [100 * (a - b) for a, b in zip(firsts, seconds, strict=True)]
    bounds = [100 * abs(p["test"][end]) for p in panels for end in ("ci_low", "ci_high")]
    reach = 1.15 * max(*(np.abs(d).max() for d in differences), *bounds, 0.1, 100 * (margin or 0.0))
    fig = Figure(figsize=(4.4 * len(panels), 7.2))
    axes = fig.subplots(2, len(panels), squeeze=False)
    for column, (panel, first, second) in enumerate(zip(panels, firsts, seconds, strict=True)):
        values_ax, difference_ax = axes[0][column], axes[1][column]
        values_ax.plot([0, 1], [first, second], color="grey", alpha=0.45, marker="o", markersize=3)
        values_ax.plot([0, 1], [first.mean(), second.mean()], color="black", marker="D", linewidth=2)
        values_ax.set(xticks=[0, 1], xticklabels=arms, xlim=(-0.3, 1.3), ylim=(low, high))
        values_ax.set_ylabel(f"{ylabel}\n(axis from {low:.3f}, not 0)", fontsize=9)
        values_ax.set_title(panel["title"], fontsize=10)
        values_ax.grid(True, axis="y", alpha=0.3)
        _difference_panel(difference_ax, differences[column], panel["test"], reach, arms)
        if margin is not None:
            difference_ax.axhspan(-100 * margin, 100 * margin, color="tab:green", alpha=0.15, zorder=0)
    handles = [
        Line2D([], [], color="grey", alpha=0.45, marker="o", markersize=3, label=f"one {unit} (paired)"),
        Line2D([], [], color="black", marker="D", linewidth=2, label=f"mean over {unit}s"),
        Line2D([], [], color="black", marker="D", linestyle="none", label="mean difference, 95% CI"),
        Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="no difference"),
    ]
    if margin is not None:
        band = f"equivalence margin +-{100 * margin:g} points"
        handles.append(Patch(color="tab:green", alpha=0.15, label=band))
    # One legend for every panel, between the title and the panels, where it hides no data.
    columns = len(handles) if len(handles) <= 4 else 3  # one row of up to four entries, or rows of three
    rows = int(np.ceil(len(handles) / columns))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.94), ncol=columns, fontsize=8,
               frameon=False)  # fmt: skip
    return _titled(fig, heading, top=0.95 - 0.03 * (rows - 1))


def _difference_panel(
    ax: Axes, differences: np.ndarray, test: Mapping[str, float], reach: float, arms: Sequence[str]
) -> None:
    """Per-seed differences in points, their mean and 95% interval, and zero, on [-reach, reach]."""
    spread = np.linspace(-0.15, 0.15, len(differences)) if len(differences) > 1 else np.zeros(1)
    ax.scatter(spread, differences, color="grey", alpha=0.6, s=14)
    mean, ci = 100 * test["mean_difference"], (100 * test["ci_low"], 100 * test["ci_high"])
    ax.errorbar([0.45], [mean], yerr=[[mean - ci[0]], [ci[1] - mean]], color="black", marker="D", capsize=4)
    ax.axhline(0.0, color="black", linestyle="--", linewidth=0.8)
    interval = f"95% interval [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    ax.set_title(f"mean {mean:+.2f} points, {interval}, p = {test['p_value']:.2g}", fontsize=8)
    ax.set(xlim=(-0.4, 0.8), xticks=[], ylim=(-reach, reach))
    ax.set_ylabel(f"{arms[0]} - {arms[1]}\n(percentage points)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)


def accuracy_vs_learning_rate(heading: str, points: Mapping[str, Sequence[tuple[float, float]]]) -> Figure:
    """Validation accuracy of every trial against its learning rate (log axis), one colour per arm;
    diverged trials (no accuracy) as crosses at 0."""
    ax = Figure(figsize=(7.5, 4.8)).subplots()
    for colour, (arm, pairs) in zip(ARM_COLOURS, points.items(), strict=False):
        lrs, accuracies = np.asarray(pairs, dtype=float).T
        diverged = np.isnan(accuracies)
        ax.scatter(lrs[~diverged], accuracies[~diverged], color=colour, s=18, alpha=0.7,
                   label=f"{arm} scales")  # fmt: skip
        if diverged.any():
            ax.scatter(lrs[diverged], np.zeros(diverged.sum()), color=colour, marker="x", s=18,
                       label=f"{arm} scales: diverged (drawn at 0)")  # fmt: skip
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    _plain_numbers(ax.xaxis, [10.0**e for e in range(-6, 3) if low <= 10.0**e <= high])
    ax.set(ylim=(-0.03, 1.03), xlabel="learning rate (log axis)", ylabel="validation accuracy")
    ax.legend(fontsize=8, loc="center left")
    ax.grid(True, alpha=0.3)
    return _titled(ax.figure, heading)


def batchnorm_comparison(
    heading: str, accuracy: Mapping[str, Sequence[float]], depths: Sequence[int], good: float,
    depth_label: str = "hidden layers",
) -> Figure:  # fmt: skip
    """Left: each arm's sorted accuracies with the threshold ``good``; right: the share reaching ``good`` by
    depth (``depth_label`` says what it counts)."""
    depths = np.asarray(depths)
    left, right = Figure(figsize=(11, 4.6)).subplots(1, 2)
    levels = sorted(set(depths.tolist()))
    width = 0.8 / len(accuracy)
    for i, (colour, (arm, values)) in enumerate(zip(ARM_COLOURS, accuracy.items(), strict=False)):
        values = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
        left.plot(np.arange(len(values)) / len(values), np.sort(values)[::-1], color=colour, label=arm)
        shares = [np.mean(values[depths == d] >= good) for d in levels]
        right.bar(np.arange(len(levels)) + i * width, shares, width=width, color=colour, label=arm)
    left.axhline(good, color="black", linestyle="--", linewidth=0.8, label=f"threshold: accuracy {good}")
    left.set(ylim=(0, 1.02), xlabel="fraction of configurations (best first; diverged at 0)",
             ylabel="validation accuracy")  # fmt: skip
    left.set_title("Accuracy of each configuration, sorted", fontsize=10)
    left.legend(loc="lower left", fontsize=8)
    left.grid(True, alpha=0.3)
    right.set_xticks(np.arange(len(levels)) + width * (len(accuracy) - 1) / 2, [str(d) for d in levels])
    right.set(ylim=(0, 1), xlabel=depth_label, ylabel=f"share of configurations reaching {good}")
    right.set_title("Depth sensitivity", fontsize=10)
    right.legend(fontsize=8)
    return _titled(left.figure, heading)


def noise_and_gap(
    heading: str, sizes: Sequence[int], spreads: Sequence[Sequence[float]], gaps: Sequence[Sequence[float]]
) -> Figure:
    """Left: spread of one example's normalised value vs batch size (log-log, with B^-1/2).
    Right: the train-test gap per batch size in percentage points, on an axis from zero."""
    sizes, spreads, gaps = (np.asarray(a, dtype=float) for a in (sizes, spreads, gaps))
    left, right = Figure(figsize=(11, 4.6)).subplots(1, 2)
    points = 100 * gaps
    for ax, rows, colour, ylabel, title in (
        (left, spreads, "tab:blue", "spread of the normalised value (log axis)", "BatchNorm noise"),
        (right, points, "tab:orange", "train accuracy - test accuracy (points)", "Train-test gap"),
    ):
        for row in rows:
            ax.plot(sizes, row, color="grey", alpha=0.4, marker="o", markersize=3)
        ax.plot(sizes, rows.mean(axis=0), color=colour, marker="o", label="mean over seeds (grey: one seed)")
        ax.set_xscale("log", base=2)
        _plain_numbers(ax.xaxis, sizes.tolist())
        ax.set(xlabel="batch size B (log axis)", ylabel=ylabel)
        ax.set_title(title, fontsize=10)
    mean = spreads.mean(axis=0)
    left.plot(sizes, mean[0] * np.sqrt(sizes[0] / sizes), color="black", linestyle="--", label="B^-1/2")
    left.set_yscale("log")
    ticks = [0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    _plain_numbers(left.yaxis, [v for v in ticks if spreads.min() / 1.5 <= v <= spreads.max() * 1.5])
    right.set_ylim(min(0.0, points.min() * 1.1), points.max() * 1.1)
    right.axhline(0.0, color="black", linewidth=0.8)
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    return _titled(left.figure, heading)


def importance_bars(
    heading: str, measured: Mapping[str, Mapping[str, object] | None], tiers: Mapping[str, Mapping[str, int]]
) -> Figure:
    """One panel per optimizer: importances with their intervals, coloured by tier, over the noise
    floor (as in ``fusedbn tune``'s importances.png)."""
    panels = np.atleast_1d(Figure(figsize=(7.5 * len(measured), 5.4)).subplots(1, len(measured)))
    for ax, (optimizer, found) in zip(panels, measured.items(), strict=True):
        ax.set_title(optimizer.upper(), fontsize=10)
        if found is None:
            ax.text(0.5, 0.5, "too few trials", ha="center")
            continue
        draw_importances(ax, Importances(**found), tiers[optimizer])
    return _titled(panels[0].figure, heading)


def published_vs_reproduced(
    heading: str, models: Mapping[str, Mapping[str, object]], margin: float,
    extra: Mapping[str, float] | None = None,
) -> Figure:  # fmt: skip
    """Per model (a mapping of ``published`` and ``seeds``), its published accuracy beside the mean reproduced
    (each seed a dot) and the band of +-``margin``; then ``extra``'s bars (name -> accuracy, unpublished)."""
    extra = extra or {}
    ax = Figure(figsize=(10, 4.8)).subplots()
    for x, model in enumerate(models.values()):
        published, seeds = float(model["published"]), np.asarray(model["seeds"], dtype=float)
        ax.bar(x - 0.2, published, width=0.4, color="lightgrey", edgecolor="black", hatch="//")
        ax.add_patch(Rectangle((x - 0.45, published - margin), 0.9, 2 * margin, color="tab:green", alpha=0.2,
                               zorder=0))  # fmt: skip
        ax.bar(x + 0.2, seeds.mean(), width=0.4, color=ARM_COLOURS[0])
        ax.scatter(np.full(len(seeds), x + 0.2), seeds, color="black", s=10, zorder=3)
        for offset, value in ((-0.2, published), (0.2, seeds.mean())):
            ax.text(x + offset, value + 0.015, f"{value:.1%}", ha="center", va="bottom", fontsize=8)
    for x, value in enumerate(extra.values(), start=len(models)):
        ax.bar(x, value, width=0.4, color=ARM_COLOURS[2])
        ax.text(x, value + 0.015, f"{value:.1%}", ha="center", va="bottom", fontsize=8)
    labels = [*models, *extra]
    ax.set_xticks(np.arange(len(labels)), [label.replace(", ", ",\n") for label in labels], fontsize=8)
    ax.set(ylim=(0, 1.1), ylabel="test accuracy")
    ax.grid(True, axis="y", alpha=0.3)
    handles = [
        Patch(facecolor="lightgrey", edgecolor="black", hatch="//", label="published"),
        Patch(color=ARM_COLOURS[0], label="reproduced here (mean)"),
        Line2D([], [], color="black", marker="o", markersize=3, linestyle="none", label="one seed"),
        Patch(color="tab:green", alpha=0.2, label=f"published +-{100 * margin:g} points"),
        *([Patch(color=ARM_COLOURS[2], label="not in the paper")] if extra else []),
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    return _titled(ax.figure, heading)


FIGURES: dict[str, Callable[..., Figure]] = {
    draw.__name__: draw
    for draw in (paired_panels, accuracy_vs_learning_rate, batchnorm_comparison, noise_and_gap,
                 importance_bars, published_vs_reproduced)
}  # fmt: skip


def draw_figure(finding: Finding, out_dir: Path) -> Path:
    """Draw ``finding``'s figure from its ``figure_data`` into ``out_dir``, titled with the experiment and its
    verdict; returns the PNG's path."""
    data = dict(finding.figure_data)
    path = Path(out_dir) / finding.figure
    FIGURES[data.pop("kind")](f"{finding.title}\nverdict: {finding.verdict}", **data).savefig(path, dpi=100)
    return path
