"""Kernels the compile gate's tests hand to its workers: one that kills the compiling process, one
that never finishes, and one that cannot compile. A worker reads ``kernel.fn`` first."""

import ctypes
import time

import triton
import triton.language as tl


class _Segfault:
    @property
    def fn(self):
        ctypes.string_at(0)  # reading address 0: the process dies of SIGSEGV, as a crashing compiler


class _Hang:
    @property
    def fn(self):
        time.sleep(600)


segfault_kernel = _Segfault()
hanging_kernel = _Hang()


@triton.jit
def failing_kernel(x_ptr, BLOCK: tl.constexpr):
    tl.static_assert(BLOCK < 0, "this kernel never compiles")
    tl.store(x_ptr, 1.0)
