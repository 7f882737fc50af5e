"""The runner on tiny CPU plans: what it measures, in what order, budgets and failures."""

import math
import os
import shutil

import pytest
import torch

from fusedbn.backend import backend_for
from fusedbn.bench import cases, runner
from fusedbn.bench.metrics import DIFF_LIMITS
from fusedbn.bench.timing import TimingSettings

FAST = TimingSettings(warmup_calls=0, cpu_repeats=1)
COPY_GBPS = 10.0


def _bench(**overrides) -> runner.Benchmark:
    settings = dict(
        device=torch.device("cpu"),
        shapes=cases.parse_shapes("4x8x6x6,64x16"),
        dtypes=["float32", "bfloat16"],
        providers=["fusedbn", "eager"],
        settings=FAST,
    )
    return runner.Benchmark(**(settings | overrides))


def test_groups_go_shape_by_shape_and_skip_channels_last_without_spatial_dims():
    bench = _bench(layouts=["channels_last", "nchw"])
    assert _names(bench.groups()) == [
        ("4x8x6x6", "float32", "channels_last"),
        ("4x8x6x6", "float32", "nchw"),
        ("4x8x6x6", "bfloat16", "channels_last"),
        ("4x8x6x6", "bfloat16", "nchw"),
        ("64x16", "float32", "nchw"),
        ("64x16", "bfloat16", "nchw"),
    ]


def test_units_run_eager_and_fusedbn_everywhere_then_compile_dtype_by_dtype():
    bench = _bench(providers=["compile", "fusedbn", "eager"], shapes=cases.parse_shapes("4x8x6x6,2x4x3x4x4"))
    units = [(u.shape.name, u.dtype, u.layout, u.providers) for u in bench.units()]
    first = [(s, d, lay, ("eager", "fusedbn")) for s, d, lay in _names(bench.groups())]
    assert units[:8] == first
    assert units[8:] == [
        ("4x8x6x6", "float32", "nchw", ("compile",)),
        ("2x4x3x4x4", "float32", "nchw", ("compile",)),
        ("4x8x6x6", "float32", "channels_last", ("compile",)),
        ("2x4x3x4x4", "float32", "channels_last", ("compile",)),
        ("4x8x6x6", "bfloat16", "nchw", ("compile",)),
        ("2x4x3x4x4", "bfloat16", "nchw", ("compile",)),
        ("4x8x6x6", "bfloat16", "channels_last", ("compile",)),
        ("2x4x3x4x4", "bfloat16", "channels_last", ("compile",)),
    ]
    only_compile = _bench(providers=["compile"], compile_shapes={"64x16"})
    assert [(u.shape.name, u.dtype) for u in only_compile.units()] == [
        ("64x16", "float32"),
        ("64x16", "bfloat16"),
    ]


def _names(groups):
    return [(shape.name, dtype, layout) for shape, dtype, layout in groups]


def test_compile_runs_only_on_its_shapes_and_modes_and_eager_goes_first():
    bench = _bench(providers=["compile", "fusedbn", "eager"], compile_shapes={"64x16"}, compile_modes=["fwd"])
    small, vector = bench.shapes
    assert bench.providers_for(small, "fwd") == ["eager", "fusedbn"]
    assert bench.providers_for(vector, "fwd") == ["eager", "fusedbn", "compile"]
    assert bench.providers_for(vector, "eval") == ["eager", "fusedbn"]
    # 6 groups x 4 modes x 2 providers, and compile on the 2 groups of 64x16 in fwd
    assert bench.case_count() == 6 * 4 * 2 + 2


def test_a_run_measures_every_case_against_eager():
    bench = _bench(modes=["fwd", "eval"], layouts=["nchw", "channels_last"])
    seen_units = []
    results = list(
        runner.run_benchmark(
            bench, COPY_GBPS, lambda i, unit, rs: seen_units.append((i, unit.shape.name, len(rs)))
        )
    )
    assert len(results) == bench.case_count() == 6 * 2 * 2
    assert seen_units == [(i, name, 4) for i, name in enumerate(["4x8x6x6"] * 4 + ["64x16"] * 2)]
    for result in results:
        assert result.status == "ok", result
        shape = cases.shape_named(result.shape)
        assert (
            result.bytes == 2 * shape.numel * torch.empty((), dtype=cases.DTYPES[result.dtype]).element_size()
        )
        assert result.min_ms <= result.median_ms <= result.max_ms
        assert result.gbps == pytest.approx(result.bytes / (result.median_ms * 1e-3) / 1e9)
        assert result.copy_share == pytest.approx(result.gbps / COPY_GBPS)
        assert result.first_call_s > 0
        if result.provider == "fusedbn":
            assert result.backend == backend_for("cpu")
            assert 0 <= result.rel_diff <= DIFF_LIMITS[result.dtype]
        else:
            assert result.backend == "torch" and math.isnan(result.rel_diff)


def test_time_budget_skips_what_is_left_without_running_it(monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "mode_call", lambda *args: calls.append(args))
    bench = _bench(time_budget_s=1e-9)
    results = list(runner.run_benchmark(bench, COPY_GBPS))
    assert len(results) == bench.case_count()
    assert all(r.status == "skipped: time budget of 1e-09 s spent" for r in results)
    assert calls == []


@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile on the CPU needs a C++ compiler"
)
def test_compile_is_measured_until_its_budget_is_spent():
    bench = _bench(
        shapes=cases.parse_shapes("64x16"),
        dtypes=["float32", "bfloat16"],
        modes=["fwd"],
        providers=["eager", "compile"],
        compile_budget_s=1e-9,
    )
    results = list(runner.run_benchmark(bench, COPY_GBPS))
    assert [(r.dtype, r.provider, r.status.split(":")[0]) for r in results] == [
        ("float32", "eager", "ok"),
        ("bfloat16", "eager", "ok"),
        ("float32", "compile", "ok"),
        ("bfloat16", "compile", "skipped"),
    ]
    compiled = results[2]
    assert compiled.backend == "inductor" and compiled.rel_diff <= DIFF_LIMITS["float32"]


def test_failures_are_recorded_and_the_run_goes_on(monkeypatch):
    # One value per channel: torch refuses to train on it, so the eager reference fails.
    bench = _bench(
        shapes=cases.parse_shapes("1x4,4x8x6x6"), dtypes=["float32"], layouts=["nchw"], modes=["fwd"]
    )
    results = list(runner.run_benchmark(bench, COPY_GBPS))
    assert [r.status.split(":")[0] for r in results] == ["error", "error", "ok", "ok"]
    assert "in eager reference: ValueError" in results[0].status

    original = runner.provider_module

    def failing(provider, reference, compile_mode="default"):
        if provider == "fusedbn":
            raise RuntimeError("kernel launch failed\nsecond line")
        return original(provider, reference, compile_mode)

    monkeypatch.setattr(runner, "provider_module", failing)
    bench = _bench(
        shapes=cases.parse_shapes("4x8x6x6"), dtypes=["float32"], layouts=["nchw"], modes=["fwd", "eval"]
    )
    statuses = [(r.mode, r.provider, r.status) for r in runner.run_benchmark(bench, COPY_GBPS)]
    assert statuses == [
        ("fwd", "eager", "ok"),
        ("fwd", "fusedbn", "error: RuntimeError: kernel launch failed"),
        ("eval", "eager", "ok"),
        ("eval", "fusedbn", "error: RuntimeError: kernel launch failed"),
    ]


@pytest.mark.cuda
def test_a_cuda_run_times_with_do_bench_and_matches_eager():
    bench = _bench(
        device=torch.device("cuda"),
        shapes=cases.parse_shapes("8x16x12x12"),
        dtypes=["float16"],
        settings=TimingSettings(warmup_ms=2, rep_ms=5),
    )
    results = list(runner.run_benchmark(bench, COPY_GBPS))
    assert len(results) == bench.case_count() == 2 * 4 * 2
    for result in results:
        assert result.status == "ok", result
        assert 0 < result.min_ms <= result.median_ms <= result.max_ms
        if result.provider == "fusedbn":
            assert result.backend == backend_for("cuda")
            assert result.rel_diff <= DIFF_LIMITS["float16"]
