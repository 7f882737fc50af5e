"""The plots are written as PNG files, whatever the results hold."""

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
