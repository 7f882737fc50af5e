"""Helpers shared by fusedbn's tests; test modules import them (``from helpers import ...``).

Tolerances per dtype, the launch paths a test can force, inputs in every memory layout, the float64
reference of BatchNorm and the comparison of a step with torch, and starting fusedbn's commands.
conftest.py holds the suite's set-up and fixtures.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from fusedbn import fused_batch_norm
from fusedbn.backend import kernels_run_on
from fusedbn.kernels import layout

# Whether this run's CPU tensors take fusedbn's kernels (under Triton's interpreter) or torch's
# BatchNorm: conftest chooses from FUSEDBN_TEST_CPU_PATH, "kernels" (the default) or "torch".
KERNELS_ON_CPU = kernels_run_on("cpu")

# (rtol, atol) per input dtype, used for every comparison with torch or a float64 reference. Values
# are compared after scaling atol by the largest magnitude of the expected tensor (at least 1), so the
# bounds are relative to the size of what is compared. float16/bfloat16 results are rounded to the
# input dtype once, hence a few units of its rounding error (2**-11 and 2**-8).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}

# Limits that send the small test shapes down the split path with several splits per channel block,
# tiles that overhang the tensor (partial last tiles) and channel blocks of 4 that do not divide the
# channel counts used in the tests (3 and 5). The multiprocessor count is pinned too, so the number of
# splits is the same on the CPU and on any GPU.
SPLIT_LIMITS = layout.LaunchLimits(
    single_tile=32,
    stream_tile=16,
    programs_per_sm=8,
    max_channel_block=4,
    whole_channel_blocks_per_sm=float("inf"),
    multiprocessors=2,
)
# Limits that give each program whole channels streamed through several small tiles.
WHOLE_CHANNEL_LIMITS = layout.LaunchLimits(
    single_tile=16, stream_tile=16, max_channel_block=4, whole_channel_blocks_per_sm=0
)
PATH_LIMITS = {
    "single": layout.LaunchLimits(),
    "whole": WHOLE_CHANNEL_LIMITS,
    "split": SPLIT_LIMITS,
}


def launch_path_names() -> list[str]:
    """The launch paths tests run on: the kernels' three where they run, else "torch" alone."""
    return list(PATH_LIMITS) if torch.cuda.is_available() or KERNELS_ON_CPU else ["torch"]


def start_fusedbn(cwd: Path, *argv: str) -> subprocess.Popen:
    """Start ``python -m fusedbn.cli ARGV`` in ``cwd``, stdout and stderr captured as text.

    It runs without TRITON_INTERPRET (fusedbn then uses torch's native CPU BatchNorm) and with one
    torch thread. Its SIGINT is the default, as at a terminal, so a test can stop it as Ctrl-C would:
    a shell starts a background job (``make test &``, nohup) with SIGINT ignored, children inherit
    that, and a Python started so never raises KeyboardInterrupt.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.Popen(
        [sys.executable, "-m", "fusedbn.cli", *argv],
        cwd=cwd,
        env=env | {"OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def assert_close(actual, expected, dtype=None, scale=None, msg=""):
    """Every element of ``actual`` within the tolerance of ``dtype`` of ``expected`` (no NaN passes)."""
    dtype = dtype or actual.dtype
    rtol, atol = TOLERANCES[dtype]
    expected = expected.to(device=actual.device)
    if scale is None:
        scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    assert not torch.isnan(actual).any(), f"{msg}: NaN in result"
    torch.testing.assert_close(
        actual.detach().double(),
        expected.detach().double(),
        rtol=rtol,
        atol=atol * scale,
        msg=lambda m: f"{msg}: {m}",
    )


class LaunchPath:
    """Which launch path a test forces, and a record of the launches the kernels actually chose.

    "single", "whole" and "split" force the kernels' paths; "torch" (the only one when this run's
    CPU tensors take torch's BatchNorm) expects no kernel launch at all.
    """

    def __init__(self, name: str):
        self.name = name
        self.launches: list[layout.Launch] = []

    @property
    def split(self) -> bool:
        return self.name == "split"

    def check(self) -> None:
        """Assert that every launch took the forced path (and that there was one), or none ran."""
        launches = self.launches
        if self.name == "torch":
            assert not launches, f"the kernels ran on the torch path: {launches}"
            return
        assert launches, "no kernel launch was recorded"
        if self.name == "split":
            assert not any(launch.whole_channel for launch in launches), launches
            assert any(launch.num_splits > 1 for launch in launches), launches
        elif self.name == "whole":
            assert all(launch.whole_channel for launch in launches), launches
            assert any(launch.num_tiles > 1 for launch in launches), launches
        else:
            assert all(launch.whole_channel and launch.num_tiles == 1 for launch in launches), launches


def force_launch_path(monkeypatch, name: str) -> Iterator[LaunchPath]:
    """Launch with the path's limits inside the test, recording every launch chosen."""
    path = LaunchPath(name)
    original = layout.choose_launch

    def recording_choose_launch(*args, **kwargs):
        launch = original(*args, **kwargs)
        path.launches.append(launch)
        return launch

    monkeypatch.setattr(layout, "choose_launch", recording_choose_launch)
    layout.clear_plans()  # plans are cached: every one the test uses is chosen (and recorded) anew
    with layout.launch_limits(PATH_LIMITS.get(name, layout.LaunchLimits())):
        yield path


# ----------------------------------------------------------------------------------------------
# Inputs, parameters and the float64 reference of fusedbn.fused_batch_norm. The reference is
# written from BatchNorm's definition in float64 (its gradients come from autograd through that
# definition); where torch and the reference disagree, the reference is the truth.
# ----------------------------------------------------------------------------------------------

# One shape per supported rank; none of the sizes is a power of two, and with the split limits they
# give partial last tiles along both reduction dims.
SHAPES = {
    2: (37, 5),
    3: (9, 5, 3),
    4: (3, 5, 7, 6),
    5: (2, 3, 3, 5, 4),
}


# Inputs in every layout


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


# The float64 reference


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
