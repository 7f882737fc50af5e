"""Plots of a run as PNG files: speedup over torch eager (log axis, ticks at round ratios) and share of the
measured copy bandwidth; each a grid of bar charts, a row per mode and a column per dtype, a group of bars per
shape and a bar per provider and layout, titled with the device and fusedbn's backend."""

import textwrap
from collections.abc import Callable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import Locator, NullLocator, StrMethodFormatter

from fusedbn.bench.cases import AUTO, COMPILE, EAGER, FLAG_GEMS, FUSEDBN, MODES
from fusedbn.bench.metrics import BANDWIDTH_GOALS
from fusedbn.bench.report import format_backend
from fusedbn.bench.results import Result

ROW_INCHES = 3.2
TITLE_LINE_INCHES = 0.3
LEGEND_ROW_INCHES = 0.3
LEGEND_COLUMNS = 4


class RatioLocator(Locator):
    """Ticks for a log axis of ratios at round numbers: the coarsest ladder of mantissas that puts at
    least three ticks in view."""

    LADDERS = ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.1, 1.2, 1.3, 1.5, 1.7, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))

    def __call__(self) -> list[float]:
        low, high = sorted(self.axis.get_view_interval())
        ticks: list[float] = []
        for mantissas in self.LADDERS:
            ticks = [round(m * 10.0**exponent, 6) for exponent in range(-4, 5) for m in mantissas
                     if low <= m * 10.0**exponent <= high]  # fmt: skip
            if len(ticks) >= 3:
                break
        return ticks


def _bar_grid(results: list[Result], providers: tuple[str, ...], value: Callable[[Result], float | None],
              ylabel: str, lines: dict[str, float], log_scale: bool, title: str) -> Figure:  # fmt: skip
    modes = [m for m in MODES if any(r.mode == m for r in results)]
    dtypes = list(dict.fromkeys(r.dtype for r in results))
    shapes = list(dict.fromkeys(r.shape for r in results))
    layouts = list(dict.fromkeys(r.layout for r in results))
    # Each case's value where it has one, and a series (bar colour) per provider and layout that has any.
    values = {(r.shape, r.dtype, r.layout, r.mode, r.provider): height
              for r in results if r.ok and (height := value(r)) is not None}  # fmt: skip
    shown = {(provider, layout) for _, _, layout, _, provider in values}
    series = [(p, layout) for p in providers for layout in layouts if (p, layout) in shown]
    colours = {s: f"C{i}" for i, s in enumerate(series)}
    rows, cols = max(len(modes), 1), max(len(dtypes), 1)
    width_inches = max(6.0, 0.45 * len(shapes) + 1.0) * cols
    title = "\n".join(textwrap.fill(line, width=int(13 * width_inches)) for line in title.splitlines())
    legend_rows = -(-len(series) // LEGEND_COLUMNS)
    header_inches = TITLE_LINE_INCHES * (len(title.splitlines()) + 0.5) + LEGEND_ROW_INCHES * legend_rows
    height_inches = ROW_INCHES * rows + header_inches
    figure = Figure(figsize=(width_inches, height_inches))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    width = 0.8 / max(len(series), 1)
    for i, mode in enumerate(modes):
        line = lines.get(mode)  # the goal drawn across a row
        base = line if log_scale else 0.0  # on a log scale bars grow up or down from the line
        for j, dtype in enumerate(dtypes):
            ax = axes[i][j]
            for k, (provider, layout) in enumerate(series):
                bars = [(s, values[key]) for s, shape in enumerate(shapes)
                        if (key := (shape, dtype, layout, mode, provider)) in values]  # fmt: skip
                offset = (k - (len(series) - 1) / 2) * width
                ax.bar([s + offset for s, _ in bars], [height - base for _, height in bars], bottom=base,
                       width=width, color=colours[(provider, layout)])  # fmt: skip
            if line is not None:
                ax.axhline(line, color="black", linewidth=0.8, linestyle="--")
            if log_scale:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(RatioLocator())
                ax.yaxis.set_minor_locator(NullLocator())
                ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}x"))  # 0.7 -> 0.7x, 2 -> 2x
            ax.set_xticks(range(len(shapes)), shapes, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{mode}, {dtype}", fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
    top = 1 - header_inches / height_inches
    figure.suptitle(title, y=1 - 0.1 / height_inches, va="top", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, top))
    if series:
        handles = [Patch(color=colours[s], label=f"{s[0]} {s[1]}") for s in series]
        figure.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, top),
                      ncol=min(len(series), LEGEND_COLUMNS), fontsize=8, frameon=False)  # fmt: skip
    return figure


def speedup_figure(results: list[Result], device: str) -> Figure:
    """Each provider's speedup over torch eager (eager time / its time), per case, on a log axis."""
    eager = {r.key: r.median_ms for r in results if r.ok and r.provider == EAGER}
    title = (f"Speedup over torch eager BatchNorm ({device}); dashed: 1x, as fast as eager\n"
             f"{format_backend(results)}")  # fmt: skip
    return _bar_grid(results, (FUSEDBN, AUTO, COMPILE, FLAG_GEMS),
                     lambda r: eager[r.key] / r.median_ms if r.key in eager else None,
                     "eager time / time (log axis)", dict.fromkeys(MODES, 1.0), True, title)  # fmt: skip


def bandwidth_figure(results: list[Result], device: str) -> Figure:
    """Each provider's effective bandwidth as a share of the measured copy bandwidth, per case."""
    title = (f"Effective bandwidth (minimal bytes / time) over measured copy bandwidth ({device}); "
             f"dashed: the project's goal\n{format_backend(results)}")  # fmt: skip
    return _bar_grid(results, (FUSEDBN, AUTO, EAGER, COMPILE, FLAG_GEMS), lambda result: result.copy_share,
                     "share of copy bandwidth", BANDWIDTH_GOALS, False, title)  # fmt: skip


def write_plots(results: list[Result], out_dir: Path, device: str) -> list[Path]:
    """Draw speedup.png and bandwidth.png for ``results`` (one run on ``device``) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "speedup.png", out_dir / "bandwidth.png"]
    for draw, path in zip((speedup_figure, bandwidth_figure), paths, strict=True):
        draw(results, device).savefig(path, dpi=90)
    return paths
