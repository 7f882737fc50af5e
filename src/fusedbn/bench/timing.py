"""The one timer of the benchmarks (:func:`time_calls`), the per-op suite's :func:`measure`
(``triton.testing.do_bench`` on CUDA, L2 flushed before each repetition; :func:`time_calls` on the CPU), and
the device-to-device copy bandwidth to judge timings by."""

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import torch


@dataclass(frozen=True)
class TimingSettings:
    """How long to warm up and to measure."""

    warmup_calls: int = 2  # untimed calls after the first one (which compiles), before measuring
    warmup_ms: int = 25  # do_bench's warm-up time
    rep_ms: int = 100  # do_bench's measuring time
    cpu_repeats: int = 5  # timed calls per measurement on the CPU


@dataclass(frozen=True)
class Calls:
    """A block of calls: their results (when kept), its wall time (synchronised at both ends), each call's
    host time (until it returned) and device time (CUDA events, when asked)."""

    results: list[Any]
    wall_s: float
    host_s: list[float]
    device_ms: list[float]

    @property
    def us_per_call(self) -> float:
        return self.wall_s / len(self.host_s) * 1e6


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any], device: torch.device, calls: int, keep: bool = False, device_times: bool = False
) -> Calls:
    """Call ``fn`` ``calls`` times back to back; ``keep`` its results, and time each call on the device
    too with ``device_times`` (CUDA only: the events add host time of their own)."""
    events = []
    if device_times and device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(calls)]  # fmt: skip
    results, host_s = [], []
    synchronize(device)
    start = perf_counter()
    for index in range(calls):
        if events:
            events[index][0].record()
        began = perf_counter()
        result = fn()
        host_s.append(perf_counter() - began)
        if events:
            events[index][1].record()
        if keep:
            results.append(result)
    synchronize(device)
    wall_s = perf_counter() - start
    return Calls(results, wall_s, host_s, [begin.elapsed_time(end) for begin, end in events])


@dataclass(frozen=True)
class Measurement:
    """The first call's result and wall time (it includes any compilation), then the warmed-up milliseconds
    per call: median, fastest and slowest of the repetitions."""

    first_result: Any
    first_call_s: float
    median_ms: float
    min_ms: float
    max_ms: float


def measure(fn: Callable[[], Any], device: torch.device, settings: TimingSettings) -> Measurement:
    """Call ``fn`` once (timed on the wall clock), warm it up, then time it on ``device``."""
    first = time_calls(fn, device, 1, keep=True)
    time_calls(fn, device, settings.warmup_calls)
    if device.type == "cuda":
        from triton.testing import do_bench  # imported here: the CPU smoke mode never touches a GPU driver

        timing = do_bench(fn, warmup=settings.warmup_ms, rep=settings.rep_ms, quantiles=[0.5, 0, 1])
    else:
        times = [s * 1e3 for s in time_calls(fn, device, settings.cpu_repeats).host_s]
        timing = [statistics.median(times), min(times), max(times)]
    return Measurement(first.results[0], first.wall_s, *timing)


class Budget:
    """A time budget of ``seconds`` that starts when it is made."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, perf_counter()

    def spent(self) -> bool:
        """Whether the budget's time has run out."""
        return perf_counter() - self.start > self.seconds

    def __str__(self) -> str:
        return f"time budget of {self.seconds:g} s spent"


def gigabytes_per_second(nbytes: int, milliseconds: float) -> float:
    """Bandwidth in GB/s (10**9 bytes per second) of moving ``nbytes`` in ``milliseconds``."""
    return nbytes / (milliseconds * 1e-3) / 1e9


def copy_bandwidth(device: torch.device, nbytes: int, settings: TimingSettings) -> float:
    """Measured device-to-device copy bandwidth in GB/s: a copy of ``nbytes`` reads and writes them once."""
    source = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return gigabytes_per_second(2 * nbytes, measure(lambda: target.copy_(source), device, settings).median_ms)
