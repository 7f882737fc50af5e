"""Plots of a run, as PNG files: speedup over torch eager, and share of the measured copy bandwidth.

Each figure is a grid of bar charts, a row per mode and a column per dtype, with a group of bars per
shape and a bar per provider and layout.
"""

from collections.abc import Callable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fusedbn.bench.cases import COMPILE, EAGER, FLAG_GEMS, FUSEDBN, MODES
from fusedbn.bench.metrics import BANDWIDTH_GOALS
from fusedbn.bench.results import Result

SPEEDUP_FILE = "speedup.png"
BANDWIDTH_FILE = "bandwidth.png"


def _bar_grid(
    results: list[Result],
    providers: tuple[str, ...],
    value: Callable[[Result], float | None],
    ylabel: str,
    lines: dict[str, float],
    log_scale: bool,
    title: str,
    path: Path,
) -> None:
    modes = [m for m in MODES if any(r.mode == m for r in results)]
    dtypes = list(dict.fromkeys(r.dtype for r in results))
    shapes = list(dict.fromkeys(r.shape for r in results))
    layouts = list(dict.fromkeys(r.layout for r in results))
    index = {(r.shape, r.dtype, r.layout, r.mode, r.provider): r for r in results if r.ok}
    # A series (bar colour) per provider and layout that has at least one value to show.
    series = [
        (p, layout)
        for p in providers
        for layout in layouts
        if any(r.provider == p and r.layout == layout and value(r) is not None for r in index.values())
    ]
    colours = {s: f"C{i}" for i, s in enumerate(series)}
    rows, cols = max(len(modes), 1), max(len(dtypes), 1)
    figure = Figure(figsize=(max(6.0, 0.45 * len(shapes) + 1.0) * cols, 3.2 * rows))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    width = 0.8 / max(len(series), 1)
    for i, mode in enumerate(modes):
        line = lines.get(mode)  # the goal drawn across a row; the base of the bars on a log scale
        for j, dtype in enumerate(dtypes):
            ax = axes[i][j]
            for k, (provider, layout) in enumerate(series):
                xs, heights = [], []
                for s, shape in enumerate(shapes):
                    found = index.get((shape, dtype, layout, mode, provider))
                    height = None if found is None else value(found)
                    if height is not None:
                        xs.append(s + (k - (len(series) - 1) / 2) * width)
                        heights.append(height)
                if log_scale:  # bars grow up or down from the reference line
                    ax.bar(
                        xs,
                        [h - line for h in heights],
                        bottom=line,
                        width=width,
                        color=colours[(provider, layout)],
                    )
                else:
                    ax.bar(xs, heights, width=width, color=colours[(provider, layout)])
            if line is not None:
                ax.axhline(line, color="black", linewidth=0.8, linestyle="--")
            if log_scale:
                ax.set_yscale("log")
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels(shapes, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{mode}, {dtype}", fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    if series:
        handles = [Patch(color=colours[s], label=f"{s[0]} {s[1]}") for s in series]
        figure.legend(handles=handles, loc="upper left", fontsize=8, ncol=len(series))
    figure.savefig(path, dpi=90)


def write_plots(results: list[Result], out_dir: Path, device: str) -> list[Path]:
    """Draw speedup.png and bandwidth.png for ``results`` (one run on ``device``) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eager = {r.key: r.median_ms for r in results if r.ok and r.provider == EAGER}

    def speedup(result: Result) -> float | None:
        baseline = eager.get(result.key)
        return None if baseline is None else baseline / result.median_ms

    speedup_path, bandwidth_path = out_dir / SPEEDUP_FILE, out_dir / BANDWIDTH_FILE
    _bar_grid(
        results,
        (FUSEDBN, COMPILE, FLAG_GEMS),
        speedup,
        "eager time / time",
        dict.fromkeys(MODES, 1.0),
        True,
        f"Speedup over torch eager BatchNorm ({device})",
        speedup_path,
    )
    _bar_grid(
        results,
        (FUSEDBN, EAGER, COMPILE, FLAG_GEMS),
        lambda result: result.copy_share,
        "share of copy bandwidth",
        BANDWIDTH_GOALS,
        False,
        f"Effective bandwidth (minimal bytes / time) over measured copy bandwidth ({device})",
        bandwidth_path,
    )
    return [speedup_path, bandwidth_path]
