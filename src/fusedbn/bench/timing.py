"""Timing: warmed-up measurements of a callable, and the device-to-device copy bandwidth to judge them by.

On CUDA the timer is ``triton.testing.do_bench``: it flushes the L2 cache before every repetition and
times each one with CUDA events; the median, fastest and slowest repetition are kept. On the CPU
(the smoke mode, which checks the harness and not speed) each call is timed with a wall clock.
"""

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
class Timing:
    """Milliseconds per call: median, fastest and slowest of the repetitions."""

    median_ms: float
    min_ms: float
    max_ms: float


@dataclass(frozen=True)
class Measurement:
    """The first call's result and wall time (it includes any compilation), then the warmed-up timing."""

    first_result: Any
    first_call_s: float
    timing: Timing


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_cuda(fn: Callable[[], Any], settings: TimingSettings) -> Timing:
    # Imported here so that the CPU smoke mode never touches a GPU driver.
    from triton.testing import do_bench

    median, fastest, slowest = do_bench(
        fn, warmup=settings.warmup_ms, rep=settings.rep_ms, quantiles=[0.5, 0.0, 1.0]
    )
    return Timing(median, fastest, slowest)


def _time_cpu(fn: Callable[[], Any], settings: TimingSettings) -> Timing:
    times = []
    for _ in range(settings.cpu_repeats):
        start = perf_counter()
        fn()
        times.append((perf_counter() - start) * 1e3)
    times.sort()
    middle = len(times) // 2
    median = times[middle] if len(times) % 2 else (times[middle - 1] + times[middle]) / 2
    return Timing(median, times[0], times[-1])


def measure(fn: Callable[[], Any], device: torch.device, settings: TimingSettings) -> Measurement:
    """Call ``fn`` once (timed on the wall clock), warm it up, then time it on ``device``."""
    synchronize(device)
    start = perf_counter()
    first_result = fn()
    synchronize(device)
    first_call_s = perf_counter() - start
    for _ in range(settings.warmup_calls):
        fn()
    synchronize(device)
    if device.type == "cuda":
        timing = _time_cuda(fn, settings)
    else:
        timing = _time_cpu(fn, settings)
    return Measurement(first_result, first_call_s, timing)


def gigabytes_per_second(nbytes: int, milliseconds: float) -> float:
    """Bandwidth in GB/s (10**9 bytes per second) of moving ``nbytes`` in ``milliseconds``."""
    return nbytes / (milliseconds * 1e-3) / 1e9


def copy_bandwidth(device: torch.device, nbytes: int, settings: TimingSettings) -> float:
    """Measured device-to-device copy bandwidth in GB/s: a copy of ``nbytes`` reads and writes them once."""
    source = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    timing = measure(lambda: target.copy_(source), device, settings).timing
    return gigabytes_per_second(2 * nbytes, timing.median_ms)
