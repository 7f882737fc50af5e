"""fused_batch_norm's dtypes (half with float32 parameters, all-half, float64) and offset data."""

import pytest
import torch
from helpers import (
    ALL_KEYS,
    SHAPES,
    compare,
    make_input,
    params_for,
    reference,
    run_both,
)

from fusedbn import fused_batch_norm

DTYPE_CASES = [
    (torch.float16, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float64, torch.float64),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "dtype,param_dtype", DTYPE_CASES, ids=[f"{str(a)[6:]}-{str(b)[6:]}" for a, b in DTYPE_CASES]
)
def test_dtypes(dtype, param_dtype, layout, training, launch_path, device, assert_close):
    shape = SHAPES[4]
    x, _ = make_input(shape, layout, dtype, device, seed=11)
    grad_output, _ = make_input(shape, "contiguous", dtype, device, seed=12)
    weight, bias, running_mean, running_var = params_for(shape[1], param_dtype, device, seed=13)

    fused, torch_result = run_both(
        x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, grad_output
    )
    expected = reference(
        x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, grad_output
    )
    assert fused["y"].dtype == dtype
    assert fused["grad_input"].dtype == dtype
    for key in ("grad_weight", "grad_bias", "running_mean", "running_var"):
        assert fused[key].dtype == param_dtype, key
        assert fused[key].dtype == torch_result[key].dtype, key
    assert fused["y"].stride() == torch_result["y"].stride()
    # Outputs and the input gradient are rounded to the input dtype, parameter gradients and running
    # statistics to the parameter dtype; both are held to the input dtype's tolerance.
    compare(fused, expected, dtype, assert_close, ALL_KEYS, "vs float64")
    compare(fused, torch_result, dtype, assert_close, ALL_KEYS, "vs torch")
    launch_path.check()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_offset_data_variance(layout, launch_path, device, assert_close):
    shape = (6, 3, 9, 11)
    x, _ = make_input(shape, layout, torch.float32, device, seed=70, offset=1000.0)
    grad_output, _ = make_input(shape, "contiguous", torch.float32, device, seed=71)
    running_mean = torch.zeros(shape[1], device=device)
    running_var = torch.zeros(shape[1], device=device)
    xr = x.detach().clone().requires_grad_()
    # momentum 1 replaces the running statistics with the batch mean and unbiased variance.
    y = fused_batch_norm(xr, running_mean, running_var, None, None, True, 1.0, 1e-5)
    y.backward(grad_output)

    x64 = x.double().cpu().transpose(0, 1).reshape(shape[1], -1)
    mean64 = x64.mean(1)
    var64 = x64.var(1, unbiased=True)
    # E[x^2] - E[x]^2 in float32 is off by 1e5 to 1e6 float32 epsilons here (about 10% relative).
    # Sums of x - shift (a tile's mean) and split summaries merged relative to one shift keep every
    # path within a few epsilons, even with the split path's tiny 16-element tiles.
    float32_eps = torch.finfo(torch.float32).eps
    var_error = ((running_var.double().cpu() - var64).abs() / var64).max().item()
    assert var_error <= 8 * float32_eps, var_error / float32_eps
    mean_error = (running_mean.double().cpu() - mean64).abs().max().item()
    assert mean_error <= 4 * float32_eps * 1000, mean_error

    # Normalised values inherit the rounding of the float32 mean (one float32 ulp at 1000 is 6e-5,
    # a sum of a few hundred such values loses a few more), so they are held to 8 ulps of 1000.
    expected = reference(x, None, None, None, None, True, 1.0, 1e-5, grad_output)
    bound = 8 * float32_eps * 1000
    torch.testing.assert_close(y.double().cpu(), expected["y"], rtol=0, atol=bound)
    grad_bound = bound * float(grad_output.abs().max())
    torch.testing.assert_close(xr.grad.double().cpu(), expected["grad_input"], rtol=0, atol=grad_bound)
    launch_path.check()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_float64_momentum_and_eps_are_not_rounded(training, launch_path, device):
    """Triton passes Python floats as float32 unless told otherwise: momentum 0.1 and eps 0.1 (neither
    a float32 value) must reach the float64 statistics unrounded (rounded, the error was ~2e-8)."""
    shape = SHAPES[3]
    x, _ = make_input(shape, "contiguous", torch.float64, device, seed=300, offset=2.0)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float64, device, seed=301)
    rm, rv = running_mean.clone(), running_var.clone()
    y = fused_batch_norm(x, rm, rv, weight, bias, training, 0.1, 0.1)
    expected = reference(x, weight, bias, running_mean, running_var, training, 0.1, 0.1)
    for key, actual in (("y", y), ("running_mean", rm), ("running_var", rv)):
        assert actual.dtype == torch.float64
        torch.testing.assert_close(actual.cpu(), expected[key], rtol=1e-14, atol=1e-14, msg=key)
    launch_path.check()
