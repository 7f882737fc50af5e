"""The figures of ``fusedbn science``, one function per kind of plot, drawn on matplotlib Figure objects
(no display, no global backend); each writes a PNG and returns its path."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fusedbn.science.stats import PairedTest
from fusedbn.tuning.importance import Importances

ARM_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def paired_panels(
    path: Path, panels: Sequence[tuple[str, np.ndarray, np.ndarray]], arms: tuple[str, str], ylabel: str
) -> Path:
    """One panel per comparison: each seed's pair of values joined by a line, arm means as bars."""
    fig = Figure(figsize=(4.2 * len(panels), 4))
    for ax, (title, first, second) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels, strict=True):
        for a, b in zip(first, second, strict=True):
            ax.plot([0, 1], [a, b], color="grey", alpha=0.5, marker="o", markersize=3)
        ax.bar([0, 1], [np.mean(first), np.mean(second)], color=ARM_COLOURS[:2], alpha=0.35, width=0.5)
        low = min(np.min(first), np.min(second))
        high = max(np.max(first), np.max(second))
        ax.set_ylim(low - 0.1 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
        ax.set_xticks([0, 1], arms)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def accuracy_vs_learning_rate(path: Path, points: Mapping[str, list[tuple[float, float]]]) -> Path:
    """Validation accuracy of every trial against its learning rate (log axis), one colour per arm."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for colour, (arm, pairs) in zip(ARM_COLOURS, points.items(), strict=False):
        lrs, accuracies = np.array(pairs).T
        diverged = np.isnan(accuracies)
        ax.scatter(
            lrs[~diverged], accuracies[~diverged], color=colour, s=18, alpha=0.7, label=f"{arm} scales"
        )
        ax.scatter(lrs[diverged], np.full(diverged.sum(), 0.0), color=colour, marker="x", s=18)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log axis; x at 0: diverged)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Where the trials land: log vs linear sampling")
    ax.legend()
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def batchnorm_comparison(
    path: Path, accuracy: Mapping[str, np.ndarray], depths: np.ndarray, good: float
) -> Path:
    """Left: sorted accuracies of the same configurations per arm. Right: share reaching ``good`` by depth."""
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    levels = sorted(set(depths.tolist()))
    width = 0.8 / len(accuracy)
    for i, (colour, (arm, values)) in enumerate(zip(ARM_COLOURS, accuracy.items(), strict=False)):
        shown = np.sort(np.nan_to_num(values, nan=0.0))[::-1]
        left.plot(np.arange(len(shown)) / len(shown), shown, color=colour, label=arm)
        shares = [np.mean(np.nan_to_num(values[depths == d], nan=0.0) >= good) for d in levels]
        right.bar(np.arange(len(levels)) + i * width, shares, width=width, color=colour, label=arm)
    left.axhline(good, color="black", linestyle="--", linewidth=0.8)
    left.set_xlabel("fraction of configurations (best first; diverged at 0)")
    left.set_ylabel("validation accuracy")
    left.set_title("Same random configurations, with and without BatchNorm")
    left.legend()
    left.grid(True, alpha=0.3)
    right.set_xticks(np.arange(len(levels)) + width * (len(accuracy) - 1) / 2, [str(d) for d in levels])
    right.set_xlabel("hidden layers")
    right.set_ylabel(f"share reaching {good}")
    right.set_title("Depth sensitivity")
    right.legend()
    return _save(fig, path)


def noise_and_gap(path: Path, sizes: np.ndarray, spreads: np.ndarray, gaps: np.ndarray) -> Path:
    """Left: spread of one example's normalised value vs batch size (log-log, with B^-1/2). Right: gap."""
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    for row in spreads:
        left.plot(sizes, row, color="grey", alpha=0.4, marker="o", markersize=3)
    mean = spreads.mean(axis=0)
    left.plot(sizes, mean, color="tab:blue", marker="o", label="mean over seeds")
    left.plot(sizes, mean[0] * np.sqrt(sizes[0] / sizes), color="black", linestyle="--", label="B^-1/2")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("batch size B")
    left.set_ylabel("spread of the normalised value")
    left.set_title("BatchNorm noise")
    left.legend()
    for row in gaps:
        right.plot(sizes, row, color="grey", alpha=0.4, marker="o", markersize=3)
    right.plot(sizes, gaps.mean(axis=0), color="tab:orange", marker="o", label="mean over seeds")
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size B")
    right.set_ylabel("train accuracy - test accuracy")
    right.set_title("Train-test gap")
    right.legend()
    return _save(fig, path)


def importance_bars(
    path: Path, measured: Mapping[str, Importances | None], tiers: Mapping[str, Mapping[str, int]]
) -> Path:
    """One panel per optimizer: importances with their intervals, coloured by tier, and the noise floor."""
    fig = Figure(figsize=(6 * len(measured), 4.5))
    for ax, (optimizer, found) in zip(
        np.atleast_1d(fig.subplots(1, len(measured))), measured.items(), strict=True
    ):
        ax.set_title(f"{optimizer.upper()}")
        if found is None:
            ax.text(0.5, 0.5, "too few trials", ha="center")
            continue
        order = found.order()
        rows = np.arange(len(order))[::-1]
        values = np.array([found.values[n] for n in order])
        intervals = np.array([found.intervals[n] for n in order])
        ax.barh(
            rows,
            values,
            xerr=[values - intervals[:, 0], intervals[:, 1] - values],
            color=[ARM_COLOURS[(tiers[optimizer][n] - 1) % len(ARM_COLOURS)] for n in order],
            capsize=3,
        )
        ax.set_yticks(rows, [f"{n} (tier {tiers[optimizer][n]})" for n in order])
        ax.axvspan(*found.noise_interval, color="grey", alpha=0.25, label="noise floor (5-95%)")
        ax.set_xlabel("fANOVA importance (sampled scales; 5-95% bootstrap)")
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def ema_vs_exact(path: Path, results: Mapping[float, Mapping[str, list[float]]]) -> Path:
    """Per beta: each seed's test accuracy with the moving averages and with exact statistics."""
    panels = [(f"beta {beta}", np.array(r["ema"]), np.array(r["exact"])) for beta, r in results.items()]
    return paired_panels(path, panels, ("EMA", "exact"), "test accuracy")


def paper_table(
    path: Path,
    models: Mapping[str, tuple[float, Sequence[float]]],
    tuned: float | None,
    verdict: str,
) -> Path:
    """Per model: the published test accuracy beside the reproduced mean (each seed as a dot), and the tuned
    fusedbn CNN's; the y-axis spans all of [0, 1] so that no difference is exaggerated."""
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    names = list(models)
    x = np.arange(len(names))
    published = [models[n][0] for n in names]
    reproduced = [float(np.mean(models[n][1])) if len(models[n][1]) else np.nan for n in names]
    ax.bar(x - 0.2, published, width=0.4, color="lightgrey", edgecolor="black", hatch="//", label="published")
    ax.bar(x + 0.2, reproduced, width=0.4, color=ARM_COLOURS[0], label="reproduced here (mean)")
    for i, name in enumerate(names):
        seeds = models[name][1]
        ax.scatter(np.full(len(seeds), x[i] + 0.2), seeds, color="black", s=10, zorder=3)
        for offset, value in ((-0.2, published[i]), (0.2, reproduced[i])):
            if np.isfinite(value):
                ax.text(x[i] + offset, value + 0.01, f"{value:.1%}", ha="center", va="bottom", fontsize=8)
    ax.scatter([], [], color="black", s=10, label="each seed")
    if tuned is not None:
        ax.bar([len(names)], [tuned], width=0.4, color=ARM_COLOURS[2], label="fusedbn CNN, tuned")
        ax.text(len(names), tuned + 0.01, f"{tuned:.1%}", ha="center", va="bottom", fontsize=8)
        names = [*names, "fusedbn CNN\n(tuned)"]
    ax.set_xticks(np.arange(len(names)), [n.replace(", ", ",\n") for n in names])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"MNIST-1D: the paper's table reproduced within 3 points: {verdict}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def equivalence(
    path: Path,
    learning_rates: np.ndarray,
    differences: Mapping[str, np.ndarray],
    tests: Sequence[PairedTest],
    margin: float,
    title: str,
) -> Path:
    """One panel per measure (shared y-axis): each configuration's paired difference in points against its
    learning rate, the equivalence margin as a band, the mean difference with its 95% interval."""
    fig = Figure(figsize=(11, 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(differences), sharey=True))
    for ax, (measure, values), test in zip(axes, differences.items(), tests, strict=True):
        band = f"equivalence margin +-{100 * margin:g} points"
        ax.axhspan(-100 * margin, 100 * margin, color="tab:green", alpha=0.15, label=band)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.scatter(learning_rates, 100 * values, color=ARM_COLOURS[0], s=14, alpha=0.7, label="configuration")
        ax.axhline(100 * test.mean_difference, color=ARM_COLOURS[1], label="mean difference")
        ax.axhspan(
            100 * test.ci_low, 100 * test.ci_high, color=ARM_COLOURS[1], alpha=0.3, label="its 95% interval"
        )
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log axis)")
        ax.set_title(f"{measure} accuracy")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("with bias - without (points)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
