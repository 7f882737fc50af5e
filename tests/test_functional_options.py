"""Running statistics over several steps, momentum None, affine False, no running statistics, and
which inputs need gradients."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    SHAPES,
    check_float32_step,
    make_input,
    params_for,
    reference,
)

from fusedbn import fused_batch_norm


@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
def test_running_stats_over_steps(momentum, launch_path, device, assert_close):
    shape = SHAPES[3]
    _, _, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=21)
    ours_mean, ours_var = running_mean.clone(), running_var.clone()
    torch_mean, torch_var = running_mean.clone(), running_var.clone()
    ref_mean, ref_var = running_mean.double().cpu(), running_var.double().cpu()
    num_batches_tracked = torch.tensor(0, dtype=torch.long, device=device)
    for step in range(1, 4):
        x, _ = make_input(shape, "contiguous", torch.float32, device, seed=30 + step, offset=step)
        fused_batch_norm(
            x, ours_mean, ours_var, None, None, True, momentum, 1e-5,
            num_batches_tracked=num_batches_tracked,
        )
        assert int(num_batches_tracked) == step
        factor = 1.0 / step if momentum is None else momentum
        F.batch_norm(x, torch_mean, torch_var, None, None, True, factor, 1e-5)
        expected = reference(x, None, None, ref_mean, ref_var, True, factor, 1e-5)
        ref_mean, ref_var = expected["running_mean"], expected["running_var"]
        assert_close(ours_mean, ref_mean, msg=f"step {step} running_mean vs float64")
        assert_close(ours_var, ref_var, msg=f"step {step} running_var vs float64")
        assert_close(ours_mean, torch_mean, msg=f"step {step} running_mean vs torch")
        assert_close(ours_var, torch_var, msg=f"step {step} running_var vs torch")
    launch_path.check()


def test_momentum_none_is_cumulative_average(device, assert_close):
    """With momentum None the running statistics are the plain average of the batch statistics."""
    shape = SHAPES[2]
    running_mean = torch.zeros(shape[1], device=device)
    running_var = torch.ones(shape[1], device=device)
    num_batches_tracked = torch.tensor(0, dtype=torch.long, device=device)
    means, variances = [], []
    for step in range(4):
        x, _ = make_input(shape, "contiguous", torch.float32, device, seed=40 + step, offset=2 * step)
        fused_batch_norm(
            x, running_mean, running_var, None, None, True, None, 1e-5,
            num_batches_tracked=num_batches_tracked,
        )
        means.append(x.double().mean(0))
        variances.append(x.double().var(0, unbiased=True))
    assert int(num_batches_tracked) == 4
    assert_close(running_mean, torch.stack(means).mean(0))
    assert_close(running_var, torch.stack(variances).mean(0))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_affine_false(training, launch_path, device, assert_close):
    shape = SHAPES[4]
    x, _ = make_input(shape, "channels_last", torch.float32, device, seed=50)
    grad_output, _ = make_input(shape, "contiguous", torch.float32, device, seed=51)
    _, _, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=52)
    check_float32_step(x, None, None, running_mean, running_var, training, grad_output, assert_close)
    launch_path.check()


@pytest.mark.parametrize("affine", [True, False])
def test_training_without_running_stats(affine, launch_path, device, assert_close):
    shape = SHAPES[5]
    x, _ = make_input(shape, "channels_last_3d", torch.float32, device, seed=60)
    grad_output, _ = make_input(shape, "contiguous", torch.float32, device, seed=61)
    weight, bias, _, _ = params_for(shape[1], torch.float32, device, seed=62, affine=affine)
    check_float32_step(
        x, weight, bias, None, None, True, grad_output, assert_close,
        keys=("y", "grad_input", "grad_weight", "grad_bias"),
    )
    launch_path.check()


def test_only_weight_requires_grad(device, assert_close):
    """Gradients for parameters when the input does not need one (frozen earlier layers)."""
    shape = SHAPES[4]
    x, _ = make_input(shape, "contiguous", torch.float32, device, seed=65)
    grad_output, _ = make_input(shape, "contiguous", torch.float32, device, seed=66)
    weight, bias, _, _ = params_for(shape[1], torch.float32, device, seed=67)
    weight.requires_grad_()
    y = fused_batch_norm(x, None, None, weight, bias, True)
    y.backward(grad_output)
    expected = reference(x, weight, bias, None, None, True, 0.1, 1e-5, grad_output)
    assert_close(weight.grad, expected["grad_weight"])
    assert x.grad is None and bias.grad is None
