"""The terminal report: table cells, targets, failures and the header."""

from fusedbn.bench import report
from fusedbn.bench.results import Result, Run
from fusedbn.records import RunRecord

from .helpers import table_rows


def _r(mode, provider, ms, status="ok", dtype="float16", rel_diff=1e-4, gbps=1500.0, share=0.5):
    return Result("64x64x56x56", dtype, "nchw", mode, provider, "triton", status, median_ms=ms, gbps=gbps,
                  copy_share=share, rel_diff=rel_diff)  # fmt: skip


def _cells(line: str) -> list[str]:
    return table_rows(line)[0]


def test_table_has_a_line_per_case_with_providers_side_by_side():
    results = [
        _r("fwd", "eager", 0.2),
        _r("fwd", "fusedbn", 0.1, gbps=1234.5, share=0.412),
        _r("fwd", "auto", 0.125),
        _r("fwd", "compile", 0.15),
        _r("fwd", "flag_gems", 0.4),
        _r("bwd", "eager", 0.3),
        _r("bwd", "fusedbn", 0.6),
    ]
    lines = report.format_table(results).splitlines()
    assert _cells(lines[0])[:4] == ["shape", "dtype", "layout", "mode"]
    assert len(lines) == 4  # the header, its rule and a row per case
    fwd, bwd = _cells(lines[2]), _cells(lines[3])
    assert fwd == ["64x64x56x56", "float16", "nchw", "fwd", "200.0", "100.0", "125.0", "150.0", "400.0",
                   "2.00x", "1.60x", "1.50x", "4.00x", "1234", "41%", "1e-04"]  # fmt: skip
    assert bwd[4:14] == ["300.0", "600.0", "-", "-", "-", "0.50x", "-", "-", "-", "1500"]


def test_table_marks_failures_skips_and_differences():
    results = [
        _r("eval", "eager", 0.2),
        _r("eval", "fusedbn", float("nan"), status="error: RuntimeError: out of memory"),
        _r("eval", "compile", float("nan"), status="skipped: compile budget of 1 s spent"),
        _r("fwd", "eager", 0.2, dtype="float32"),
        _r("fwd", "fusedbn", 0.2, dtype="float32", rel_diff=2e-3),
    ]
    eval_line, fwd_line = (_cells(line) for line in report.format_table(results).splitlines()[2:])
    assert eval_line[4:10] == ["200.0", "error", "-", "skip", "-", "-"]
    assert eval_line[-1] == "-"
    assert fwd_line[-1] == "2e-03!"  # past the float32 limit


def test_targets_text_lists_each_target_and_the_breakdown():
    results = []
    for shape, eager in (("64x64x112x112", 3.0), ("64x2048x7x7", 1.0)):
        for provider, ms in (("eager", eager), ("fusedbn", 1.0)):
            results.append(Result(shape, "bfloat16", "channels_last", "fwdbwd", provider, "triton", "ok",
                                  median_ms=ms, copy_share=0.85))  # fmt: skip
    text = report.format_targets(results)
    rows = table_rows(text)
    assert rows[0] == ["target", "measured", "goal", "met", "cases", "where"]
    speed, floor, compiled, training, evaluation = rows[2:7]
    assert "geomean" in speed[0] and speed[1:5] == ["1.73x", ">= 1.25x", "yes", "2"]
    assert "floor" in floor[0] and floor[1:4] == ["1.00x", ">= 0.90x", "yes"]
    assert floor[5] == "64x2048x7x7 bfloat16 channels_last fwdbwd"
    assert "torch.compile" in compiled[0] and compiled[1] == "-" and compiled[3] == "-"  # not measured
    assert "training bandwidth" in training[0] and training[1] == "85%" and training[3] == "yes"
    assert "eval bandwidth" in evaluation[0] and evaluation[3] == "-"
    # geomean sqrt(3 * 1) = 1.73; weighted by layers (1 and 4): (3 + 4) / (1 + 4) = 1.40
    assert rows[-1] == ["bfloat16", "channels_last", "1.73x", "1.40x", "2"]


def test_problems_name_errors_and_mismatches():
    results = [
        _r("fwd", "fusedbn", float("nan"), status="error: ValueError: bad"),
        _r("bwd", "compile", 1.0, dtype="bfloat16", rel_diff=0.5),
        _r("bwd", "fusedbn", 1.0, rel_diff=1e-3),
        _r("eval", "eager", 1.0, status="skipped: time budget of 5 s spent"),
    ]
    lines = report.format_problems(results).splitlines()
    assert lines == [
        "ERROR 64x64x56x56 float16 nchw fwd fusedbn: error: ValueError: bad",
        "MISMATCH 64x64x56x56 bfloat16 nchw bwd compile: relative difference 5.0e-01 from eager "
        "(limit 3e-02)",
    ]
    assert report.format_problems(results[2:]) == ""


def test_header_names_device_versions_commit_and_copy_bandwidth():
    record = RunRecord("20260101T000000Z", "2026-01-01", "NVIDIA H200", "x86_64, 8 CPUs", "2.11.0", "3.6.0",
                       "12.8", "0.1.0", "abc1234", 4, 0.25)  # fmt: skip
    header = report.format_header(Run(record, 4321.4))
    for part in ("NVIDIA H200", "torch 2.11.0", "triton 3.6.0", "abc1234", "4321 GB/s", "20260101T000000Z",
                 "x86_64, 8 CPUs", "load 0.25"):  # fmt: skip
        assert part in header
    assert "CPU run" not in header
    cpu = RunRecord("r", "d", "cpu x86_64", "x86_64", "2.13", "3.9", "none", "0.1.0", "abc", 1, 0.0)
    assert "CPU run: it checks the harness" in report.format_header(Run(cpu, 5.0))
