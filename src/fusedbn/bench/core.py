"""Everything the benchmarks and the compile gate take from fusedbn itself, imported here and only here: its
public API, and the kernel launchers, launch limits and switches they measure and pin fusedbn with."""

from pathlib import Path

from fusedbn import FusedSyncBatchNorm, backend_for, convert_model, fused_batch_norm, use_backend
from fusedbn.backend import AUTO, TORCH, TRITON, TRITON_INTERPRETER, kernels_run_on, triton_on_cpu
from fusedbn.kernels import backward, forward, tickets
from fusedbn.kernels.launcher import KernelLauncher
from fusedbn.kernels.layout import WIDEST_ACCESS_BYTES, LaunchLimits, launch_limits

# Every kernel launcher of fusedbn (the launch_* objects of the kernel modules).
LAUNCHERS: tuple[KernelLauncher, ...] = tuple(
    value for module in (forward, backward) for value in vars(module).values()
    if isinstance(value, KernelLauncher)
)  # fmt: skip
# The names of fusedbn's kernels, as profilers and the compile gate see them.
KERNEL_NAMES: tuple[str, ...] = tuple(launcher.kernel.fn.__name__ for launcher in LAUNCHERS)
TICKET_COUNTERS = tickets._counters
KERNEL_SOURCES = Path(forward.__file__).resolve().parent  # the kernel modules' folder

__all__ = [
    "AUTO", "KERNEL_NAMES", "KERNEL_SOURCES", "LAUNCHERS", "TICKET_COUNTERS", "TORCH", "TRITON",
    "TRITON_INTERPRETER", "WIDEST_ACCESS_BYTES", "FusedSyncBatchNorm", "KernelLauncher", "LaunchLimits",
    "backend_for", "convert_model", "fused_batch_norm", "kernels_run_on", "launch_limits", "triton_on_cpu",
    "use_backend",
]  # fmt: skip
