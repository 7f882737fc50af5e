"""Everything the benchmarks and the compile gate take from fusedbn itself, imported here and only here.

They measure fusedbn as a user runs it: through its public API (the modules, ``convert_model``,
``fused_batch_norm``, ``backend_for``), plus the kernel launchers (the KernelLaunchers that the kernel
modules define), the launch limits that pin the launch choice, the widest access the kernels make,
the switch that sends CPU tensors down the Triton path (for the fake GPU), the setting that pins
"auto" calls to the kernels (``use_backend``) and, for the compile gate
only, the split path's ticket counters, which a call on fake tensors must not leave behind.
"""

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
