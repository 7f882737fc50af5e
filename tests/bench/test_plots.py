"""The plots are written as PNG files, whatever the results hold; they name fusedbn's backend, keep
the legend off the data and label the speedup axis in plain ratios."""

import re

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from fusedbn.bench import plots
from fusedbn.bench.results import Result

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _r(shape, layout, mode, provider, ms, status="ok"):
    return Result(shape, "float16", layout, mode, provider, "triton", status, median_ms=ms, copy_share=0.6)


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plots_are_written(tmp_path):
    results = [
        _r(shape, layout, mode, provider, ms)
        for shape in ("64x64x56x56", "65536x256")
        for layout in ("nchw", "channels_last")
        for mode in ("fwd", "eval")
        for provider, ms in (("eager", 2.0), ("fusedbn", 1.0), ("compile", 1.5))
    ]
    paths = plots.write_plots(results, tmp_path / "plots", "NVIDIA H100")
    assert [p.name for p in paths] == ["speedup.png", "bandwidth.png"]
    for path in paths:
        _assert_png(path)


def test_plots_survive_failed_and_missing_cases(tmp_path):
    results = [
        _r("4x8x6x6", "nchw", "bwd", "eager", float("nan"), status="error: boom"),
        _r("4x8x6x6", "nchw", "bwd", "fusedbn", 1.0),
    ]
    for path in plots.write_plots(results, tmp_path, "cpu"):
        _assert_png(path)


def _run_on(backend: str, fused_ms: tuple[float, ...]) -> list[Result]:
    """Three shapes x two layouts x two modes; fusedbn's times cycle through ``fused_ms``."""
    results = []
    for i, (shape, layout, mode) in enumerate(
        (s, la, m) for s in ("4x8x6x6", "64x16", "2x4x3x4x4") for la in ("nchw", "channels_last")
        for m in ("fwd", "bwd")
    ):  # fmt: skip
        results.append(Result(shape, "float32", layout, mode, "eager", "torch", "ok", median_ms=1.0))
        ms = fused_ms[i % len(fused_ms)]
        results.append(Result(shape, "float32", layout, mode, "fusedbn", backend, "ok", median_ms=ms))
    return results


@pytest.mark.parametrize("fused_ms", [(1.4, 1.2, 1.35), (0.2, 1.0, 5.0), (1.0 / 1.27, 1 / 1.05, 1 / 1.1)])
def test_speedup_ticks_are_plain_ratios(fused_ms: tuple[float, ...]) -> None:
    figure = plots.speedup_figure(_run_on("triton", fused_ms), "NVIDIA H100")
    FigureCanvasAgg(figure).draw()
    for ax in figure.axes:
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert len(labels) >= 2, labels
        assert all(re.fullmatch(r"\d+(\.\d+)?x", label) for label in labels), labels  # not 6x10^-1
        assert not [t for t in ax.yaxis.get_minorticklabels() if t.get_text()]


def test_the_legend_sits_over_no_panel_and_names_every_series() -> None:
    figure = plots.speedup_figure(_run_on("triton", (0.5, 2.0)), "NVIDIA H100")
    FigureCanvasAgg(figure).draw()
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["fusedbn nchw", "fusedbn channels_last"]
    renderer = figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in figure.axes)
    assert box.y0 < figure.get_window_extent().height, "the legend lies inside the figure"


@pytest.mark.parametrize(
    ("backend", "meaning"),
    [
        ("torch", "PyTorch's own BatchNorm behind fusedbn's checks"),
        ("triton-interpreter", "under Triton's interpreter on the CPU"),
        ("triton", "its compiled Triton kernels"),
    ],
)
def test_titles_name_the_backend_that_ran_fusedbn(backend: str, meaning: str) -> None:
    results = _run_on(backend, (0.9,))
    for draw in (plots.speedup_figure, plots.bandwidth_figure):
        figure = draw(results, "cpu x86_64")
        title = figure.get_suptitle().replace("\n", " ")
        assert "(cpu x86_64)" in title and f"fusedbn backend: {backend}, " in title and meaning in title
