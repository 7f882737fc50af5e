"""Timing on the CPU with a scripted clock, the bandwidth formula, and (with a GPU) do_bench and the copy."""

import pytest
import torch

from fusedbn.bench import timing


class ScriptedClock:
    """perf_counter stand-in: each timed call of ``fn`` lasts the next of ``durations`` seconds."""

    def __init__(self, durations):
        self.now = 100.0
        self.durations = list(durations)
        self.calls = 0

    def perf_counter(self):
        return self.now

    def fn(self):
        self.calls += 1
        self.now += self.durations.pop(0)
        return f"result {self.calls}"


def test_measure_on_cpu_times_first_call_then_warmup_then_repeats(monkeypatch):
    # first call 2 s; 2 warm-up calls; 5 repeats of 3, 1, 5, 2, 4 ms
    clock = ScriptedClock([2.0, 9.0, 9.0, 0.003, 0.001, 0.005, 0.002, 0.004])
    monkeypatch.setattr(timing, "perf_counter", clock.perf_counter)
    settings = timing.TimingSettings(warmup_calls=2, cpu_repeats=5)
    measured = timing.measure(clock.fn, torch.device("cpu"), settings)
    assert clock.calls == 8
    assert measured.first_result == "result 1"
    assert measured.first_call_s == pytest.approx(2.0)
    assert measured.median_ms == pytest.approx(3.0)
    assert measured.min_ms == pytest.approx(1.0)
    assert measured.max_ms == pytest.approx(5.0)


def test_median_of_an_even_number_of_repeats_is_the_middle_pair_mean(monkeypatch):
    clock = ScriptedClock([0.0, 0.004, 0.001, 0.010, 0.002])
    monkeypatch.setattr(timing, "perf_counter", clock.perf_counter)
    measured = timing.measure(
        clock.fn, torch.device("cpu"), timing.TimingSettings(warmup_calls=0, cpu_repeats=4)
    )
    assert measured.median_ms == pytest.approx(3.0)  # (2 + 4) / 2
    assert (measured.min_ms, measured.max_ms) == pytest.approx((1.0, 10.0))


@pytest.mark.parametrize(
    "nbytes, ms, expected",
    [(10**9, 1000.0, 1.0), (3 * 10**6, 1.0, 3.0), (2 * 64 * 256 * 56 * 56 * 2, 0.1, 2055.20896)],
)
def test_gigabytes_per_second(nbytes, ms, expected):
    assert timing.gigabytes_per_second(nbytes, ms) == pytest.approx(expected)


def test_copy_bandwidth_counts_a_read_and_a_write(monkeypatch):
    # Every clock reading is 2 ms after the one before, so each timed copy of 8 MiB takes 2 ms and
    # moves 16 MiB: 8.388608 GB/s.
    readings = iter(range(1000))
    monkeypatch.setattr(timing, "perf_counter", lambda: 0.002 * next(readings))
    settings = timing.TimingSettings(warmup_calls=0, cpu_repeats=3)
    gbps = timing.copy_bandwidth(torch.device("cpu"), 8 << 20, settings)
    assert gbps == pytest.approx(2 * (8 << 20) / 2e-3 / 1e9)


@pytest.mark.cuda
def test_cuda_timing_and_copy_bandwidth_are_plausible():
    device = torch.device("cuda")
    x = torch.randn(1 << 22, device=device)
    settings = timing.TimingSettings(warmup_ms=5, rep_ms=20)
    measured = timing.measure(lambda: x * 2, device, settings)
    assert torch.equal(measured.first_result, x * 2)
    assert 0 < measured.min_ms <= measured.median_ms <= measured.max_ms
    # Any GPU copies faster than 10 GB/s and slower than 100 TB/s.
    assert 10 < timing.copy_bandwidth(device, 64 << 20, settings) < 100_000


def test_a_budget_is_spent_once_its_seconds_have_passed(monkeypatch):
    now = [10.0]
    monkeypatch.setattr(timing, "perf_counter", lambda: now[0])
    budget = timing.Budget(2.5)
    now[0] = 12.5
    assert not budget.spent()
    now[0] = 12.6
    assert budget.spent() and str(budget) == "time budget of 2.5 s spent"


def test_time_calls_keeps_results_and_times_each_call(monkeypatch):
    clock = ScriptedClock([0.003, 0.001])
    monkeypatch.setattr(timing, "perf_counter", clock.perf_counter)
    calls = timing.time_calls(clock.fn, torch.device("cpu"), 2, keep=True, device_times=True)
    assert calls.results == ["result 1", "result 2"]
    assert calls.host_s == pytest.approx([0.003, 0.001]) and calls.wall_s == pytest.approx(0.004)
    assert calls.device_ms == [] and calls.us_per_call == pytest.approx(2000.0)  # no device on the CPU
