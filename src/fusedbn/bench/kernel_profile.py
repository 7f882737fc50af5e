"""Per-kernel device time of each provider's training forward+backward, shape by shape.

For every (shape, dtype, layout) of a plan and each of eager, fusedbn and FlagGems, one fwd+bwd call
(the call the per-op suite times in mode fwdbwd) runs a few times under torch.profiler; each device
kernel's time per call is written to OUT/kernels.csv, and the summary lists, per case, the kernels of
fusedbn next to eager's. Without the L2 flush of the timed runs, so kernels that re-read a tensor
that fits in L2 look as they would in a model. On the CPU there are no device kernels: nothing is
written but the header.
"""

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fusedbn.bench.cases import (
    EAGER,
    FLAG_GEMS,
    FUSEDBN,
    FWDBWD,
    RESNET50,
    Shape,
    layout_applies,
    random_tensor,
)
from fusedbn.bench.profiling import KernelTime, kernel_times
from fusedbn.bench.providers import mode_call, provider_module, reference_module, unavailable_reason
from fusedbn.bench.runner import GRAD_SEED, MODULE_SEED, X_OFFSET, X_SEED

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
    shapes: list[Shape],
    dtypes: list[str],
    layouts: list[str],
    device: torch.device,
    budget_s: float,
    profiler: Profiler = kernel_times,
) -> tuple[list[KernelRow], int]:
    """Profile the ResNet-50 shapes among ``shapes``, dtype by dtype and layout by layout, until
    ``budget_s`` seconds have passed; returns the rows and how many cases were left out."""
    cases = [
        (shape, dtype, layout)
        for dtype in dtypes
        for layout in layouts
        for shape in shapes
        if shape.group == RESNET50 and layout_applies(shape, layout)
    ]
    start = time.perf_counter()
    rows: list[KernelRow] = []
    for index, (shape, dtype, layout) in enumerate(cases):
        if time.perf_counter() - start > budget_s:
            return rows, len(cases) - index
        rows += _profile_case(shape, dtype, layout, device, profiler)
    return rows, 0


def _profile_case(
    shape: Shape, dtype: str, layout: str, device: torch.device, profiler: Profiler
) -> list[KernelRow]:
    reference = reference_module(shape, device, MODULE_SEED)
    x = random_tensor(shape, dtype, layout, device, X_SEED, X_OFFSET)
    grad_output = random_tensor(shape, dtype, layout, device, GRAD_SEED)
    rows = []
    for provider in PROFILED_PROVIDERS:
        if unavailable_reason(provider) is not None:
            continue
        call = mode_call(provider_module(provider, reference), FWDBWD, x, grad_output)
        call()  # compiles and autotunes outside the profile
        rows += [
            KernelRow(shape.name, dtype, layout, provider, k.name, k.device_us, k.launches, k.batchnorm)
            for k in profiler(call, device, CALLS)
        ]
    return rows


def write_kernel_rows(rows: list[KernelRow], path: Path) -> None:
    """Write ``rows`` as CSV (device microseconds and launches per fwd+bwd call)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["shape", "dtype", "layout", "provider", "kernel", "device_us", "launches", "batchnorm"]
        )
        for r in rows:
            writer.writerow(
                [
                    r.shape,
                    r.dtype,
                    r.layout,
                    r.provider,
                    r.kernel,
                    f"{r.device_us:.2f}",
                    f"{r.launches:g}",
                    int(r.batchnorm),
                ]
            )


def format_kernel_summary(rows: list[KernelRow], left_out: int) -> str:
    """Per case, each provider's total device time per fwd+bwd and its kernels, longest first."""
    if not rows:
        return "" if not left_out else f"kernel profile: {left_out} cases left out by its time budget"
    lines = ["device time per fwd+bwd call by kernel (torch.profiler, no L2 flush):"]
    cases = dict.fromkeys((r.shape, r.dtype, r.layout) for r in rows)
    for case in cases:
        lines.append(f"  {' '.join(case)}")
        for provider in PROFILED_PROVIDERS:
            mine = [r for r in rows if (r.shape, r.dtype, r.layout) == case and r.provider == provider]
            if not mine:
                continue
            kernels = ", ".join(f"{r.kernel.split('(')[0][:48]} {r.device_us:.1f}" for r in mine[:4])
            lines.append(f"    {provider:<9} {sum(r.device_us for r in mine):8.1f} us: {kernels}")
    if left_out:
        lines.append(f"  ({left_out} cases left out by the profile's time budget)")
    return "\n".join(lines)
