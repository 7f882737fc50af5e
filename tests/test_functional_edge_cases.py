"""Empty inputs, NaN and infinity: fusedbn does what torch does."""

import pytest
import torch
import torch.nn.functional as F
from helpers import KERNELS_ON_CPU, leaf, make_input, params_for

import fusedbn
from fusedbn import fused_batch_norm

# Every way of being empty: no batch, a zero-size spatial dim (in the middle and last), no channels.
EMPTY_SHAPES = [(0, 5), (0, 5, 3), (2, 3, 2, 0, 2), (1, 3, 0), (2, 3, 0, 4), (2, 0, 3)]


@pytest.mark.parametrize("epilogue", [None, "residual-relu"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
def test_empty_input_like_torch(shape, training, epilogue, device):
    """An empty output with torch's strides, the running statistics untouched, zero gradients for
    weight and bias and an empty one for the input."""
    num_channels = shape[1]
    generator = torch.Generator().manual_seed(120)
    weight, bias, running_mean, running_var = params_for(num_channels, torch.float32, device, seed=120)
    if num_channels == 0 and not (KERNELS_ON_CPU or device.type == "cuda"):
        # The torch path is torch's BatchNorm, which fails on zero channels with a weight.
        for fn in (fused_batch_norm, F.batch_norm):
            with pytest.raises(IndexError):
                fn(torch.empty(shape, device=device), running_mean.clone(), running_var.clone(),
                   weight, bias, training, 0.1, 1e-5)
        return
    results = {}
    for name in ("fused", "torch"):
        x = torch.empty(shape, device=device, requires_grad=True)
        residual = torch.empty(shape, device=device, requires_grad=True) if epilogue else None
        w, b = leaf(weight), leaf(bias)
        rm, rv = running_mean.clone(), running_var.clone()
        if name == "fused":
            y = fused_batch_norm(
                x, rm, rv, w, b, training, 0.1, 1e-5, residual=residual,
                activation="relu" if epilogue else None,
            )
        elif num_channels == 0:
            # torch's batch_norm fails on zero channels with a weight (IndexError); without
            # weight and bias it returns an empty output, which is what fusedbn returns.
            y = F.batch_norm(x, rm, rv, None, None, training, 0.1, 1e-5)
            y = y + (w.sum() + b.sum()) * 0
        else:
            y = F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
            if epilogue:
                y = F.relu(y + residual)
        y.backward(torch.randn(y.shape, generator=generator).to(device))
        results[name] = (y, x.grad, w.grad, b.grad, rm, rv)
    ours, theirs = results["fused"], results["torch"]
    assert ours[0].shape == theirs[0].shape and ours[0].dtype == theirs[0].dtype
    assert ours[0].stride() == theirs[0].stride()
    assert ours[1].shape == theirs[1].shape
    for actual, expected in zip(ours[2:], theirs[2:], strict=True):
        assert torch.equal(actual, expected)
    assert torch.equal(ours[4], running_mean) and torch.equal(ours[5], running_var)


def test_empty_batch_counts_in_module(device):
    """torch's module counts an empty batch in num_batches_tracked; so does fusedbn's."""
    ours, theirs = fusedbn.FusedBatchNorm2d(3).to(device), torch.nn.BatchNorm2d(3).to(device)
    x = torch.empty(0, 3, 2, 2, device=device)
    ours(x)
    theirs(x)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("input_dtype,module_dtype", [(torch.float64, torch.float32),
                                                      (torch.float32, torch.float64)], ids=str)
def test_empty_batch_of_another_dtype_than_the_module(input_dtype, module_dtype, training, device):
    """torch returns an empty output (of the input's dtype) and zero gradients for an empty batch
    before any dtype check; so does fusedbn (PyTorch's own test_nn tries a 0x3x2x2 float64 batch
    through a float32 BatchNorm2d)."""
    results = {}
    for name, cls in (("fused", fusedbn.FusedBatchNorm2d), ("torch", torch.nn.BatchNorm2d)):
        module = cls(3).to(device=device, dtype=module_dtype).train(training)
        x = torch.empty(0, 3, 2, 2, device=device, dtype=input_dtype, requires_grad=True)
        y = module(x)
        y.sum().backward()
        results[name] = (y, x.grad, module.weight.grad, module.bias.grad, module.state_dict())
    ours, theirs = results["fused"], results["torch"]
    for actual, expected in zip(ours[:4], theirs[:4], strict=True):
        assert actual.shape == expected.shape and actual.dtype == expected.dtype
        assert torch.equal(actual, expected)
    assert ours[0].dtype == input_dtype and not ours[2].any()
    for key, value in theirs[4].items():
        assert torch.equal(ours[4][key], value), key


def poisoned_input(shape, layout, value, device, seed):
    """Random input with ``value`` (NaN or inf) at one element of channel 1."""
    x, _ = make_input(shape, layout, torch.float64, device, seed=seed)
    with torch.no_grad():
        x[1, 1, 0, 1] = value
    return x


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_nan_and_inf_stay_in_their_channel(training, value, activation, launch_path, device):
    """Non-finite exactly where torch (float64) is non-finite, the same values elsewhere: nothing
    leaks into other channels, and a NaN channel's running statistics become NaN as in torch.

    Where torch has inf (the running mean of a channel holding inf), fusedbn may have NaN: its
    sums are taken relative to a shift that is itself infinite (see README's differences).
    """
    shape = (4, 3, 3, 5)
    x = poisoned_input(shape, "channels_last", value, device, seed=310)
    grad_output, _ = make_input(shape, "contiguous", torch.float64, device, seed=311)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float64, device, seed=312)
    if not training:
        running_var[2] = value  # a non-finite running statistic in eval, in another channel
    results = {}
    for name in ("fused", "torch"):
        xi = leaf(x)
        w, b = leaf(weight), leaf(bias)
        rm, rv = running_mean.clone(), running_var.clone()
        if name == "fused":
            y = fused_batch_norm(xi, rm, rv, w, b, training, 0.1, 1e-5, activation=activation)
        else:
            y = F.batch_norm(xi, rm, rv, w, b, training, 0.1, 1e-5)
            y = F.relu(y) if activation else y
        y.backward(grad_output)
        results[name] = {"y": y, "grad_input": xi.grad, "grad_weight": w.grad,
                         "grad_bias": b.grad, "running_mean": rm, "running_var": rv}
    for key, expected in results["torch"].items():
        actual = results["fused"][key]
        assert torch.equal(actual.isfinite(), expected.isfinite()), key
        assert not (expected.isnan() & ~actual.isnan()).any(), key
        finite = expected.isfinite()
        torch.testing.assert_close(actual[finite], expected[finite], rtol=1e-9, atol=1e-9, msg=key)
        if key == "running_var" and training and value != value:
            assert actual[1].isnan()
    launch_path.check()


@pytest.mark.parametrize(
    "dtype, value",
    [(torch.float16, float("inf")), (torch.bfloat16, float("nan")), (torch.float32, float("nan")),
     (torch.float64, float("inf"))],
    ids=str,
)
def test_nonfinite_gradient_where_the_relu_is_off_stays_out(dtype, value, launch_path, device,
                                                             assert_close):
    """An upstream gradient that is NaN or infinite where the fused ReLU output 0 contributes
    nothing, as in torch's ReLU backward: every gradient stays finite and equals torch's."""
    shape = (4, 3, 3, 5)
    x, _ = make_input(shape, "contiguous", dtype, device, seed=320)
    grad_output, _ = make_input(shape, "contiguous", dtype, device, seed=321)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    weight, bias, running_mean, running_var = params_for(shape[1], param_dtype, device, seed=322)
    results = {}
    for name in ("fused", "torch"):
        xi, w, b = leaf(x), leaf(weight), leaf(bias)
        rm, rv = running_mean.clone(), running_var.clone()
        if name == "fused":
            y = fused_batch_norm(xi, rm, rv, w, b, True, 0.1, 1e-5, activation="relu")
        else:
            y = F.relu(F.batch_norm(xi.to(param_dtype), rm, rv, w, b, True, 0.1, 1e-5)).to(dtype)
        off = (y == 0).detach()
        assert off.any(dim=(0, 2, 3)).all(), "every channel needs a zeroed output"
        y.backward(torch.where(off, torch.full_like(grad_output, value), grad_output))
        results[name] = (xi.grad, w.grad, b.grad)
    for ours, theirs in zip(results["fused"], results["torch"], strict=True):
        assert ours.isfinite().all()
        assert_close(ours, theirs.to(ours.dtype), dtype=dtype)
    launch_path.check()
