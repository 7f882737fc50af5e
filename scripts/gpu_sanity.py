"""A quick CUDA check of the compiled kernels and a first look at their speed (about a minute).

Correctness: every layout, dtype, path and epilogue against a float64 reference. Speed: a few
training forward+backward shapes against torch eager, under a few launch-limit variants, so that a
single GPU session can both prove the kernels and pick the defaults. Prints one line per check.
"""

import math
import sys
import time

import torch
import triton
import triton.testing

import fusedbn
from fusedbn.kernels import layout

DEVICE = torch.device("cuda")
# Relative norm error; float32 allows a rare ReLU mask flip where |z| is at rounding level.
TOLERANCE = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def reference(x, residual, weight, bias, relu, eps=1e-5):
    dims = [d for d in range(x.dim()) if d != 1]
    x64 = x.double()
    mean = x64.mean(dims, keepdim=True)
    var = x64.var(dims, unbiased=False, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x64 - mean) / torch.sqrt(var + eps) * weight.double().view(shape) + bias.double().view(shape)
    if residual is not None:
        y = y + residual.double()
    return torch.relu(y) if relu else y


def check_case(shape, dtype, channels_last, limits, residual_on, relu) -> float:
    with layout.launch_limits(limits):
        return _check_case(shape, dtype, channels_last, residual_on, relu)


def _check_case(shape, dtype, channels_last, residual_on, relu) -> float:
    x = (torch.randn(shape, device=DEVICE) * 3 + 100).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    x.requires_grad_(True)
    c = shape[1]
    weight = (torch.rand(c, device=DEVICE) + 0.5).requires_grad_(True)
    bias = torch.randn(c, device=DEVICE).requires_grad_(True)
    residual = torch.randn(shape, device=DEVICE, dtype=dtype) if residual_on else None
    y = fusedbn.fused_batch_norm(x, None, None, weight, bias, training=True, residual=residual,
                                 activation="relu" if relu else None)
    grad = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, weight, bias), grad)
    x64 = x.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    b64 = bias.detach().double().requires_grad_(True)
    y64 = reference(x64, residual, w64, b64, relu)
    dx64, dw64, db64 = torch.autograd.grad(y64, (x64, w64, b64), grad.double())
    errors = []
    for got, want in ((y, y64), (dx, dx64), (dw, dw64), (db, db64)):
        errors.append(((got.double() - want).norm() / (want.norm() + 1e-12)).item())
    assert y.stride() == x.stride(), "output memory format differs from the input's"
    return max(errors)


def correctness() -> bool:
    split = layout.LaunchLimits(single_tile=256, stream_tile=128, whole_channel_blocks_per_sm=1e9)
    whole = layout.LaunchLimits(single_tile=256, stream_tile=128, whole_channel_blocks_per_sm=0)
    ok = True
    cases = [
        ((64, 37), False), ((8, 24, 33), False), ((16, 40, 9, 11), False), ((16, 40, 9, 11), True),
        ((4, 12, 3, 5, 7), False), ((4, 12, 3, 5, 7), True), ((2, 8, 64, 64), False),
    ]
    for shape, cl in cases:
        for dtype in (torch.float16, torch.bfloat16) if cl else (torch.float32, torch.float16):
            for limits in (layout.LaunchLimits(), split, whole):
                for residual_on, relu in ((False, False), (True, True)):
                    error = check_case(shape, dtype, cl, limits, residual_on, relu)
                    good = error < TOLERANCE[dtype] and math.isfinite(error)
                    ok &= good
                    if not good:
                        print(f"FAIL {shape} {dtype} cl={cl} limits={limits} res={residual_on} "
                              f"relu={relu}: rel error {error:.2e}")
    print(f"correctness sweep: {'all passed' if ok else 'FAILURES above'}")
    return ok


def huge_tensor() -> bool:
    # 2**31 + 2**20 elements of float16 (4 GiB): offsets past int32 must be computed in int64.
    n, c = (2**31 + 2**20) // 64, 64
    x = torch.randn(n, c, device=DEVICE, dtype=torch.float16)
    y = fusedbn.fused_batch_norm(x, None, None, training=True)
    tail = x[-4096:, :5].double()
    x64 = x[:, :5].double()
    mean, var = x64.mean(0), x64.var(0, unbiased=False)
    expected = (tail - mean) / torch.sqrt(var + 1e-5)
    error = (y[-4096:, :5].double() - expected).abs().max().item()
    print(f"int64 offsets ({x.numel()} elements): max abs error {error:.2e}")
    del x, y
    torch.cuda.empty_cache()
    return error < 1e-2


def timing() -> None:
    shapes = [(64, 64, 112, 112), (64, 256, 56, 56), (64, 512, 28, 28), (64, 1024, 14, 14),
              (64, 2048, 7, 7), (32, 16, 256, 256)]
    variants = {
        "default": layout.LaunchLimits(),
        "split": layout.LaunchLimits(whole_channel_blocks_per_sm=1e9),
        "whole": layout.LaunchLimits(whole_channel_blocks_per_sm=0),
        "st8k": layout.LaunchLimits(stream_tile=8192),
        "c32": layout.LaunchLimits(max_channel_block=32),
    }
    print("fwd+bwd ms (median), fp16: torch eager | fusedbn variants")
    for shape in shapes:
        for cl in (False, True):
            x = torch.randn(shape, device=DEVICE, dtype=torch.float16) + 1
            if cl:
                x = x.to(memory_format=torch.channels_last)
            x.requires_grad_(True)
            grad = torch.randn_like(x)
            bn = torch.nn.BatchNorm2d(shape[1], device=DEVICE)
            fused = fusedbn.convert_model(torch.nn.BatchNorm2d(shape[1], device=DEVICE))

            def step(module, x=x, grad=grad):
                return lambda: torch.autograd.grad(module(x), (x, module.weight, module.bias), grad)

            row = [f"{triton.testing.do_bench(step(bn), return_mode='median'):.3f}"]
            for limits in variants.values():
                with layout.launch_limits(limits):
                    row.append(f"{triton.testing.do_bench(step(fused), return_mode='median'):.3f}")
            print(f"{str(shape):22} {'NHWC' if cl else 'NCHW'} torch {row[0]} | "
                  + " ".join(f"{k}={v}" for k, v in zip(variants, row[1:], strict=True)))


def main() -> int:
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    start = time.time()
    ok = correctness()
    print(f"({time.time() - start:.0f} s)")
    ok &= huge_tensor()
    timing()
    print(f"total {time.time() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
