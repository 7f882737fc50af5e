"""Where a fused BatchNorm's time goes on CUDA: host overhead per call and device time per kernel.

1. Host: fwd+bwd of a small layer back to back, CPU-bound, under cProfile (top functions).
2. Device: torch.profiler's per-kernel device time for a few large layers, with the bandwidth
   each kernel reached (bytes it must move over its time).
"""

import cProfile
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

import fusedbn

DEVICE = torch.device("cuda")


def fwd_bwd(module, x, grad):
    return torch.autograd.grad(module(x), (x, module.weight, module.bias), grad)


def host_overhead() -> None:
    for name, factory in (("torch", torch.nn.BatchNorm2d), ("fusedbn", fusedbn.FusedBatchNorm2d)):
        module = factory(64, device=DEVICE)
        x = torch.randn(8, 64, 8, 8, device=DEVICE, dtype=torch.float16, requires_grad=True)
        grad = torch.randn_like(x)
        for _ in range(20):
            fwd_bwd(module, x, grad)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            fwd_bwd(module, x, grad)
        torch.cuda.synchronize()
        print(f"host-bound fwd+bwd {name}: {(time.perf_counter() - start) / 200 * 1e6:.0f} us/call")
        if name == "fusedbn":
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(200):
                fwd_bwd(module, x, grad)
            profiler.disable()
            torch.cuda.synchronize()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(22)


def device_time() -> None:
    shapes = [(64, 64, 112, 112), (64, 256, 56, 56), (64, 1024, 14, 14), (32, 16, 256, 256)]
    for shape in shapes:
        for channels_last in (False, True):
            x = torch.randn(shape, device=DEVICE, dtype=torch.float16) + 1
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            x.requires_grad_(True)
            grad = torch.randn_like(x)
            module = fusedbn.FusedBatchNorm2d(shape[1], device=DEVICE)
            fwd_bwd(module, x, grad)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fwd_bwd(module, x, grad)
                torch.cuda.synchronize()
            tensor_bytes = x.numel() * x.element_size()
            layout = "NHWC" if channels_last else "NCHW"
            parts = []
            for event in prof.key_averages():
                us = event.device_time_total / max(event.count, 1)
                if us > 1:
                    parts.append(f"{event.key[:28]}={us:.0f}us")
            print(f"{shape} {layout} ({tensor_bytes / 1e6:.0f} MB): " + ", ".join(parts))


if __name__ == "__main__":
    print(torch.cuda.get_device_name())
    host_overhead()
    device_time()
