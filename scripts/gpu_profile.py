"""Where the host time of a fused BatchNorm goes on CUDA (the autograd backward runs on another thread,
so the pieces are timed with wall clocks around them rather than with cProfile).

For a small layer, run fwd+bwd back to back (host-bound) and print the mean microseconds spent per
call in: the whole step, the autograd Function's forward and backward, the launchers, every Triton
kernel launch (KernelLauncher calls: the fast path, or kernel[grid] on a specialisation's first call),
and planning (plan_batch_norm, which the backward skips by reusing the forward's plan).
"""

import collections
import functools
import time

import torch
import triton

import fusedbn
from fusedbn import autograd
from fusedbn.kernels import backward, forward, launcher, layout

DEVICE = torch.device("cuda")
SPENT: dict[str, float] = collections.defaultdict(float)


def timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - start

    return wrapper


def instrument() -> None:
    forward.batch_norm_forward = timed("launcher fwd", forward.batch_norm_forward)
    backward.batch_norm_backward = timed("launcher bwd", backward.batch_norm_backward)
    autograd.batch_norm_forward = forward.batch_norm_forward
    autograd.batch_norm_backward = backward.batch_norm_backward
    for module in (forward, backward, autograd):
        module.plan_batch_norm = timed("plan_batch_norm", module.plan_batch_norm)
    function = autograd.FusedBatchNormFunction
    function.forward = staticmethod(timed("Function.forward", function.forward))
    function.backward = staticmethod(timed("Function.backward", function.backward))
    call = launcher.KernelLauncher.__call__

    def timed_call(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(self, *args, **kwargs)
        finally:
            SPENT[f"launch {self.kernel.fn.__name__}"] += time.perf_counter() - start

    launcher.KernelLauncher.__call__ = timed_call


def measure(shape, channels_last, label, calls=300) -> None:
    module = fusedbn.FusedBatchNorm2d(shape[1], device=DEVICE)
    x = torch.randn(shape, device=DEVICE, dtype=torch.float16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn_like(x)
    for _ in range(20):
        torch.autograd.grad(module(x), (x, module.weight, module.bias), grad)
    torch.cuda.synchronize()
    SPENT.clear()
    start = time.perf_counter()
    for _ in range(calls):
        torch.autograd.grad(module(x), (x, module.weight, module.bias), grad)
    torch.cuda.synchronize()
    total = (time.perf_counter() - start) / calls * 1e6
    parts = ", ".join(f"{k} {v / calls * 1e6:.0f}" for k, v in sorted(SPENT.items()))
    print(f"{label}: step {total:.0f} us | {parts}")
    fwd_only = time.perf_counter()
    with torch.no_grad():
        for _ in range(calls):
            module(x)
    torch.cuda.synchronize()
    print(f"{label}: forward alone (no_grad) {(time.perf_counter() - fwd_only) / calls * 1e6:.0f} us")


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    eager = torch.nn.BatchNorm2d(64, device=DEVICE)
    x = torch.randn(8, 64, 8, 8, device=DEVICE, dtype=torch.float16, requires_grad=True)
    grad = torch.randn_like(x)
    for _ in range(20):
        torch.autograd.grad(eager(x), (x, eager.weight, eager.bias), grad)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(300):
        torch.autograd.grad(eager(x), (x, eager.weight, eager.bias), grad)
    torch.cuda.synchronize()
    print(f"torch eager small: step {(time.perf_counter() - start) / 300 * 1e6:.0f} us")
    instrument()
    measure((8, 64, 8, 8), False, "whole-channel small NCHW")
    measure((64, 64, 28, 28), True, "split NHWC")
    with layout.launch_limits(layout.LaunchLimits(whole_channel_blocks_per_sm=1e9)):
        measure((64, 512, 7, 7), False, "split NCHW")


if __name__ == "__main__":
    main()
