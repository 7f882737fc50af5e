"""Tensors past 2**31 elements (CUDA only): offsets must be computed in int64.

A few channels' statistics, outputs at the far end of memory, and gradients are checked against
float64 computations on slices of the same tensors.
"""

import math

import pytest
import torch

from fusedbn import fused_batch_norm

pytestmark = pytest.mark.cuda

CASES = {
    # (N, C) float16: channels are contiguous, the last rows lie past element 2**31.
    "nc": (2**31 // 64 + 64, 64),
    # (N, C, H, W) float16: the last batch entries lie past element 2**31.
    "nchw": (4, 8, 8192, 8200),
}


@pytest.mark.parametrize("case", list(CASES))
def test_more_than_2_31_elements(case):
    shape = CASES[case]
    assert math.prod(shape) > 2**31
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    num_channels = shape[1]
    x = torch.randn(shape, generator=generator, device=device, dtype=torch.float16)
    x.requires_grad_()
    weight = (torch.rand(num_channels, generator=generator, device=device) + 0.5).requires_grad_()
    bias = torch.randn(num_channels, generator=generator, device=device).requires_grad_()
    running_mean = torch.zeros(num_channels, device=device)
    running_var = torch.zeros(num_channels, device=device)

    # momentum 1: the running statistics become the batch mean and unbiased variance.
    y = fused_batch_norm(x, running_mean, running_var, weight, bias, True, 1.0, 1e-5)
    grad_output = torch.randn(shape, generator=generator, device=device, dtype=torch.float16)
    y.backward(grad_output)
    dy = grad_output
    torch.cuda.synchronize()

    n = x.numel() // num_channels
    if case == "nc":
        head, tail = (slice(0, 2),), (slice(-2, None),)
    else:
        head, tail = (slice(0, 1), slice(0, 2)), (slice(-1, None), slice(None), slice(-2, None))
    for c in (0, num_channels // 2 + 1, num_channels - 1):
        xc = x.detach()[:, c].double()
        dyc = dy[:, c].double()
        mean = xc.mean()
        var = xc.var(unbiased=False)
        torch.testing.assert_close(running_mean[c].double(), mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(running_var[c].double(), var * n / (n - 1), rtol=1e-4, atol=0)
        invstd = 1 / torch.sqrt(var + 1e-5)
        xhat = (xc - mean) * invstd
        sum_dy, sum_dy_xhat = dyc.sum(), (dyc * xhat).sum()
        # Sums over n terms of size ~1 in float32: bounded by a few float32 roundings per term.
        torch.testing.assert_close(bias.grad[c].double(), sum_dy, rtol=0, atol=1e-6 * n)
        torch.testing.assert_close(weight.grad[c].double(), sum_dy_xhat, rtol=0, atol=1e-6 * n)

        w, b = weight[c].double().detach(), bias[c].double().detach()
        expected_y = xhat * w + b
        expected_dx = w * invstd * (dyc - sum_dy / n - xhat * sum_dy_xhat / n)
        for ours, expected in ((y.detach()[:, c], expected_y), (x.grad[:, c], expected_dx)):
            # The first and the last elements of the channel (the last lie past 2**31).
            for index in (head, tail):
                scale = float(expected[index].abs().max())
                torch.testing.assert_close(
                    ours[index].double(), expected[index], rtol=4e-3, atol=4e-3 * scale
                )
        del xc, dyc, xhat, expected_y, expected_dx
