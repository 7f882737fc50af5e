"""fusedbn.fused_batch_norm against torch.nn.functional.batch_norm and a float64 reference.

The reference is written here from BatchNorm's definition in float64 (its gradients come from autograd
through that definition); where torch and the reference disagree, the reference is the truth.
"""

import math
import types

import pytest
import torch
import torch.nn.functional as F

from fusedbn import fused_batch_norm
from fusedbn.kernels import backward as backward_kernels
from fusedbn.kernels import forward as forward_kernels

HALF_DTYPES = (torch.float16, torch.bfloat16)

# One shape per supported rank; none of the sizes is a power of two, and with the split limits they
# give partial last tiles along both reduction dims.
SHAPES = {
    2: (37, 5),
    3: (9, 5, 3),
    4: (3, 5, 7, 6),
    5: (2, 3, 3, 5, 4),
}


# ----------------------------------------------------------------------------------------------
# Inputs in every layout
# ----------------------------------------------------------------------------------------------


def make_input(shape, layout, dtype, device, seed, offset=0.0, scale=1.0):
    """A tensor of ``shape`` laid out in memory as ``layout``, holding seeded randn * scale + offset.

    Returns (tensor, storage), where storage is the tensor the view lives in (to check that nothing
    outside the view is read or written).
    """
    dims = len(shape)
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset
    values = values.to(dtype)
    if layout == "contiguous":
        storage = torch.empty(shape, dtype=dtype, device=device)
        x = storage
    elif layout == "channels_last":
        storage = torch.empty(shape, dtype=dtype, device=device).to(memory_format=torch.channels_last)
        x = storage
    elif layout == "channels_last_3d":
        storage = torch.empty(shape, dtype=dtype, device=device).to(
            memory_format=torch.channels_last_3d
        )
        x = storage
    elif layout == "sliced":
        # Every other batch entry and every other element of the last dim: a non-dense view whose
        # reduction dims still fold into two strides.
        big = (2 * shape[0],) + tuple(shape[1:-1]) + (2 * shape[-1],)
        storage = torch.full(big, float("nan"), dtype=dtype, device=device)
        x = storage[::2, ..., ::2]
    elif layout == "transposed":
        # The last two dims swapped in memory (for (N, C): channels outermost).
        swapped = list(shape)
        swapped[-1], swapped[-2] = swapped[-2], swapped[-1]
        storage = torch.empty(swapped, dtype=dtype, device=device)
        x = storage.transpose(-1, -2)
    elif layout == "nan_padded":
        # A view into a NaN-filled tensor with extra batch entries and channels around it: reading as
        # if the view were contiguous picks up NaN.
        big = (shape[0] + 2, shape[1] + 3) + tuple(shape[2:])
        storage = torch.full(big, float("nan"), dtype=dtype, device=device)
        x = storage[1:-1, 1:-2]
    elif layout == "nan_padded_channels_last":
        big = (shape[0] + 2, shape[1] + 3) + tuple(shape[2:])
        storage = torch.full(big, float("nan"), dtype=dtype, device=device).to(
            memory_format=torch.channels_last
        )
        x = storage[1:-1, 1:-2]
    elif layout == "nan_padded_spatial":
        # Padding around the spatial dims too: three strides are needed, so fusedbn copies the input.
        big = (shape[0], shape[1]) + tuple(s + 2 for s in shape[2:])
        storage = torch.full(big, float("nan"), dtype=dtype, device=device)
        x = storage[:, :, 1:-1, 1:-1]
    elif layout == "cropped_channels_last":
        # A spatial crop of a channels_last (3d) tensor: fusedbn copies it, keeping channels_last.
        big = (shape[0], shape[1]) + tuple(s + 2 for s in shape[2:])
        memory_format = torch.channels_last if dims == 4 else torch.channels_last_3d
        storage = torch.full(big, float("nan"), dtype=dtype, device=device).to(
            memory_format=memory_format
        )
        x = storage[(slice(None), slice(None)) + (slice(1, -1),) * (dims - 2)]
    else:
        raise AssertionError(layout)
    assert x.shape == torch.Size(shape), (layout, x.shape, shape)
    with torch.no_grad():
        x.copy_(values)
    return x, storage


# (rank, layout) pairs run by the layout tests.
LAYOUT_CASES = [
    (2, "contiguous"),
    (3, "contiguous"),
    (4, "contiguous"),
    (5, "contiguous"),
    (4, "channels_last"),
    (5, "channels_last_3d"),
    (2, "sliced"),
    (3, "sliced"),
    (4, "sliced"),
    (5, "sliced"),
    (2, "transposed"),
    (3, "transposed"),
    (4, "transposed"),
    (2, "nan_padded"),
    (3, "nan_padded"),
    (4, "nan_padded"),
    (5, "nan_padded"),
    (4, "nan_padded_channels_last"),
    (4, "nan_padded_spatial"),
    (5, "cropped_channels_last"),
]


def params_for(num_channels, dtype, device, seed, affine=True):
    """Random weight, bias and running statistics for ``num_channels`` channels in ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.rand(num_channels, generator=generator, dtype=torch.float64) + 0.5).to(dtype)
    bias = torch.randn(num_channels, generator=generator, dtype=torch.float64).to(dtype)
    running_mean = torch.randn(num_channels, generator=generator, dtype=torch.float64).to(dtype)
    running_var = (torch.rand(num_channels, generator=generator, dtype=torch.float64) + 0.5).to(dtype)
    tensors = [weight.to(device), bias.to(device), running_mean.to(device), running_var.to(device)]
    if not affine:
        tensors[0] = tensors[1] = None
    return tensors


# ----------------------------------------------------------------------------------------------
# The float64 reference
# ----------------------------------------------------------------------------------------------


def reference(x, weight, bias, running_mean, running_var, training, factor, eps, grad_output=None):
    """BatchNorm in float64 from its definition.

    Returns dict(y, grad_input, grad_weight, grad_bias, running_mean, running_var); ``factor`` is the
    averaging factor for the running statistics (momentum, or 1/num_batches_tracked).
    """
    x64 = x.detach().double().cpu().requires_grad_()
    w64 = None if weight is None else weight.detach().double().cpu().requires_grad_()
    b64 = None if bias is None else bias.detach().double().cpu().requires_grad_()
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    n = x.numel() // x.shape[1]
    if training:
        mean = x64.mean(dim=dims, keepdim=True)
        var = ((x64 - mean) ** 2).mean(dim=dims, keepdim=True)
    else:
        mean = running_mean.detach().double().cpu().view(shape)
        var = running_var.detach().double().cpu().view(shape)
    y = (x64 - mean) / torch.sqrt(var + eps)
    if w64 is not None:
        y = y * w64.view(shape)
    if b64 is not None:
        y = y + b64.view(shape)
    result = {"y": y.detach()}
    if grad_output is not None:
        y.backward(grad_output.detach().double().cpu())
        result["grad_input"] = x64.grad
        result["grad_weight"] = None if w64 is None else w64.grad
        result["grad_bias"] = None if b64 is None else b64.grad
    if running_mean is not None:
        rm = running_mean.detach().double().cpu()
        rv = running_var.detach().double().cpu()
        if training:
            batch_mean = mean.detach().flatten()
            unbiased = var.detach().flatten() * n / (n - 1)
            rm = (1 - factor) * rm + factor * batch_mean
            rv = (1 - factor) * rv + factor * unbiased
        result["running_mean"] = rm
        result["running_var"] = rv
    return result


def clone_or_none(t):
    return None if t is None else t.detach().clone()


def leaf(t):
    return None if t is None else t.detach().clone().requires_grad_()


def run_both(x, weight, bias, running_mean, running_var, training, momentum, eps, grad_output):
    """fused_batch_norm and F.batch_norm on separate copies of the same state, with backward."""
    results = {}
    for name, fn in (("fused", fused_batch_norm), ("torch", F.batch_norm)):
        # detach() shares x's memory and strides: the fused call reads x itself.
        xi = x.detach() if name == "fused" else x.detach().clone(memory_format=torch.preserve_format)
        xi.requires_grad_()
        w, b = leaf(weight), leaf(bias)
        rm, rv = clone_or_none(running_mean), clone_or_none(running_var)
        y = fn(xi, rm, rv, w, b, training, momentum, eps)
        y.backward(grad_output)
        results[name] = {
            "y": y.detach(),
            "grad_input": xi.grad,
            "grad_weight": None if w is None else w.grad,
            "grad_bias": None if b is None else b.grad,
            "running_mean": rm,
            "running_var": rv,
        }
    return results["fused"], results["torch"]


def compare(result, expected, dtype, assert_close, keys, what):
    for key in keys:
        actual, ref = result[key], expected[key]
        if ref is None:
            assert actual is None, f"{what} {key}: expected None"
            continue
        check_dtype = actual.dtype if actual.dtype in (torch.float16, torch.bfloat16) else dtype
        assert_close(actual, ref, dtype=check_dtype, msg=f"{what} {key}")


ALL_KEYS = ("y", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var")


def check_float32_step(x, weight, bias, running_mean, running_var, training, grad_output, assert_close,
                       keys=ALL_KEYS):
    """One float32 step (momentum 0.1, eps 1e-5) compared with the float64 reference and with torch.

    Returns fusedbn's results.
    """
    fused, torch_result = run_both(
        x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, grad_output
    )
    expected = reference(x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, grad_output)
    compare(fused, expected, torch.float32, assert_close, keys, "vs float64")
    compare(fused, torch_result, torch.float32, assert_close, keys, "vs torch")
    return fused


# ----------------------------------------------------------------------------------------------
# Outputs, gradients and running statistics in every layout, on both launch paths
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank,layout", LAYOUT_CASES, ids=[f"{r}d-{lay}" for r, lay in LAYOUT_CASES])
def test_training_step_every_layout(rank, layout, launch_path, device, assert_close):
    shape = SHAPES[rank]
    x, storage = make_input(shape, layout, torch.float32, device, seed=rank)
    storage_before = storage.clone()
    grad_output, _ = make_input(shape, layout, torch.float32, device, seed=100 + rank)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=rank)

    fused = check_float32_step(
        x, weight, bias, running_mean, running_var, True, grad_output, assert_close
    )
    assert fused["y"].device == x.device and fused["grad_input"].device == x.device
    # The input, and the memory around the view, are left exactly as they were.
    assert torch.equal(storage.isnan(), storage_before.isnan())
    assert torch.equal(storage.nan_to_num(), storage_before.nan_to_num())
    launch_path.check()


@pytest.mark.parametrize(
    "rank,layout",
    [(2, "contiguous"), (4, "channels_last"), (3, "sliced"), (4, "nan_padded"), (5, "transposed")],
)
def test_eval_uses_running_stats(rank, layout, launch_path, device, assert_close):
    shape = SHAPES[rank]
    x, storage = make_input(shape, layout, torch.float32, device, seed=7)
    storage_before = storage.clone()
    grad_output, _ = make_input(shape, layout, torch.float32, device, seed=8)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=9)

    fused = check_float32_step(
        x, weight, bias, running_mean, running_var, False, grad_output, assert_close
    )
    # Eval leaves the running statistics bitwise untouched.
    assert torch.equal(fused["running_mean"], running_mean)
    assert torch.equal(fused["running_var"], running_var)
    assert torch.equal(storage.nan_to_num(), storage_before.nan_to_num())
    launch_path.check()


LAYOUT_FOR_FORMAT = [
    (2, "contiguous"),
    (3, "contiguous"),
    (4, "contiguous"),
    (5, "contiguous"),
    (4, "channels_last"),
    (5, "channels_last_3d"),
    (3, "sliced"),
    (4, "sliced"),
    (4, "nan_padded"),
    (4, "nan_padded_channels_last"),
    (4, "nan_padded_spatial"),
    (4, "cropped_channels_last"),
    (5, "cropped_channels_last"),
    pytest.param(
        4,
        "transposed",
        marks=pytest.mark.xfail(
            not torch.cuda.is_available(),
            strict=True,
            reason="fusedbn keeps a dense input's exact strides for the output (empty_like), as "
            "torch does on CUDA; torch on the CPU returns a contiguous output for dense inputs that "
            "are neither contiguous nor channels_last",
        ),
    ),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("rank,layout", LAYOUT_FOR_FORMAT)
def test_output_dtype_and_strides_match_torch(rank, layout, training, device):
    shape = SHAPES[rank]
    x, _ = make_input(shape, layout, torch.float32, device, seed=3)
    _, _, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=3)
    ours = fused_batch_norm(x, running_mean.clone(), running_var.clone(), training=training)
    theirs = F.batch_norm(x, running_mean.clone(), running_var.clone(), training=training)
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    assert ours.stride() == theirs.stride()


# ----------------------------------------------------------------------------------------------
# Dtypes: half input with fp32 parameters (autocast), all-half, float64
# ----------------------------------------------------------------------------------------------


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
    keys = ALL_KEYS
    if dtype == torch.float64 and training:
        # Triton passes the Python float momentum to the kernel as float32, so float64 running
        # statistics are updated with 1 - momentum rounded to float32 (relative error ~2e-8).
        keys = ALL_KEYS[:4]
        for key in ("running_mean", "running_var"):
            torch.testing.assert_close(
                fused[key].double().cpu(), expected[key], rtol=1e-7, atol=1e-7, msg=key
            )
    compare(fused, expected, dtype, assert_close, keys, "vs float64")
    compare(fused, torch_result, dtype, assert_close, keys, "vs torch")
    launch_path.check()


# ----------------------------------------------------------------------------------------------
# Running statistics over several steps, momentum None, affine False, no running statistics
# ----------------------------------------------------------------------------------------------


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


def test_expanded_upstream_gradient(launch_path, device, assert_close):
    """y.sum().backward() hands the backward a gradient whose strides are all 0."""
    shape = SHAPES[4]
    x, _ = make_input(shape, "channels_last", torch.float32, device, seed=68)
    weight, bias, _, _ = params_for(shape[1], torch.float32, device, seed=69)
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    per_channel = torch.randn(1, shape[1], 1, 1, generator=torch.Generator().manual_seed(70))
    grad_output = per_channel.to(device).expand(shape)
    assert grad_output.stride() == (0, 1, 0, 0)
    fused_batch_norm(x, None, None, weight, bias, True).backward(grad_output)
    expected = reference(x, weight, bias, None, None, True, 0.1, 1e-5, grad_output)
    assert_close(x.grad, expected["grad_input"], scale=1.0)
    assert_close(weight.grad, expected["grad_weight"], scale=1.0)
    assert_close(bias.grad, expected["grad_bias"])
    launch_path.check()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_strided_parameters_and_running_stats(training, launch_path, device, assert_close):
    """weight, bias and running statistics that are strided views (every other element)."""
    shape = SHAPES[3]
    x, _ = make_input(shape, "contiguous", torch.float32, device, seed=72)
    grad_output, _ = make_input(shape, "contiguous", torch.float32, device, seed=73)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=74)
    storages = {}
    for name, t in (("weight", weight), ("bias", bias), ("rm", running_mean), ("rv", running_var)):
        storage = torch.full((2 * shape[1],), 7.0, device=device)
        storage[::2] = t
        storages[name] = storage
    w = storages["weight"][::2].requires_grad_()
    b = storages["bias"][::2].requires_grad_()
    rm, rv = storages["rm"][::2], storages["rv"][::2]
    assert not rm.is_contiguous()
    xr = x.detach().requires_grad_()
    y = fused_batch_norm(xr, rm, rv, w, b, training, 0.1, 1e-5)
    y.backward(grad_output)
    expected = reference(x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, grad_output)
    assert_close(y, expected["y"], msg="y")
    assert_close(xr.grad, expected["grad_input"], msg="grad_input")
    assert_close(w.grad, expected["grad_weight"], msg="grad_weight")
    assert_close(b.grad, expected["grad_bias"], msg="grad_bias")
    assert_close(rm, expected["running_mean"], msg="running_mean")
    assert_close(rv, expected["running_var"], msg="running_var")
    for name, storage in storages.items():
        assert torch.all(storage[1::2] == 7.0), f"{name}: elements between the view's were written"
    launch_path.check()


# ----------------------------------------------------------------------------------------------
# Offset data: the variance of 1000 + randn in float32
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Determinism, poisoned buffers, gradcheck
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Fused epilogue: relu(batch_norm(x) + residual) against torch's ops, one after the other
# ----------------------------------------------------------------------------------------------

EPILOGUES = {"residual": (True, None), "relu": (False, "relu"), "residual-relu": (True, "relu")}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize(
    "dtype,layout",
    [(torch.float32, "contiguous"), (torch.bfloat16, "channels_last"), (torch.float16, "sliced")],
)
def test_fused_epilogue_matches_torch_ops(
    dtype, layout, epilogue, training, launch_path, device, assert_close
):
    """Outputs, the gradients of input, weight, bias and residual, and the running statistics.

    torch runs in float32 on the same (upcast) values, so a half-precision result differs from it only
    by the rounding of the output dtype, and the ReLU masks agree.
    """
    shape = SHAPES[4]
    with_residual, activation = EPILOGUES[epilogue]
    x, _ = make_input(shape, layout, dtype, device, seed=200)
    residual = make_input(shape, "contiguous", dtype, device, seed=201)[0] if with_residual else None
    grad_output, _ = make_input(shape, "contiguous", dtype, device, seed=202)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=203)

    results = {}
    for name in ("fused", "torch"):
        # detach() keeps x's memory and strides for the fused call; torch gets float32 copies.
        xi = x.detach() if name == "fused" else x.detach().float()
        ri = None if residual is None else residual.detach().clone()
        if name == "torch" and ri is not None:
            ri = ri.float()
        xi.requires_grad_()
        if ri is not None:
            ri.requires_grad_()
        w, b = leaf(weight), leaf(bias)
        rm, rv = clone_or_none(running_mean), clone_or_none(running_var)
        if name == "fused":
            y = fused_batch_norm(
                xi, rm, rv, w, b, training, 0.1, 1e-5, residual=ri, activation=activation
            )
            y.backward(grad_output)
        else:
            y = F.batch_norm(xi, rm, rv, w, b, training, 0.1, 1e-5)
            if ri is not None:
                y = y + ri
            if activation == "relu":
                y = F.relu(y)
            y.backward(grad_output.float())
        results[name] = {
            "y": y.detach(),
            "grad_input": xi.grad,
            "grad_weight": w.grad,
            "grad_bias": b.grad,
            "grad_residual": None if ri is None else ri.grad,
            "running_mean": rm,
            "running_var": rv,
        }
    fused = results["fused"]
    assert fused["y"].dtype == dtype
    if layout != "sliced":  # a non-dense input gets a contiguous output, as in torch
        assert fused["y"].stride() == x.stride()
    if activation == "relu":
        assert (fused["y"] >= 0).all()
    compare(fused, results["torch"], torch.float32, assert_close, ALL_KEYS + ("grad_residual",),
            f"{epilogue} vs torch")
    launch_path.check()


def test_unknown_activation_and_bad_residual_are_rejected(device):
    state = _state(device)
    x = state.pop("input")
    nbt = state.pop("num_batches_tracked")
    before = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    nbt_before = nbt.clone()
    with pytest.raises(ValueError, match="activation"):
        fused_batch_norm(x, **state, num_batches_tracked=nbt, activation="gelu")
    with pytest.raises(RuntimeError, match="residual"):
        fused_batch_norm(x, **state, num_batches_tracked=nbt, residual=x[:, :2])
    for key, value in before.items():
        assert torch.equal(state[key], value), f"{key} changed by a rejected call"
    assert torch.equal(nbt, nbt_before)


# ----------------------------------------------------------------------------------------------
# Bad input: the error torch raises, and nothing changes
# ----------------------------------------------------------------------------------------------


def _state(device):
    shape = SHAPES[4]
    x, _ = make_input(shape, "contiguous", torch.float32, device, seed=99)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=98)
    num_batches_tracked = torch.tensor(5, dtype=torch.long, device=device)
    return dict(
        input=x,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
        training=True,
        momentum=0.1,
        eps=1e-5,
        num_batches_tracked=num_batches_tracked,
    )


BAD_CALLS = {
    "1d-input": (ValueError, r"dim", lambda s: s.update(input=s["input"][0, 0, 0])),
    "channel-mismatch-weight": (RuntimeError, r"weight", lambda s: s.update(weight=s["weight"][:4])),
    "channel-mismatch-bias": (RuntimeError, r"bias", lambda s: s.update(bias=torch.cat([s["bias"]] * 2))),
    "channel-mismatch-running-mean": (
        RuntimeError, r"running_mean", lambda s: s.update(running_mean=s["running_mean"][:3])
    ),
    "channel-mismatch-running-var": (
        RuntimeError, r"running_var", lambda s: s.update(running_var=s["running_var"][:3])
    ),
    "one-value-per-channel-2d": (
        ValueError, r"more than 1 value per channel", lambda s: s.update(input=s["input"][:1, :, 0, 0])
    ),
    "one-value-per-channel-4d": (
        ValueError, r"more than 1 value per channel", lambda s: s.update(input=s["input"][:1, :, :1, :1])
    ),
    "eps-zero": (ValueError, r"eps", lambda s: s.update(eps=0.0)),
    "eps-negative": (ValueError, r"eps", lambda s: s.update(eps=-1e-5)),
    "integer-input": (TypeError, r"int64|Long|long", lambda s: s.update(input=s["input"].long())),
    "integer-input-int32": (TypeError, r"int32|Int", lambda s: s.update(input=s["input"].int())),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_rejected_call_raises_and_changes_nothing(case, device):
    error, pattern, corrupt = BAD_CALLS[case]
    state = _state(device)
    corrupt(state)
    before = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    x = state.pop("input")
    nbt = state.pop("num_batches_tracked")
    with pytest.raises(error, match=pattern):
        fused_batch_norm(x, **state, num_batches_tracked=nbt)
    state.update(input=x, num_batches_tracked=nbt)
    for key, value in before.items():
        assert torch.equal(state[key], value), f"{key} changed by a rejected call"


def test_eval_accepts_zero_eps_and_single_value(device, assert_close):
    """eps 0 and one value per channel are only errors in training (torch accepts them in eval)."""
    x, _ = make_input((1, 5), "contiguous", torch.float32, device, seed=110)
    weight, bias, running_mean, running_var = params_for(5, torch.float32, device, seed=111)
    y = fused_batch_norm(x, running_mean, running_var, weight, bias, False, 0.1, 0.0)
    expected = reference(x, weight, bias, running_mean, running_var, False, 0.1, 0.0)
    assert_close(y, expected["y"])
    try:
        theirs = F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.1, 0.0)
    except ValueError:
        return  # torch before 2.13 rejects eps <= 0 in eval too
    assert_close(y, theirs)


def test_empty_batch_like_torch(device):
    """torch returns an empty output for an empty batch in training and leaves the statistics."""
    x = torch.empty(0, 5, 3, device=device)
    weight, bias, running_mean, running_var = params_for(5, torch.float32, device, seed=120)
    ours_mean, ours_var = running_mean.clone(), running_var.clone()
    ours = fused_batch_norm(x, ours_mean, ours_var, weight, bias, True)
    theirs = F.batch_norm(x, running_mean.clone(), running_var.clone(), weight, bias, True)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.equal(ours_mean, running_mean) and torch.equal(ours_var, running_var)


@pytest.mark.cuda
@pytest.mark.parametrize("which", ["weight", "running_mean", "input"])
def test_tensors_on_different_devices(which):
    state = _state(torch.device("cuda"))
    state[which] = state[which].cpu()
    before = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    x = state.pop("input")
    nbt = state.pop("num_batches_tracked")
    with pytest.raises(RuntimeError, match="device"):
        fused_batch_norm(x, **state, num_batches_tracked=nbt)
    state.update(input=x, num_batches_tracked=nbt)
    for key, value in before.items():
        assert torch.equal(state[key].cpu(), value.cpu()), f"{key} changed by a rejected call"


def test_reference_is_not_trivial():
    """The float64 reference itself agrees with torch in float64 (so a bug in it cannot hide one)."""
    x = torch.randn(7, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w, b = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    dy = torch.randn_like(x)
    expected = reference(x, w, b, rm, rv, True, 0.3, 1e-5, dy)
    xt, wt, bt = leaf(x), leaf(w), leaf(b)
    rmt, rvt = rm.clone(), rv.clone()
    F.batch_norm(xt, rmt, rvt, wt, bt, True, 0.3, 1e-5).backward(dy)
    for actual, key in ((xt.grad, "grad_input"), (wt.grad, "grad_weight"), (bt.grad, "grad_bias")):
        torch.testing.assert_close(actual, expected[key])
    torch.testing.assert_close(rmt, expected["running_mean"])
    torch.testing.assert_close(rvt, expected["running_var"])
    assert not math.isclose(float(expected["grad_input"].abs().max()), 0.0)
