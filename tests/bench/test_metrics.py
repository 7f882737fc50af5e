"""Speedups and the project's per-op targets computed on synthetic timings."""

import math

import pytest

from fusedbn.bench import metrics
from fusedbn.bench.results import Result


def _r(shape, dtype, layout, mode, provider, ms, share=0.5, status="ok", rel_diff=0.0):
    return Result(shape, dtype, layout, mode, provider, "triton", status, median_ms=ms, copy_share=share,
                  rel_diff=rel_diff)  # fmt: skip


def test_geometric_mean():
    assert metrics.geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert metrics.geometric_mean([0.5, 2.0, 1.0]) == pytest.approx(1.0)
    assert math.isnan(metrics.geometric_mean([]))


def test_speedups_pair_cases_measured_by_both_providers():
    results = [
        _r("64x64x56x56", "float16", "nchw", "fwd", "eager", 3.0),
        _r("64x64x56x56", "float16", "nchw", "fwd", "fusedbn", 1.5),
        _r("64x64x56x56", "float16", "nchw", "bwd", "eager", 3.0),
        _r("64x64x56x56", "float16", "nchw", "bwd", "fusedbn", 1.0, status="error: boom"),
        _r("64x64x56x56", "float16", "nchw", "eval", "fusedbn", 1.0),
    ]
    assert metrics.speedups(results, "eager") == {("64x64x56x56", "float16", "nchw", "fwd"): 2.0}


def _target_run():
    """fwd+bwd on two ResNet-50 shapes in fp16 and bf16, nchw, plus float32 and an extra shape."""
    results = []
    # (shape, dtype): (eager ms, fusedbn ms, compile ms)
    times = {
        ("64x64x112x112", "float16"): (4.0, 2.0, 2.5),  # 2x, 1.25x over compile
        ("64x2048x7x7", "float16"): (1.0, 1.0, 0.9),  # 1x, 0.9x over compile
        ("64x64x112x112", "bfloat16"): (3.0, 1.0, 1.5),  # 3x, 1.5x
        ("64x2048x7x7", "bfloat16"): (1.5, 1.0, 1.2),  # 1.5x, 1.2x
        ("64x64x112x112", "float32"): (1.0, 2.0, 1.0),  # 0.5x: not a target case, but the worst
        ("256x2048x7x7", "float16"): (1.0, 0.5, 0.1),  # extra shape: not a target case
    }
    for (shape, dtype), (eager, fused, compiled) in times.items():
        results.append(_r(shape, dtype, "nchw", "fwdbwd", "eager", eager))
        results.append(_r(shape, dtype, "nchw", "fwdbwd", "fusedbn", fused, share=0.9))
        results.append(_r(shape, dtype, "nchw", "fwdbwd", "compile", compiled))
    # Bandwidth: 64x64x112x112 and 256x2048x7x7 have >= 2**24 elements, 64x2048x7x7 has not.
    results.append(_r("256x2048x7x7", "float16", "nchw", "eval", "fusedbn", 0.2, share=0.7))
    results.append(_r("64x2048x7x7", "float16", "nchw", "eval", "fusedbn", 0.2, share=0.1))
    return results


def test_targets_on_synthetic_timings():
    speed, floor, vs_compile, training_bw, eval_bw, *_ = metrics.compute_targets(_target_run())

    assert speed.cases == 4
    assert speed.value == pytest.approx((2.0 * 1.0 * 3.0 * 1.5) ** 0.25)
    assert speed.met is True  # 9 ** 0.25 = 1.73

    # The float32 case is slower (0.5x) but not a target case: the floor is the 1.0x one.
    assert floor.cases == 4
    assert floor.value == pytest.approx(1.0) and floor.met is True
    assert floor.where == "64x2048x7x7 float16 nchw fwdbwd"

    assert vs_compile.cases == 4
    assert vs_compile.value == pytest.approx(3 / 4)  # 1.25x, 0.9x, 1.5x, 1.2x
    assert vs_compile.met is True
    assert vs_compile.where == "64x2048x7x7 float16 nchw fwdbwd 0.90x"

    assert training_bw.cases == 4  # 64x64x112x112 in 3 dtypes, 256x2048x7x7 in 1
    assert training_bw.value == pytest.approx(0.9) and training_bw.met is True

    assert eval_bw.cases == 1  # 64x2048x7x7 is below the large-shape size
    assert eval_bw.value == pytest.approx(0.7) and eval_bw.met is False
    assert eval_bw.where == "256x2048x7x7 float16 nchw eval"


def test_targets_met_and_unmeasured():
    results = [
        _r("64x512x7x7", "bfloat16", "channels_last", "fwdbwd", "eager", 1.3),
        _r("64x512x7x7", "bfloat16", "channels_last", "fwdbwd", "fusedbn", 1.0),
    ]
    speed, floor, vs_compile, training_bw, eval_bw, *_ = metrics.compute_targets(results)
    assert speed.value == pytest.approx(1.3) and speed.met is True
    assert floor.value == pytest.approx(1.3) and floor.met is True
    assert vs_compile.cases == 0 and vs_compile.met is None and math.isnan(vs_compile.value)
    assert training_bw.cases == 0 and training_bw.met is None
    assert eval_bw.cases == 0 and eval_bw.met is None


@pytest.mark.parametrize("fused_ms, met", [(1.1, True), (1.12, False)])
def test_floor_allows_ten_percent(fused_ms, met):
    results = [
        _r("64x512x7x7", "float16", "nchw", "fwdbwd", "eager", 1.0),
        _r("64x512x7x7", "float16", "nchw", "fwdbwd", "fusedbn", fused_ms),
    ]
    assert metrics.compute_targets(results)[1].met is met


@pytest.mark.parametrize("share, met", [(0.6, True), (0.59, False)])
def test_training_bandwidth_goal(share, met):
    results = [_r("64x256x56x56", "bfloat16", "channels_last", "fwdbwd", "fusedbn", 1.0, share=share)]
    assert metrics.compute_targets(results)[3].met is met


def test_breakdown_weights_shapes_by_their_resnet50_layers():
    results = [
        # 64x64x112x112 is 1 layer, 64x256x14x14 is 11 layers
        _r("64x64x112x112", "float16", "nchw", "fwdbwd", "eager", 4.0),
        _r("64x64x112x112", "float16", "nchw", "fwdbwd", "fusedbn", 1.0),
        _r("64x256x14x14", "float16", "nchw", "fwdbwd", "eager", 1.0),
        _r("64x256x14x14", "float16", "nchw", "fwdbwd", "fusedbn", 1.0),
        _r("32x16x256x256", "float16", "nchw", "fwdbwd", "eager", 9.0),
        _r("32x16x256x256", "float16", "nchw", "fwdbwd", "fusedbn", 1.0),
    ]
    [(dtype, layout, mean, weighted, count)] = metrics.breakdown(results)
    assert (dtype, layout, count) == ("float16", "nchw", 2)
    assert mean == pytest.approx(2.0)  # sqrt(4 * 1)
    assert weighted == pytest.approx((1 * 4.0 + 11 * 1.0) / (1 * 1.0 + 11 * 1.0))


def test_mismatches_flag_differences_past_rounding_and_nan():
    results = [
        _r("4x8x6x6", "float32", "nchw", "fwd", "fusedbn", 1.0, rel_diff=5e-5),
        _r("4x8x6x6", "float32", "nchw", "bwd", "fusedbn", 1.0, rel_diff=5e-3),
        _r("4x8x6x6", "bfloat16", "nchw", "bwd", "compile", 1.0, rel_diff=1e-2),
        _r("4x8x6x6", "float16", "nchw", "bwd", "fusedbn", 1.0, rel_diff=float("nan")),
        _r("4x8x6x6", "float16", "nchw", "bwd", "eager", 1.0, rel_diff=float("nan")),
    ]
    flagged = metrics.mismatches(results)
    assert [(r.dtype, r.mode) for r in flagged] == [("float32", "bwd"), ("float16", "bwd")]


def test_auto_is_never_slower_and_fast_on_nchw():
    """auto's targets: its slowest case against eager (every case, noise allowed to 0.97x), and its
    NCHW fwd+bwd geomean on the target cases."""
    results = []
    # (shape, dtype, layout): (eager ms, auto ms)
    for (shape, dtype, layout), (eager, auto) in {
        ("64x64x112x112", "float16", "nchw"): (4.0, 2.0),  # 2x
        ("64x2048x7x7", "bfloat16", "nchw"): (1.0, 1.0),  # 1x
        ("64x2048x7x7", "bfloat16", "channels_last"): (1.0, 0.5),  # not NCHW: not in the speed
        ("64x16", "float32", "nchw"): (1.0, 1.02),  # 0.98x: the slowest, within noise
    }.items():
        results.append(_r(shape, dtype, layout, "fwdbwd", "eager", eager))
        results.append(_r(shape, dtype, layout, "fwdbwd", "auto", auto))
    never_slower, nchw_speed = metrics.compute_targets(results)[-2:]
    assert never_slower.cases == 4 and never_slower.met is True
    assert never_slower.value == pytest.approx(1 / 1.02) and never_slower.where == "64x16 float32 nchw fwdbwd"
    assert nchw_speed.cases == 2 and nchw_speed.value == pytest.approx(2 ** 0.5) and nchw_speed.met is True
    results.append(_r("64x16", "float32", "nchw", "eval", "eager", 1.0))
    results.append(_r("64x16", "float32", "nchw", "eval", "auto", 1.05))
    assert metrics.compute_targets(results)[-2].met is False
