"""Device time per kernel, from torch.profiler, and which of those kernels are BatchNorm's.

A callable is run a few times under the profiler with CUDA activity; every kernel (and memcpy or
memset) the device ran is summed by name and divided by the number of calls. On the CPU there are no
device kernels: the list is empty and the BatchNorm share is NaN, which the reports print as such.
"""

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from fusedbn.bench.timing import synchronize

# fusedbn's kernels (kernels/forward.py, kernels/backward.py).
FUSEDBN_KERNELS = (
    "whole_channel_forward_kernel",
    "partial_moments_kernel",
    "finalize_moments_kernel",
    "apply_kernel",
    "whole_channel_backward_kernel",
    "partial_sums_kernel",
    "grad_input_kernel",
)
# torch's native kernels (batch_norm_collect_statistics..., batch_norm_backward_reduce...), cuDNN's
# (bn_fw_tr_1C11..., bn_bw_1C11..., batchnorm_*_nhwc...), Inductor's (triton_*_native_batch_norm_*)
# and FlagGems' (batch_norm_forward_kernel) all name BatchNorm in one of these ways.
_BATCHNORM_NAME = re.compile(r"batch_?norm|(^|[^a-z])bn_(fw|bw)|welford", re.IGNORECASE)


def is_batchnorm_kernel(name: str) -> bool:
    """Whether a device kernel called ``name`` belongs to a BatchNorm (torch's, cuDNN's, Inductor's,
    FlagGems' or fusedbn's)."""
    base = name.split("(")[0].split("<")[0].strip()
    return base in FUSEDBN_KERNELS or bool(_BATCHNORM_NAME.search(name))


@dataclass(frozen=True)
class KernelTime:
    """One kernel's device time per profiled call, and how many times a call launched it."""

    name: str
    device_us: float
    launches: float
    batchnorm: bool


def kernel_times(fn: Callable[[], Any], device: torch.device, calls: int) -> list[KernelTime]:
    """Run ``fn`` ``calls`` times under torch.profiler; each device kernel's time per call, longest first.

    Empty on a device without a profiled kernel activity (the CPU).
    """
    if device.type != "cuda":
        return []
    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(calls):
            fn()
        synchronize(device)
    totals: dict[str, list[float]] = {}
    for event in profiler.events():
        if event.device_type != DeviceType.CUDA:
            continue
        total = totals.setdefault(event.name, [0.0, 0])
        total[0] += event.time_range.elapsed_us()
        total[1] += 1
    return summarise(((name, us, count) for name, (us, count) in totals.items()), calls)


def summarise(totals: Iterable[tuple[str, float, int]], calls: int) -> list[KernelTime]:
    """KernelTimes per call from (name, total device us, launches) over ``calls`` calls, longest first."""
    rows = [
        KernelTime(name, us / calls, count / calls, is_batchnorm_kernel(name)) for name, us, count in totals
    ]
    return sorted(rows, key=lambda row: row.device_us, reverse=True)


def batchnorm_share(kernels: list[KernelTime]) -> float:
    """The BatchNorm kernels' share of all device time (NaN when nothing was profiled)."""
    total = sum(k.device_us for k in kernels)
    if total <= 0:
        return math.nan
    return sum(k.device_us for k in kernels if k.batchnorm) / total
