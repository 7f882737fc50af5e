"""A fake GPU: fusedbn's host path, Triton's binder and cache included, run on the CPU with no device.

:func:`fake_gpu` runs everything Triton does on the host but the compiler and the device: a fake driver
(:class:`FakeDriver`) with a real ``GPUTarget("cuda", 90, 32)``; each kernel a real JITFunction
(:class:`FakeGpuKernel`) whose compile step, on a specialisation's first call, puts a
:class:`FakeCompiledKernel` into Triton's cache under Triton's key; and that kernel's C launcher counting
(and, when asked, recording) launches. CPU tensors take fusedbn's Triton path. The host-time benchmark
(``--fake-gpu``) and tests/kernels use it. :func:`recording_launches` records fusedbn's launches on any device
(the host-time benchmark counts them, the compile gate records those of calls on fake tensors).
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

from fusedbn.bench.core import LAUNCHERS, KernelLauncher, triton_on_cpu

TARGET = GPUTarget("cuda", 90, 32)


@dataclass(eq=False)  # hashed by identity, as a driver is
class FakeDriver:
    """The parts of a Triton driver that a launch or the binder asks for (target: sm_90 unless given)."""

    target: GPUTarget = TARGET
    stream: int = 7

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return self.stream

    def get_current_target(self) -> GPUTarget:
        return self.target


class FakeCompiledKernel:
    """A compiled kernel whose C launcher counts its launches, and records them if ``record``."""

    function = "device-function-handle"
    packed_metadata = ("packed", "metadata")

    def __init__(self, record: bool) -> None:
        self.record = record
        self.launch_count = 0
        self.launches: list[tuple[Any, ...]] = []

    def launch_metadata(self, grid: Any, stream: int, *args: Any) -> None:
        return None

    def run(self, *launch: Any) -> None:
        """The C launcher: count (and record) the launch."""
        self.launch_count += 1
        if self.record:
            self.launches.append(launch)


class FakeGpuKernel:
    """A real JITFunction of ``fn`` whose compile step is faked; counts the launches through Triton."""

    def __init__(self, fn: Callable[..., Any], record: bool = False) -> None:
        self.jit = JITFunction(fn)
        self.record = record
        self.compiled: dict[str, FakeCompiledKernel] = {}
        self.triton_launches = 0
        self.jit._do_compile = self._compile
        run = self.jit.run

        def counting_run(*args: Any, **kwargs: Any) -> Any:
            self.triton_launches += 1
            return run(*args, **kwargs)

        self.jit.run = counting_run

    def _compile(self, key, signature, device, constexprs, options, attrs, warmup):
        # Triton's own key: the compiled kernel lands in its cache as a real compile's would.
        kernel = self.compiled[key] = FakeCompiledKernel(self.record)
        self.jit.device_caches[device][0][key] = kernel
        return kernel

    def launch_count(self) -> int:
        """Launches of every specialisation, through Triton or directly."""
        return sum(kernel.launch_count for kernel in self.compiled.values())

    def all_launches(self) -> list[tuple[Any, ...]]:
        """The recorded launches (with ``record``), specialisation by specialisation."""
        return [launch for kernel in self.compiled.values() for launch in kernel.launches]


def fake_driver(target: GPUTarget = TARGET) -> contextlib.AbstractContextManager[FakeDriver]:
    """Triton's active driver is a FakeDriver for ``target`` inside the block, the previous one after."""
    return mock.patch.object(triton.runtime.driver, "_active", FakeDriver(target))


@contextlib.contextmanager
def fake_gpu(record: bool = False) -> Iterator[dict[str, FakeGpuKernel]]:
    """fusedbn on the fake GPU inside the block, whether or not Triton's interpreter is on: CPU tensors take
    the Triton path and every kernel launcher launches a FakeGpuKernel (yielded by kernel name) through
    Triton's driver, binder and cache. Everything is put back on exit."""
    fakes = [(launcher, FakeGpuKernel(launcher.kernel.fn, record)) for launcher in LAUNCHERS]
    with fake_driver(), triton_on_cpu(), contextlib.ExitStack() as patches:
        for launcher, kernel in fakes:
            patches.enter_context(mock.patch.dict(vars(launcher), vars(KernelLauncher(kernel.jit))))
        yield {kernel.jit.fn.__name__: kernel for _, kernel in fakes}


@dataclass(frozen=True)
class KernelCall:
    """One call of a kernel launcher: the kernel's Python function, the grid and the arguments."""

    kernel: Callable[..., Any]
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@contextlib.contextmanager
def recording_launches(launch: bool = True) -> Iterator[list[KernelCall]]:
    """Every kernel launcher call inside the block is appended to the yielded list, then made (with
    ``launch``) or not (the kernel never runs)."""
    calls: list[KernelCall] = []
    original = KernelLauncher.__call__

    def record(launcher: KernelLauncher, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
        calls.append(KernelCall(launcher.kernel.fn, tuple(grid), args, kwargs))
        if launch:
            original(launcher, grid, *args, **kwargs)

    with mock.patch.object(KernelLauncher, "__call__", record):
        yield calls
