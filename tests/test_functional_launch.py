"""Determinism, every output element written, and gradcheck, on every launch path."""

import types

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
from fusedbn.kernels import backward as backward_kernels
from fusedbn.kernels import forward as forward_kernels
from fusedbn.kernels.launcher import KernelLauncher


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bitwise_deterministic(layout, launch_path, device):
    shape = SHAPES[4]
    x, _ = make_input(shape, layout, torch.float32, device, seed=80, offset=3.0)
    grad_output, _ = make_input(shape, "contiguous", torch.float32, device, seed=81)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=82)
    runs = [
        run_both(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, grad_output)[0]
        for _ in range(2)
    ]
    for key in ALL_KEYS:
        assert torch.equal(runs[0][key], runs[1][key]), key
    launch_path.check()


class _PoisonedTorch(types.SimpleNamespace):
    """Stands in for the ``torch`` module inside the launchers: new float buffers start as NaN."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))


@pytest.mark.kernels
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_output_element_is_written(training, launch_path, monkeypatch, device, assert_close):
    """Outputs, statistics and partial buffers start as NaN: any element left unwritten shows up."""
    monkeypatch.setattr(forward_kernels, "torch", _PoisonedTorch())
    monkeypatch.setattr(backward_kernels, "torch", _PoisonedTorch())
    shape = SHAPES[4]
    x, _ = make_input(shape, "channels_last", torch.float32, device, seed=90)
    grad_output, _ = make_input(shape, "contiguous", torch.float32, device, seed=91)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=92)
    fused, _ = run_both(x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, grad_output)
    expected = reference(x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, grad_output)
    for key in ALL_KEYS:
        assert torch.isfinite(fused[key]).all(), key
    compare(fused, expected, torch.float32, assert_close, ALL_KEYS, "vs float64")
    launch_path.check()


# Shapes small enough for gradcheck's many forward calls; the second one is past SPLIT_LIMITS.
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck(layout, training, launch_path, device):
    shape = (3, 2, 3, 2) if not launch_path.split else (5, 3, 3, 2)
    x, _ = make_input(shape, layout, torch.float64, device, seed=95)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float64, device, seed=96)
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    if training:
        running_mean = running_var = None

    def fn(x, weight, bias):
        return fused_batch_norm(x, running_mean, running_var, weight, bias, training, 0.1, 1e-3)

    assert torch.autograd.gradcheck(fn, (x, weight, bias), fast_mode=launch_path.split)
    launch_path.check()


@pytest.mark.parametrize(
    "dtype,param_dtype",
    [(torch.float32, torch.float32), (torch.float16, torch.float32), (torch.float16, torch.float16)],
    ids=str,
)
def test_eval_without_autograd(dtype, param_dtype, launch_path, monkeypatch, device, assert_close):
    """Inference (no_grad, eval): every output element is written, from running statistics of the
    statistics' dtype or of another (half) one, and the output needs no gradient."""
    monkeypatch.setattr(forward_kernels, "torch", _PoisonedTorch())
    shape = SHAPES[4]
    x, _ = make_input(shape, "channels_last", dtype, device, seed=97)
    weight, bias, running_mean, running_var = params_for(shape[1], param_dtype, device, seed=98)
    with torch.no_grad():
        y = fused_batch_norm(x, running_mean, running_var, weight, bias, False, 0.1, 1e-5)
    expected = reference(x, weight, bias, running_mean, running_var, False, 0.1, 1e-5)
    assert y.grad_fn is None and y.dtype == dtype and torch.isfinite(y).all()
    assert_close(y, expected["y"].to(dtype), dtype=dtype)
    launch_path.check()


# Kernel launches per direction: the split path finalizes in its partials kernel (tickets.py).
LAUNCHES = {
    ("single", True): (["whole_channel_forward_kernel"], ["whole_channel_backward_kernel"]),
    ("whole", True): (["whole_channel_forward_kernel"], ["whole_channel_backward_kernel"]),
    ("split", True): (
        ["partial_moments_kernel", "apply_kernel"], ["partial_sums_kernel", "grad_input_kernel"]
    ),
    # Eval: one elementwise pass forward; backward sums dy and dy * xhat for grad_weight and
    # grad_bias, then writes grad_input (one launch on the whole-channel paths).
    ("single", False): (["apply_kernel"], ["whole_channel_backward_kernel"]),
    ("whole", False): (["apply_kernel"], ["whole_channel_backward_kernel"]),
    ("split", False): (["apply_kernel"], ["partial_sums_kernel", "grad_input_kernel"]),
}


@pytest.mark.kernels
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_launches_per_direction(training, launch_path, monkeypatch, device):
    launched = []
    original = KernelLauncher.__call__

    def recording_call(self, grid, *args, **kwargs):
        launched.append(self.kernel.fn.__name__)
        original(self, grid, *args, **kwargs)

    monkeypatch.setattr(KernelLauncher, "__call__", recording_call)
    shape = SHAPES[4]
    x, _ = make_input(shape, "contiguous", torch.float32, device, seed=70, offset=2.0)
    grad_output, _ = make_input(shape, "contiguous", torch.float32, device, seed=71)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=72)
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    y = fused_batch_norm(x, running_mean, running_var, weight, bias, training, 0.1, 1e-5)
    forward_launches = list(launched)
    y.backward(grad_output)
    expected_forward, expected_backward = LAUNCHES[launch_path.name, training]
    assert forward_launches == expected_forward
    assert launched[len(forward_launches):] == expected_backward
    launch_path.check()
