"""KernelLauncher: the direct launch passes what Triton's own binder passes, and falls back when it must.

Without a GPU the kernels are checked on fusedbn.bench.fake_gpu's fake one: a real JITFunction of each
fusedbn kernel, a fake Triton driver, and a fake compiled kernel that Triton itself installs in its
cache under its own key (its compile step is replaced) and whose launcher records its arguments. The launches
replayed are the ones fusedbn's launchers make on every path, recorded under the interpreter. On a
GPU, the fast path and Triton's path must give bitwise identical results.
"""

import itertools
from collections.abc import Iterator

import pytest
import torch
import triton

import fusedbn
from fusedbn.bench.fake_gpu import FakeDriver, FakeGpuKernel, fake_driver
from fusedbn.kernels import backward, forward, launcher, layout
from fusedbn.kernels.launcher import KernelLauncher

pytestmark = pytest.mark.kernels  # the kernels and their launch machinery

PATHS = ["single", "whole", "split"]


@pytest.fixture
def fake_gpu(monkeypatch) -> Iterator[FakeDriver]:
    monkeypatch.delenv(launcher.FAST_LAUNCH_ENV, raising=False)
    with fake_driver() as driver:
        yield driver


def record_launches(monkeypatch, **call) -> list[tuple]:
    """Every (kernel function, grid, args, kwargs) fusedbn launches for one training or eval step."""
    launches = []
    original = KernelLauncher.__call__

    def recording_call(self, grid, *args, **kwargs):
        launches.append((self.kernel.fn, grid, args, kwargs))
        return original(self, grid, *args, **kwargs)

    monkeypatch.setattr(KernelLauncher, "__call__", recording_call)
    torch.manual_seed(0)
    shape = (4, 6, 5, 3)
    x = (torch.randn(shape) + 2.0).to(memory_format=call.get("memory_format", torch.contiguous_format))
    x.requires_grad_(True)
    weight = (torch.rand(6) + 0.5).requires_grad_(True)
    bias = torch.randn(6).requires_grad_(True)
    residual = torch.randn(shape) if call.get("epilogue") else None
    y = fusedbn.fused_batch_norm(
        x, torch.zeros(6), torch.ones(6), weight, bias, call.get("training", True), 0.1, 1e-5,
        residual=residual, activation="relu" if call.get("epilogue") else None,
    )
    y.backward(torch.randn_like(y))
    monkeypatch.setattr(KernelLauncher, "__call__", original)
    return launches


def fresh(arg):
    """A new tensor of the same dtype, shape and strides (so the same alignment), or the value;
    floats change, since the launcher passes them anew on every call."""
    if isinstance(arg, torch.Tensor):
        return torch.empty_strided(arg.shape, arg.stride(), dtype=arg.dtype)
    if type(arg) is float:
        return arg * 0.5 + 0.25
    return arg


def assert_same_launch(fast: tuple, expected: tuple) -> None:
    """The direct launch equals Triton's, hooks and launch metadata aside (None: none registered)."""
    assert fast[:6] == expected[:6], "grid, stream, function or metadata differ"
    assert fast[6:9] == (None, None, None)
    assert len(fast) == len(expected), "argument counts differ"
    for index, (ours, theirs) in enumerate(zip(fast[9:], expected[9:], strict=True)):
        assert type(ours) is type(theirs), f"argument {index}: {type(ours)} vs {type(theirs)}"
        if isinstance(theirs, torch.Tensor):
            assert ours is theirs, f"argument {index}: another tensor"
        else:
            assert ours == theirs, f"argument {index}: {ours!r} vs {theirs!r}"


CASES = [
    dict(training=True),
    dict(training=True, epilogue=True, memory_format=torch.channels_last),
    dict(training=False, epilogue=True),
]


TRAINING_KERNELS = {
    "single": {"whole_channel_forward_kernel", "whole_channel_backward_kernel"},
    "whole": {"whole_channel_forward_kernel", "whole_channel_backward_kernel"},
    "split": {"partial_moments_kernel", "apply_kernel", "partial_sums_kernel", "grad_input_kernel"},
}


@pytest.mark.parametrize("case", range(len(CASES)))
def test_direct_launch_passes_what_triton_passes(case, launch_path, fake_gpu, monkeypatch):
    """Every launch of a training or eval step on every path, replayed on the fake GPU."""
    if torch.cuda.is_available():
        pytest.skip("records the interpreter's launches; on a GPU the bitwise test below runs")
    launches = record_launches(monkeypatch, **CASES[case])
    launch_path.check()
    kernels = set()
    for fn, grid, args, kwargs in launches:
        kernels.add(fn.__name__)
        kernel = FakeGpuKernel(fn, record=True)
        fast = KernelLauncher(kernel.jit)
        fast(grid, *args, **kwargs)  # first call: through Triton, then bound
        assert kernel.triton_launches == 1 and len(kernel.compiled) == 1
        args = tuple(fresh(arg) for arg in args)
        fake_gpu.stream = 11  # the stream is read on every call
        fast(grid, *args, **kwargs)
        assert kernel.triton_launches == 1, f"{fn.__name__}: the second call went through Triton"
        kernel.jit[grid](*args, **kwargs)
        assert len(kernel.compiled) == 1, "Triton compiled another specialisation"
        *_, ours, triton_s = kernel.all_launches()
        assert_same_launch(ours, triton_s)
        fake_gpu.stream = 7
    if CASES[case]["training"]:
        assert kernels == TRAINING_KERNELS[launch_path.name]


def partial_moments_call(tiles_per_split: int = 3) -> tuple[tuple, dict]:
    """Positional and keyword arguments of a partial_moments launch over a (4, 3, 5) input."""
    x = torch.randn(4, 3, 5)
    partial, arrivals, statistics = torch.empty(4, 2, 3), torch.zeros(3, dtype=torch.int32), torch.empty(3)
    args = (
        arrivals, x, partial, *[statistics] * 5, 4, 5, 3, 20, 15, 5, 1, 1, 5, tiles_per_split,
        0.1, 1e-5,
    )
    kwargs = dict(FINALIZE=True, UPDATE_RUNNING=False, CUMULATIVE=False, BLOCK_N=4, BLOCK_S=8, BLOCK_C=1,
                  X_ALIGN=1, Y_ALIGN=1, M_ALIGN=1, num_warps=4)
    return args, kwargs


def bound_partial_moments(fake_gpu) -> tuple[FakeGpuKernel, KernelLauncher, tuple, dict]:
    """A partial_moments launcher on the fake GPU, bound by one call; its grid, args and kwargs."""
    args, kwargs = partial_moments_call()
    kernel = FakeGpuKernel(forward.partial_moments_kernel.fn, record=True)
    fast = KernelLauncher(kernel.jit)
    fast((3, 2), *args, **kwargs)
    fast((3, 2), *args, **kwargs)
    assert kernel.triton_launches == 1, "the bound launch went through Triton"
    return kernel, fast, args, kwargs


def test_environment_switch_takes_tritons_path(fake_gpu, monkeypatch):
    """FUSEDBN_FAST_LAUNCH=0 when a launcher is made (fusedbn's are made at import) keeps every
    launch on Triton's path; the launcher's own ``fast`` argument does the same."""
    _, _, args, kwargs = bound_partial_moments(fake_gpu)
    monkeypatch.setenv(launcher.FAST_LAUNCH_ENV, "0")
    for made in (lambda jit: KernelLauncher(jit), lambda jit: KernelLauncher(jit, fast=False)):
        kernel = FakeGpuKernel(forward.partial_moments_kernel.fn)
        slow = made(kernel.jit)
        for _ in range(3):
            slow((3, 2), *args, **kwargs)
        assert kernel.triton_launches == 3 and not slow.bound
    monkeypatch.setenv(launcher.FAST_LAUNCH_ENV, "1")
    kernel = FakeGpuKernel(forward.partial_moments_kernel.fn)
    fast = KernelLauncher(kernel.jit)
    for _ in range(3):
        fast((3, 2), *args, **kwargs)
    assert kernel.triton_launches == 1 and kernel.launch_count() == 3


def test_launch_hook_takes_tritons_path(fake_gpu):
    kernel, fast, args, kwargs = bound_partial_moments(fake_gpu)
    hooks = triton.knobs.runtime.launch_enter_hook

    def hook(metadata):
        pass

    hooks.add(hook)
    try:
        assert launcher.launch_hooks_registered()
        fast((3, 2), *args, **kwargs)
    finally:
        hooks.remove(hook)
    assert kernel.triton_launches == 2
    assert not launcher.launch_hooks_registered()


def test_torch_compile_tracing_takes_tritons_path(fake_gpu, monkeypatch):
    kernel, fast, args, kwargs = bound_partial_moments(fake_gpu)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    fast((3, 2), *args, **kwargs)
    assert kernel.triton_launches == 2


def test_pre_run_hook_takes_tritons_path(fake_gpu):
    kernel, fast, args, kwargs = bound_partial_moments(fake_gpu)
    seen = []
    kernel.jit.add_pre_run_hook(lambda *args, **kwargs: seen.append(args))
    fast((3, 2), *args, **kwargs)
    assert kernel.triton_launches == 2 and len(seen) == 1


def test_interpreted_kernels_are_never_bound():
    # conftest runs the suite under TRITON_INTERPRET when there is no GPU.
    if torch.cuda.is_available():
        pytest.skip("the kernels are compiled on a GPU")
    assert not KernelLauncher(forward.partial_moments_kernel).fast
    assert not forward.launch_apply.bound and not backward.launch_grad_input.bound


def test_alignment_change_rebinds(fake_gpu):
    kernel, fast, args, kwargs = bound_partial_moments(fake_gpu)
    shifted = torch.randn(61)[1:].view(4, 3, 5)  # 4 bytes past an aligned address
    assert shifted.data_ptr() % 16 != 0
    moved = (args[0], shifted, *args[2:])  # x, after the arrival counters
    fast((3, 2), *moved, **kwargs)
    assert kernel.triton_launches == 2 and len(kernel.compiled) == 2, "not bound anew"
    fast((3, 2), *moved, **kwargs)
    fast((3, 2), *args, **kwargs)
    assert kernel.triton_launches == 2, "a known alignment went through Triton again"
    aligned, unaligned = kernel.compiled.values()
    assert [launch[10] for launch in unaligned.launches] == [shifted, shifted]
    assert [launch[10] for launch in aligned.launches] == [args[1]] * 3


def test_runtime_argument_by_keyword_is_never_bound(fake_gpu):
    kernel = FakeGpuKernel(forward.partial_moments_kernel.fn, record=True)
    fast = KernelLauncher(kernel.jit)
    x, partial, arrivals = torch.randn(4, 3, 5), torch.empty(4, 2, 3), torch.zeros(3, dtype=torch.int32)
    # tiles_per_split, a runtime int, by keyword: its value could change without the key seeing it.
    kwargs = dict(tiles_per_split=3, momentum=0.1, eps=1e-5, FINALIZE=True, UPDATE_RUNNING=False,
                  CUMULATIVE=False, BLOCK_N=4, BLOCK_S=8, BLOCK_C=1,
                  X_ALIGN=1, Y_ALIGN=1, M_ALIGN=1)
    statistics = torch.empty(3)
    for _ in range(2):
        fast((3, 2), arrivals, x, partial, *[statistics] * 5, 4, 5, 3, 20, 15, 5, 1, 1, 5, **kwargs)
    assert kernel.triton_launches == 2
    assert list(fast.bound.values()) == [None]


def test_failed_binding_keeps_tritons_path_and_warns_once(fake_gpu, monkeypatch):
    kernel, _, args, kwargs = bound_partial_moments(fake_gpu)
    fast = KernelLauncher(kernel.jit)

    def failing_bind(*args):
        raise RuntimeError("binding failed")

    monkeypatch.setattr(launcher, "bind", failing_bind)
    with pytest.warns(RuntimeWarning, match="partial_moments_kernel.*RuntimeError: binding failed") as seen:
        for _ in range(2):
            fast((3, 2), *args, **kwargs)
        # tiles_per_split 4: another specialisation, which fails to bind too
        fast((3, 1), *args[:-3], 4, *args[-2:], **kwargs)
    assert len(seen) == 1
    assert kernel.triton_launches == 4
    assert list(fast.bound.values()) == [None, None]


def test_failed_direct_launch_warns_once_and_takes_tritons_path(fake_gpu):
    kernel, fast, args, kwargs = bound_partial_moments(fake_gpu)
    (compiled,) = kernel.compiled.values()
    refused = []

    def refusing_launcher(*launch):
        refused.append(launch)
        raise TypeError("function takes 40 arguments")

    for bound in fast.bound.values():
        object.__setattr__(bound, "run", refusing_launcher)
    with pytest.warns(RuntimeWarning, match="partial_moments_kernel.*TypeError: function takes") as seen:
        fast((3, 2), *args, **kwargs)
        fast((3, 2), *args, **kwargs)
    assert len(seen) == 1 and len(refused) == 1
    # The refused launch ran through Triton instead, and so does every later one.
    assert kernel.triton_launches == 3 and compiled.launch_count == 4


def test_the_specialisation_cache_is_bounded(fake_gpu):
    kernel = FakeGpuKernel(forward.partial_moments_kernel.fn)
    fast = KernelLauncher(kernel.jit, max_specialisations=3)

    def launch(tiles_per_split):
        fast((3, 2), *partial_moments_call(tiles_per_split)[0], **partial_moments_call()[1])

    for tiles_per_split in range(2, 7):  # five specialisations (each int value is one)
        launch(tiles_per_split)
    assert len(fast.bound) == 3 and kernel.triton_launches == 5
    launch(6)  # among the three kept: direct
    assert kernel.triton_launches == 5
    launch(2)  # the first one was dropped: through Triton again, and kept again
    assert kernel.triton_launches == 6 and len(fast.bound) == 3
    launch(2)
    assert kernel.triton_launches == 6


def test_without_triton_knobs_every_launch_takes_tritons_path(fake_gpu, monkeypatch):
    """Triton before 3.4 has no triton.knobs (and its launchers take other arguments)."""
    _, _, args, kwargs = bound_partial_moments(fake_gpu)
    monkeypatch.delattr(triton, "knobs")
    kernel = FakeGpuKernel(forward.partial_moments_kernel.fn)
    old_triton = KernelLauncher(kernel.jit)
    for _ in range(3):
        old_triton((3, 2), *args, **kwargs)
    assert not old_triton.fast and not old_triton.bound
    assert kernel.triton_launches == 3


def test_arguments_laid_out_otherwise_are_never_kept(fake_gpu):
    """The quick key reads the leading tensors and ints; a call that does not fit that layout
    (here a tensor where an int was) takes Triton's path and is not kept."""
    kernel, fast, args, kwargs = bound_partial_moments(fake_gpu)
    assert fast.layout == (8, 10)
    odd = (*args[:8], torch.tensor(4), *args[9:])
    fast((3, 2), *odd, **kwargs)
    fast((3, 2), *odd, **kwargs)
    assert kernel.triton_launches == 3 and len(fast.bound) == 1


def test_pending_compile_is_not_bound(fake_gpu):
    kernel, _, args, kwargs = bound_partial_moments(fake_gpu)
    (compiled,) = kernel.compiled.values()
    assert launcher.bind(kernel.jit, compiled, args, kwargs) is not None
    compiled.result = lambda: compiled  # what an asynchronous compile leaves in the cache
    assert launcher.bind(kernel.jit, compiled, args, kwargs) is None


# ----------------------------------------------------------------------------------------------
# On a GPU: the same results, bit for bit, on both paths
# ----------------------------------------------------------------------------------------------


def _step(x, residual, relu, training, grad):
    """fused_batch_norm forward and backward on fresh copies of everything; all results."""
    x = x.detach().clone().requires_grad_(True)
    c = x.shape[1]
    generator = torch.Generator(device=x.device).manual_seed(5)
    weight = (torch.rand(c, device=x.device, generator=generator) + 0.5).requires_grad_(True)
    bias = torch.randn(c, device=x.device, generator=generator).requires_grad_(True)
    running_mean = torch.randn(c, device=x.device, generator=generator)
    running_var = torch.rand(c, device=x.device, generator=generator) + 0.5
    residual = None if residual is None else residual.detach().clone().requires_grad_(True)
    y = fusedbn.fused_batch_norm(
        x, running_mean, running_var, weight, bias, training, 0.1, 1e-5,
        residual=residual, activation="relu" if relu else None,
    )
    inputs = [x, weight, bias] + ([residual] if residual is not None else [])
    grads = torch.autograd.grad(y, inputs, grad)
    return [y, running_mean, running_var, *grads]


@pytest.mark.cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fast_and_triton_paths_are_bitwise_equal(path, dtype, channels_last, monkeypatch):
    device = torch.device("cuda")
    limits = {
        "single": layout.LaunchLimits(),
        "whole": layout.LaunchLimits(single_tile=256, stream_tile=128, whole_channel_blocks_per_sm=0),
        "split": layout.LaunchLimits(
            single_tile=256, stream_tile=128, whole_channel_blocks_per_sm=float("inf")
        ),
    }[path]
    shape = (8, 24, 9, 11) if path != "single" else (2, 24, 5, 7)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=generator).to(dtype) * 3 + 10
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    residual = torch.randn(shape, device=device, generator=generator).to(dtype)
    grad = torch.randn(shape, device=device, generator=generator).to(dtype)
    launchers = [
        forward.launch_whole_channel_forward, forward.launch_partial_moments,
        forward.launch_finalize_moments, forward.launch_apply,
        backward.launch_whole_channel_backward, backward.launch_partial_sums,
        backward.launch_grad_input,
    ]
    with layout.launch_limits(limits):
        for training, epilogue in itertools.product((True, False), (False, True)):
            args = (x, residual if epilogue else None, epilogue, training, grad)
            for fast in launchers:
                monkeypatch.setattr(fast, "fast", False)
            expected = _step(*args)
            for fast in launchers:
                monkeypatch.setattr(fast, "fast", True)
            _step(*args)  # binds any specialisation not seen yet
            bound_before = sum(len(fast.bound) for fast in launchers)
            results = _step(*args)
            torch.cuda.synchronize()
            assert sum(len(fast.bound) for fast in launchers) == bound_before, "not bound"
            for index, (ours, theirs) in enumerate(zip(results, expected, strict=True)):
                assert torch.equal(ours, theirs), f"training={training} epilogue={epilogue} #{index}"
    # Every specialisation was bound: the results above came from the direct launches.
    bindings = [bound for fast in launchers for bound in fast.bound.values()]
    assert bindings and all(bound is not None for bound in bindings)
