"""The figures of fusedbn science: titled with their verdict, shared axes that start where they say,
labelled reference lines, plain tick labels (fusedbn.science.figures)."""

import re

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fusedbn.science import figures
from fusedbn.science.stats import wilcoxon

PLAIN_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def _drawn(figure: Figure) -> Figure:
    FigureCanvasAgg(figure).draw()
    return figure


def _tick_labels(axis: object) -> list[str]:
    return [label.get_text() for label in axis.get_ticklabels() if label.get_text()]


def _legend_labels(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def _panel(title: str, first: np.ndarray, second: np.ndarray) -> dict:
    test = wilcoxon(title, first, second, np.random.default_rng(0), 200)
    return {"title": title, "first": first.tolist(), "second": second.tolist(), "test": vars(test)}


@pytest.fixture
def paired() -> Figure:
    """Two panels of 12 seeds whose values lie in different ranges, as random vs grid's do."""
    rng = np.random.default_rng(3)
    near = 0.97 + 0.005 * rng.standard_normal(12)
    far = 0.90 + 0.02 * rng.standard_normal(12)
    panels = [
        _panel("2 parameters: not shown", near, near + 0.001 * rng.standard_normal(12)),
        _panel("4 parameters: held", far, far - 0.03 + 0.005 * rng.standard_normal(12)),
    ]
    return _drawn(
        figures.paired_panels("Random vs grid\nverdict: not shown", panels, ["random", "grid"], "accuracy")
    )


def test_paired_panels_share_one_value_axis_whose_start_the_label_states(paired: Figure) -> None:
    values = [ax for ax in paired.axes if ax.get_ylabel().startswith("accuracy")]
    assert len(values) == 2
    limits = {ax.get_ylim() for ax in values}
    assert len(limits) == 1, f"each panel has its own value axis: {limits}"
    (low, high), = limits
    for ax in values:
        stated = re.search(r"axis from (\d\.\d+), not 0", ax.get_ylabel())
        assert stated and float(stated.group(1)) == pytest.approx(low, abs=5e-4)
        lines = [line for line in ax.get_lines() if len(line.get_ydata()) == 2]
        assert all(low <= y <= high for line in lines for y in line.get_ydata()), "data off the axis"


def test_paired_panels_show_the_differences_with_their_interval_around_zero(paired: Figure) -> None:
    differences = [ax for ax in paired.axes if "percentage points" in ax.get_ylabel()]
    assert len(differences) == 2
    limits = {ax.get_ylim() for ax in differences}
    assert len(limits) == 1, "one difference axis for every panel"
    (low, high), = limits
    assert low == pytest.approx(-high), "symmetric about zero"
    for ax in differences:
        assert any(list(line.get_ydata()) == [0.0, 0.0] for line in ax.get_lines()), "the zero line"
        stated = re.fullmatch(
            r"mean ([-+]\d+\.\d+) points, 95% interval \[([-+]\d+\.\d+), ([-+]\d+\.\d+)\], p = \S+",
            ax.get_title(),
        )
        assert stated, ax.get_title()
        mean, ci_low, ci_high = (float(x) for x in stated.groups())
        assert low <= ci_low <= mean <= ci_high <= high


def test_paired_panels_carry_the_verdict_and_a_legend_of_every_mark(paired: Figure) -> None:
    assert paired.get_suptitle() == "Random vs grid\nverdict: not shown"
    assert [ax.get_title() for ax in paired.axes[:2]] == ["2 parameters: not shown", "4 parameters: held"]
    (legend,) = paired.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "one seed (paired)",
        "mean over seeds",
        "mean difference, 95% CI",
        "no difference",
    ]
    renderer = paired.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in paired.axes), "legend over data"


def test_the_threshold_of_the_batchnorm_comparison_is_labelled_and_shares_start_at_zero() -> None:
    rng = np.random.default_rng(0)
    accuracy = {"BatchNorm": rng.uniform(0.5, 1, 40).tolist(), "none": [np.nan, *rng.uniform(0, 1, 39)]}
    figure = _drawn(
        figures.batchnorm_comparison("BN\nverdict: held", accuracy, (np.arange(40) % 4 + 1).tolist(), 0.95)
    )
    left, right = figure.axes
    assert "threshold: accuracy 0.95" in _legend_labels(left)
    assert left.get_ylim()[0] == 0 and right.get_ylim() == (0, 1)
    assert figure.get_suptitle() == "BN\nverdict: held"


def test_log_axes_of_the_noise_figure_are_labelled_in_plain_numbers() -> None:
    sizes = [16, 32, 64, 128, 256]
    spreads = [[0.3 * (16 / b) ** 0.5 for b in sizes] for _ in range(3)]
    gaps = [[0.03, 0.031, 0.028, 0.027, 0.03] for _ in range(3)]
    figure = _drawn(figures.noise_and_gap("Noise\nverdict: not shown", sizes, spreads, gaps))
    left, right = figure.axes
    for axis in (left.xaxis, left.yaxis, right.xaxis):
        labels = _tick_labels(axis)
        assert labels and all(PLAIN_NUMBER.match(label) for label in labels), labels
    assert _tick_labels(left.xaxis) == ["16", "32", "64", "128", "256"]
    assert right.get_ylim()[0] <= 0.0, "the gap axis starts at zero"


def test_the_learning_rate_axis_is_plain_and_diverged_trials_are_in_the_legend() -> None:
    points = {"log": [(1e-4, 0.5), (1e-2, 0.97), (0.9, np.nan)], "linear": [(0.3, 0.95), (0.8, 0.9)]}
    figure = _drawn(figures.accuracy_vs_learning_rate("Log vs linear\nverdict: not shown", points))
    (ax,) = figure.axes
    assert _tick_labels(ax.xaxis) == ["0.0001", "0.001", "0.01", "0.1", "1"]
    assert _legend_labels(ax) == ["log scales", "log scales: diverged (drawn at 0)", "linear scales"]
    assert ax.get_ylim()[0] < 0 < 1 < ax.get_ylim()[1]
