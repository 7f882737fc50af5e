"""Arrival tickets: the split path's last program finalizes, whichever program that is.

Under Triton's interpreter the programs of a launch run one after another, in grid order; the tests
here reorder them (the interpreter's grid index is remapped) so that another program arrives last,
interrupt a launch between programs, and look at the counters between calls. On a GPU, the same
split-path call is captured in a CUDA graph and run on two streams at once.
"""

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from helpers import SHAPES, make_input, params_for, reference, run_both
from triton.runtime import interpreter

from fusedbn import fused_batch_norm
from fusedbn.kernels import forward, tickets
from fusedbn.kernels.call import BatchNormOptions
from fusedbn.kernels.launcher import KernelLauncher
from fusedbn.kernels.layout import plan_batch_norm
from fusedbn.kernels.tickets import arrival_counters, launch_with_arrivals

pytestmark = pytest.mark.kernels  # the kernels and their launch machinery

KEYS = ("y", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var")


def training_step(layout, device, seed=0):
    """One float32 training forward and backward of fused_batch_norm; its results (run_both's)."""
    shape = SHAPES[4]
    x, _ = make_input(shape, layout, torch.float32, device, seed=seed, offset=4.0)
    grad_output, _ = make_input(shape, "contiguous", torch.float32, device, seed=seed + 1)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=seed + 2)
    fused, _ = run_both(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, grad_output)
    expected = reference(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, grad_output)
    return fused, expected


class ProgramOrder:
    """Runs the programs of every interpreted launch in the order ``order(num_programs)`` gives, as
    indices into the grid's row-major order; records each launch's grid and its programs' ids in the
    order they ran."""

    def __init__(self, monkeypatch, order):
        builder = interpreter.interpreter_builder
        original = builder.set_grid_idx
        self.launches: list[tuple[tuple[int, ...], list[tuple[int, int, int]]]] = []

        def set_grid_idx(x, y, z):
            grid = tuple(builder.grid_dim)
            row_major = (x * grid[1] + y) * grid[2] + z
            if row_major == 0:  # the interpreter runs a grid in row-major order
                self.launches.append((grid, []))
            index = order(grid[0] * grid[1] * grid[2])[row_major]
            program = (index // (grid[1] * grid[2]), index // grid[2] % grid[1], index % grid[2])
            self.launches[-1][1].append(program)
            original(*program)

        monkeypatch.setattr(builder, "set_grid_idx", set_grid_idx)

    def last_to_arrive(self) -> list[tuple[int, int]]:
        """For each channel block of each split launch, (the split whose program ran last, splits)."""
        last = []
        for grid, programs in self.launches:
            if grid[1] > 1:
                last.extend(
                    ([split for block_, split, _ in programs if block_ == block][-1], grid[1])
                    for block in range(grid[0])
                )
        return last


def shuffled(count: int) -> list[int]:
    return torch.randperm(count, generator=torch.Generator().manual_seed(count)).tolist()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_results_do_not_depend_on_which_program_arrives_last(layout, split_path, device, monkeypatch,
                                                             assert_close):
    if device.type == "cuda":
        pytest.skip("reorders the interpreter's programs")
    in_grid_order, expected = training_step(layout, device)
    for order in (lambda count: list(range(count))[::-1], shuffled):
        with monkeypatch.context() as patch:
            reordered = ProgramOrder(patch, order)
            results, _ = training_step(layout, device)
        last = reordered.last_to_arrive()
        assert last, "no split launch ran"
        # In grid order the last split arrives last; here other splits merged the partials.
        assert any(split != splits - 1 for split, splits in last), last
        for key in KEYS:
            assert torch.equal(results[key], in_grid_order[key]), key
    for key in KEYS:
        assert_close(in_grid_order[key], expected[key], dtype=torch.float32, msg=key)
    split_path.check()


def test_each_channel_block_counts_its_arrivals_and_the_last_resets(split_path, device, monkeypatch):
    if device.type == "cuda":
        pytest.skip("watches the interpreter's programs")
    seen = []  # per program of a ticketed launch: (channel block, split, its counter as it starts)
    original = KernelLauncher.__call__

    def watching_call(self, grid, *args, **kwargs):
        if self.kernel.fn.__name__ in ("partial_moments_kernel", "partial_sums_kernel"):
            arrivals = args[0]
            builder = interpreter.interpreter_builder
            set_grid_idx = builder.set_grid_idx

            def watch(x, y, z):
                seen.append((self.kernel.fn.__name__, x, y, int(arrivals[x])))
                set_grid_idx(x, y, z)

            with monkeypatch.context() as patch:
                patch.setattr(builder, "set_grid_idx", watch)
                original(self, grid, *args, **kwargs)
            assert not arrivals.any(), "a counter was left counting"
            assert arrival_counters(arrivals.device, 1) is arrivals, "not this thread's counters"
            return
        original(self, grid, *args, **kwargs)

    monkeypatch.setattr(KernelLauncher, "__call__", watching_call)
    training_step("channels_last", device)
    kernels = {name for name, *_ in seen}
    assert kernels == {"partial_moments_kernel", "partial_sums_kernel"}
    for name in kernels:
        programs = [(block, split, count) for kernel, block, split, count in seen if kernel == name]
        blocks = {block for block, _, _ in programs}
        assert len(blocks) > 1, "the test needs several channel blocks"
        for block in blocks:
            counts = [count for b, _, count in programs if b == block]
            # The interpreter runs a block's splits in order: each finds the arrivals before it.
            assert counts == list(range(len(counts))) and len(counts) > 1, (name, block, counts)


def test_an_interrupted_launch_leaves_no_counter_behind(split_path, device, monkeypatch, assert_close):
    if device.type == "cuda":
        pytest.skip("interrupts an interpreted launch")

    class Interrupt(Exception):
        pass

    builder = interpreter.interpreter_builder
    original = builder.set_grid_idx
    started = []

    def stop_at_third_program(x, y, z):
        started.append((x, y))
        if len(started) == 3:
            raise Interrupt
        original(x, y, z)

    with monkeypatch.context() as patch:
        patch.setattr(builder, "set_grid_idx", stop_at_third_program)
        with pytest.raises(Exception, match="Interrupt"):
            training_step("contiguous", device)
    assert len(started) == 3
    results, expected = training_step("contiguous", device)
    for key in KEYS:
        assert_close(results[key], expected[key], dtype=torch.float32, msg=key)
    assert not arrival_counters(device, 1).any()
    split_path.check()


def test_synchronized_forward_merges_a_summary_then_the_gathered_ones(split_path, device, assert_close):
    """With combine_moments the partials leave the kernel unmerged; finalize_moments_kernel merges
    them into this process's one-split summary, then merges what the combine returns (here that
    summary twice, as two processes with the same batch would gather), then apply_kernel."""
    shape = SHAPES[4]
    x, _ = make_input(shape, "channels_last", torch.float32, device, seed=30, offset=-7.0)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=31)
    launched = []
    original = KernelLauncher.__call__

    def recording_call(self, grid, *args, **kwargs):
        launched.append(self.kernel.fn.__name__)
        original(self, grid, *args, **kwargs)

    summaries = []

    def combine_moments(summary):
        summaries.append(summary.clone())
        return torch.cat([summary, summary], dim=1)

    try:
        KernelLauncher.__call__ = recording_call
        folded, plan = plan_batch_norm(x)
        options = BatchNormOptions(True, 0.1, 1e-5, relu=False)
        y, mean, invstd, _ = forward.batch_norm_forward(
            folded, plan, options, weight, bias, None, running_mean, running_var, None,
            combine_moments=combine_moments,
        )
    finally:
        KernelLauncher.__call__ = original
    assert launched == [
        "partial_moments_kernel", "finalize_moments_kernel", "finalize_moments_kernel", "apply_kernel"
    ]
    assert plan.launch.num_splits > 1, "the test needs several splits"
    dims = [0, 2, 3]
    count, summary_mean, deviation, m2 = summaries[0][:, 0]
    assert torch.equal(count, torch.full_like(count, x.numel() // shape[1]))
    assert_close(summary_mean, x.double().mean(dims), dtype=torch.float32, msg="summary mean")
    assert not deviation.any()
    assert_close(m2, x.double().var(dims, unbiased=False) * count.double(), msg="summary M2")
    # Two copies of one batch: the same mean and variance, the running variance's correction
    # from twice the count.
    expected = reference(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5)
    assert_close(y, expected["y"], dtype=torch.float32, msg="y")
    assert_close(mean, x.double().mean(dims), dtype=torch.float32, msg="mean")
    assert_close(invstd, (x.double().var(dims, unbiased=False) + 1e-5).rsqrt(), msg="invstd")
    n = 2 * count.double()
    unbiased = x.double().var(dims, unbiased=False) * n / (n - 1)
    assert_close(running_var, 0.9 * params_for(shape[1], torch.float32, device, seed=31)[3].double()
                 + 0.1 * unbiased, msg="running_var")
    split_path.check()


def test_counters_are_kept_per_thread_and_zeroed_when_new(device):
    if device.type == "cuda":
        pytest.skip("the CPU's counters are kept per thread")
    first = arrival_counters(device, 3)
    assert first.dtype == torch.int32 and first.numel() >= 3 and not first.any()
    assert arrival_counters(device, 3) is first
    grown = arrival_counters(device, 2 * first.numel())
    assert grown.numel() >= 2 * first.numel() and not grown.any()
    assert arrival_counters(device, 3) is grown
    other = []
    thread = threading.Thread(target=lambda: other.append(arrival_counters(device, 3)))
    thread.start()
    thread.join()
    assert other[0] is not grown


def test_counters_of_a_failed_launch_are_dropped(device):
    if device.type == "cuda":
        pytest.skip("dirties the CPU's counters")
    given = []

    def failing_launch(grid, arrivals, *args, **kwargs):
        given.append((grid, arrivals, args, kwargs))
        arrivals[1] = 2  # as a launch stopped halfway would leave them
        raise RuntimeError("launch failed")

    with pytest.raises(RuntimeError, match="launch failed"):
        launch_with_arrivals(failing_launch, (4, 3), device, "x", 5, FLAG=True)
    ((grid, arrivals, args, kwargs),) = given
    assert (grid, args, kwargs) == ((4, 3), ("x", 5), {"FLAG": True}) and arrivals.numel() >= 4
    fresh = arrival_counters(device, 4)
    assert fresh is not arrivals and not fresh.any()


def test_at_most_max_queues_buffers_are_kept(device):
    if device.type == "cuda":
        pytest.skip("uses the CPU's per-thread counters")
    count = tickets.MAX_QUEUES + 3
    ready, done = threading.Barrier(count + 1), threading.Event()

    failures = []

    def take():
        try:
            arrival_counters(device, 1)
        except BaseException as error:  # from a thread: reported below
            failures.append(error)
        ready.wait(timeout=60)
        done.wait(timeout=60)  # alive until every thread has its counters: no thread id is reused

    threads = [threading.Thread(target=take) for _ in range(count)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=60)
    assert len(tickets._counters) <= tickets.MAX_QUEUES
    done.set()
    for thread in threads:
        thread.join()
    assert not failures, failures


# ----------------------------------------------------------------------------------------------
# The real compiler's code for the ticket (sm_80 and sm_90, no GPU needed)
# ----------------------------------------------------------------------------------------------

# Runs in a process of its own, without TRITON_INTERPRET, and prints the PTX of both ticketed
# kernels (small tiles, a fused ReLU, running statistics) for sm_80 and sm_90 as JSON.
COMPILE_PTX = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedbn.kernels import backward, forward

POINTERS = {"arrivals_ptr": "*i32", "mask_ptr": "*u8", "num_batches_tracked_ptr": "*i64"}
CONSTEXPRS = dict(FINALIZE=True, UPDATE_RUNNING=True, CUMULATIVE=False, RELU=True,
                  BLOCK_N=2, BLOCK_S=64, BLOCK_C=2, X_ALIGN=1, Y_ALIGN=1, M_ALIGN=1)
ptx = {}
for kernel in (forward.partial_moments_kernel, backward.partial_sums_kernel):
    signature = {
        p.name: "constexpr" if p.is_constexpr else POINTERS.get(p.name, "*fp32")
        if p.name.endswith("_ptr") else "fp64" if p.name in ("momentum", "eps") else "i32"
        for p in kernel.params
    }
    constexprs = {p.name: CONSTEXPRS[p.name] for p in kernel.params if p.is_constexpr}
    for cc in (80, 90):
        compiled = triton.compile(ASTSource(kernel, signature, constexprs),
                                  target=GPUTarget("cuda", cc, 32), options={"num_warps": 2})
        ptx[f"{kernel.__name__} sm_{cc}"] = compiled.asm["ptx"]
json.dump(ptx, sys.stdout)
"""


def in_order(lines: list[str], patterns: list[str]) -> bool:
    """Whether lines holding each pattern appear in ``lines`` in the patterns' order."""
    rest = iter(lines)
    return all(any(pattern in line for line in rest) for pattern in patterns)


def test_compiled_ticket_orders_the_partials_before_the_merge():
    """The PTX does what tickets.py says: the partial stores, a CTA barrier, one thread's
    atom.acq_rel.gpu, the ticket shared behind another barrier, then .cg loads of the partials."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    compiled = subprocess.run(
        [sys.executable, "-c", COMPILE_PTX], env=environment, capture_output=True, text=True,
        timeout=600,
    )
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    ptx_of = json.loads(compiled.stdout)
    assert len(ptx_of) == 4
    for name, ptx in ptx_of.items():
        lines = [line.strip() for line in ptx.splitlines()]
        atoms = [i for i, line in enumerate(lines) if "atom." in line]
        assert len(atoms) == 1, name
        atom = atoms[0]
        assert "atom.global.gpu.acq_rel.add" in lines[atom], (name, lines[atom])
        last_store = max(i for i, line in enumerate(lines[:atom]) if "st.global" in line)
        assert any("bar.sync" in line for line in lines[last_store:atom]), name
        after = lines[atom + 1:]
        first_cg = next(i for i, line in enumerate(after) if "ld.global.cg" in line)
        assert in_order(after[:first_cg], ["st.shared", "bar.sync", "ld.shared"]), name
        assert not any("ld.global.cg" in line for line in lines[:atom]), name


# ----------------------------------------------------------------------------------------------
# On a GPU: graph capture and replay, and two streams at once
# ----------------------------------------------------------------------------------------------


def _cuda_step(x, grad, weight, bias, running_mean, running_var):
    x = x.detach().requires_grad_(True)
    y = fused_batch_norm(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5)
    (grad_input,) = torch.autograd.grad(y, x, grad)
    return y, grad_input


def _cuda_case(seed, channels_last=False):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    shape = (8, 3, 33, 35)  # 3 channels: several splits each under the split limits
    x = torch.randn(shape, device="cuda", generator=generator) * 3 + 10
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn(shape, device="cuda", generator=generator)
    weight = torch.rand(shape[1], device="cuda", generator=generator) + 0.5
    bias = torch.randn(shape[1], device="cuda", generator=generator)
    return x, grad, weight, bias, torch.zeros(shape[1], device="cuda"), torch.ones(shape[1], device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_graph_replays_equal_eager_calls(channels_last, split_path):
    x, grad, weight, bias, running_mean, running_var = _cuda_case(1, channels_last)
    eager_state = (running_mean.clone(), running_var.clone())
    expected = [_cuda_step(x, grad, weight, bias, *eager_state) for _ in range(3)]
    graph_state = (running_mean.clone(), running_var.clone())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and bind outside the capture
        _cuda_step(x, grad, weight, bias, running_mean.clone(), running_var.clone())
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _cuda_step(x, grad, weight, bias, *graph_state)
    for step in range(3):
        graph.replay()
        torch.cuda.synchronize()
        for ours, theirs in zip(captured, expected[step], strict=True):
            assert torch.equal(ours, theirs), f"replay {step}"
    assert torch.equal(graph_state[0], eager_state[0]) and torch.equal(graph_state[1], eager_state[1])
    split_path.check()


@pytest.mark.cuda
def test_two_streams_at_once_keep_their_tickets_apart(split_path):
    cases = [_cuda_case(seed, channels_last=seed % 2 == 1) for seed in range(2)]
    expected = [_cuda_step(*case) for case in cases]
    streams = [torch.cuda.Stream() for _ in cases]
    for stream in streams:
        stream.wait_stream(torch.cuda.current_stream())
    results = [[] for _ in cases]
    for _ in range(20):
        for stream, case, out in zip(streams, cases, results, strict=True):
            with torch.cuda.stream(stream):
                out.append(_cuda_step(*case))
    torch.cuda.synchronize()
    for out, wanted in zip(results, expected, strict=True):
        for step in out:
            for ours, theirs in zip(step, wanted, strict=True):
                assert torch.equal(ours, theirs)
    split_path.check()
