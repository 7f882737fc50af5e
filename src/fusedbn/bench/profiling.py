"""Device time per kernel from torch.profiler, which kernels are BatchNorm's, and the per-op suite's kernel
profile (``fusedbn bench --profile-kernels``: each ResNet-50 case's fwd+bwd call of eager, fusedbn and
FlagGems, without the L2 flush of the timed runs, into OUT/kernels.csv and the summary). On the CPU there are
no device kernels: the lists are empty and the BatchNorm share is NaN."""

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from fusedbn.bench.cases import EAGER, FLAG_GEMS, FUSEDBN, FWDBWD, RESNET50, Shape, layout_applies
from fusedbn.bench.core import KERNEL_NAMES
from fusedbn.bench.providers import case_inputs, mode_call, provider_module, unavailable_reason
from fusedbn.bench.timing import Budget, synchronize
from fusedbn.records import table, write_csv

# torch's native kernels (batch_norm_collect_statistics..., batch_norm_backward_reduce...), cuDNN's
# (bn_fw_tr_1C11..., bn_bw_1C11..., batchnorm_*_nhwc...), Inductor's (triton_*_native_batch_norm_*)
# and FlagGems' (batch_norm_forward_kernel) all name BatchNorm in one of these ways.
_BATCHNORM_NAME = re.compile(r"batch_?norm|(^|[^a-z])bn_(fw|bw)|welford", re.IGNORECASE)


def is_batchnorm_kernel(name: str) -> bool:
    """Whether a device kernel called ``name`` is a BatchNorm's (torch's, cuDNN's, Inductor's, FlagGems' or
    fusedbn's)."""
    base = name.split("(")[0].split("<")[0].strip()
    return base in KERNEL_NAMES or bool(_BATCHNORM_NAME.search(name))


@dataclass(frozen=True)
class KernelTime:
    """One kernel's device time per profiled call, and how many times a call launched it."""

    name: str
    device_us: float
    launches: float
    batchnorm: bool


def kernel_times(fn: Callable[[], Any], device: torch.device, calls: int) -> list[KernelTime]:
    """Each device kernel's time per call of ``fn`` over ``calls`` calls, longest first (none on the CPU)."""
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
    rows = [KernelTime(name, us / calls, count / calls, is_batchnorm_kernel(name))
            for name, us, count in totals]  # fmt: skip
    return sorted(rows, key=lambda row: row.device_us, reverse=True)


def batchnorm_share(kernels: list[KernelTime]) -> float:
    """The BatchNorm kernels' share of all device time (NaN when nothing was profiled)."""
    total = sum(k.device_us for k in kernels)
    return sum(k.device_us for k in kernels if k.batchnorm) / total if total > 0 else math.nan


KERNELS_FILE = "kernels.csv"
PROFILED_PROVIDERS = (EAGER, FUSEDBN, FLAG_GEMS)
CALLS = 3
Profiler = Callable[[Callable[[], object], torch.device, int], list[KernelTime]]


@dataclass(frozen=True)
class KernelRow:
    """One kernel of one provider's fwd+bwd call on one case."""

    shape: str
    dtype: str
    layout: str
    provider: str
    kernel: str
    device_us: float
    launches: float
    batchnorm: bool


def profile_cases(
    shapes: list[Shape], dtypes: list[str], layouts: list[str], device: torch.device, budget_s: float,
    profiler: Profiler = kernel_times,
) -> tuple[list[KernelRow], int]:
    """Profile the ResNet-50 shapes among ``shapes``, dtype by dtype and layout by layout, until
    ``budget_s`` seconds have passed; returns the rows and how many cases were left out."""
    cases = [(shape, dtype, layout) for dtype in dtypes for layout in layouts for shape in shapes
             if shape.group == RESNET50 and layout_applies(shape, layout)]  # fmt: skip
    budget = Budget(budget_s)
    rows: list[KernelRow] = []
    for index, (shape, dtype, layout) in enumerate(cases):
        if budget.spent():
            return rows, len(cases) - index
        reference, x, grad_output = case_inputs(shape, dtype, layout, device)
        for provider in (p for p in PROFILED_PROVIDERS if unavailable_reason(p) is None):
            call = mode_call(provider_module(provider, reference), FWDBWD, x, grad_output)
            call()  # compiles and autotunes outside the profile
            rows += [KernelRow(shape.name, dtype, layout, provider, k.name, k.device_us, k.launches,
                               k.batchnorm) for k in profiler(call, device, CALLS)]  # fmt: skip
    return rows, 0


def write_kernel_rows(rows: list[KernelRow], path: Path) -> None:
    """Write ``rows`` as CSV (device microseconds and launches per fwd+bwd call)."""
    values = [asdict(r) | {"device_us": f"{r.device_us:.2f}", "launches": f"{r.launches:g}",
                           "batchnorm": int(r.batchnorm)} for r in rows]  # fmt: skip
    write_csv(path, values, list(KernelRow.__dataclass_fields__))


def format_kernel_summary(rows: list[KernelRow], left_out: int) -> str:
    """Per case and provider, the total device time per fwd+bwd call and the longest kernels."""
    if not rows:
        return "" if not left_out else f"kernel profile: {left_out} cases left out by its time budget"
    lines = []
    for case in dict.fromkeys((r.shape, r.dtype, r.layout) for r in rows):
        for provider in PROFILED_PROVIDERS:
            mine = [r for r in rows if (r.shape, r.dtype, r.layout) == case and r.provider == provider]
            if mine:
                kernels = ", ".join(f"{r.kernel.split('(')[0][:48]} {r.device_us:.1f}" for r in mine[:4])
                lines.append({"case": " ".join(case), "provider": provider,
                              "us": f"{sum(r.device_us for r in mine):.1f}", "longest kernels (us)": kernels})
    text = "Device time per fwd+bwd call by kernel (torch.profiler, no L2 flush):\n\n" + table(lines)
    return text + (f"\n\n({left_out} cases left out by the profile's time budget)" if left_out else "")
