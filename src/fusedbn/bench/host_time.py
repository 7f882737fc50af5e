"""Host time: what one BatchNorm call costs the host, fusedbn's against torch's, variant by variant.

With a small layer the device finishes each kernel long before the host has launched the next one,
so the wall time of a call is the host's time. Every variant (whole-channel path, split path,
channels_last, each fused epilogue, eval, FusedSyncBatchNorm over one process, the whole-channel
path launched by Triton's own ``kernel[grid]``, and a floor: the least a Python autograd.Function
with BatchNorm's inputs and allocations costs) runs fusedbn's module and torch's eager equivalent
on the same tensors, in blocks of back-to-back calls. Blocks are interleaved (every variant,
fusedbn and torch in alternating order, round after round), so both sides of a ratio see the same
machine; each round gives one paired ratio, and the report gives their median and quartiles.
Counts that a noisy machine cannot blur come next, per call: Python function calls (cProfile,
builtins included), tensor allocations (torch.profiler's memory events), kernel launches, and
fusedbn's time split into stages (argument checks, planning, kernel launches, the rest of the
autograd Function's apply and backward, and the autograd engine with the Python around them).

``--fake-gpu`` runs all of it on any machine without a GPU (fusedbn.bench.fake_gpu): CPU tensors take
fusedbn's Triton path; Triton's driver is a fake one with a real CUDA target, its binder and cache
run on the first call of each specialisation, and the compiled kernel's C launcher launches nothing.
torch runs its CPU kernels on one thread, which on a few elements cost little next to its dispatcher
and autograd (on a GPU both sides launch asynchronously). Without ``--fake-gpu`` it runs on CUDA
and measures the real host time. Writes OUT/host_time.csv and OUT/host_time.md.
"""

import argparse
import contextlib
import copy
import cProfile
import csv
import dataclasses
import datetime
import importlib
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import triton
from torch import nn
from torch.profiler import ProfilerActivity, profile

from fusedbn.bench.cases import (
    CHANNELS_LAST,
    NCHW,
    Shape,
    option_type,
    parse_choices,
    parse_dtypes,
    shape_named,
)
from fusedbn.bench.cases import random_tensor as case_tensor
from fusedbn.bench.fake_gpu import fake_gpu, kernel_launchers
from fusedbn.bench.providers import reference_module
from fusedbn.bench.results import device_name, git_commit
from fusedbn.bench.runner import GRAD_SEED, MODULE_SEED, X_OFFSET, X_SEED
from fusedbn.bench.timing import synchronize
from fusedbn.convert import convert_model
from fusedbn.kernels import backward, forward
from fusedbn.kernels.layout import LaunchLimits, launch_limits
from fusedbn.sync import FusedSyncBatchNorm

# ----------------------------------------------------------------------------------------------
# Stages: fusedbn's host path cut into named parts, timed by wall clocks around their functions
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """A named part of the host path and the functions (``module``, ``attribute path``) it consists of."""

    name: str
    targets: tuple[tuple[str, str], ...]


# Functions that do not exist in the installed versions are skipped and listed in the report.
CHECKS = Stage(
    "argument checks",
    (("fusedbn.functional", "usual_call"), ("fusedbn.functional", "check_batch_norm_args")),
)
# plan_batch_norm folds the input and chooses the launch (or finds the cached plan); each module
# that calls it holds its own name.
PLANNING = Stage(
    "planning",
    tuple((module, "plan_batch_norm") for module in ("fusedbn.autograd", "fusedbn.ops")),
)
LAUNCHES = Stage(
    "kernel launches",
    (
        ("triton.runtime.jit", "JITFunction.run"),
        ("triton.runtime.interpreter", "InterpretedFunction.run"),
        ("fusedbn.kernels.launcher", "KernelLauncher.__call__"),
    ),
)
# apply_batch_norm (called from fusedbn.functional) applies the autograd Function (or, with nothing
# to differentiate, runs the launcher itself); the backward is the Function's.
FUNCTION = Stage(
    "autograd Function",
    (
        ("fusedbn.functional", "apply_batch_norm"),
        ("fusedbn.autograd", "FusedBatchNormFunction.backward"),
    ),
)
STAGES = (CHECKS, PLANNING, LAUNCHES, FUNCTION)
LAUNCHER_CALL = ("fusedbn.kernels.launcher", "KernelLauncher.__call__")


class StageClock:
    """Seconds spent per stage; a call inside another call of the same stage is not counted twice."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._depth = threading.local()

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, stage, 0)
            setattr(self._depth, stage, depth + 1)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self._depth, stage, depth)
                if depth == 0:
                    self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        return timed


def _resolve(module_name: str, path: str) -> tuple[Any, str] | None:
    """The object that holds the attribute ``path`` of ``module_name`` and the attribute's name."""
    try:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
    except (ImportError, AttributeError):
        return None
    return (owner, name) if name in vars(owner) else None


@contextmanager
def _patched(
    owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    original = vars(owner)[name]
    if isinstance(original, staticmethod):
        setattr(owner, name, staticmethod(wrapper(original.__func__)))
    else:
        setattr(owner, name, wrapper(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def instrumented(clock: StageClock, stages: tuple[Stage, ...] = STAGES) -> Iterator[list[str]]:
    """Wrap every function of ``stages`` with ``clock`` while inside; yields the targets not found.

    Everything is put back on exit, also after an error.
    """
    missing = []
    with ExitStack() as stack:
        for stage in stages:
            for module_name, path in stage.targets:
                found = _resolve(module_name, path)
                if found is None:
                    missing.append(f"{module_name}.{path}")
                    continue
                stack.enter_context(_patched(*found, lambda fn, s=stage.name: clock.wrap(s, fn)))
        yield missing


@dataclass(frozen=True)
class StageTimes:
    """Microseconds per call of fusedbn's stages; ``rest_of_function`` and ``autograd_and_glue`` are
    what the named stages leave of the Function bodies and of the whole call."""

    total: float
    checks: float
    planning: float
    launches: float
    rest_of_function: float
    autograd_and_glue: float

    @classmethod
    def from_clock(cls, clock: StageClock, total_s: float, steps: int) -> "StageTimes":
        us = {name: seconds / steps * 1e6 for name, seconds in clock.seconds.items()}
        function = us.get(FUNCTION.name, 0.0)
        checks, planning, launches = (us.get(s.name, 0.0) for s in (CHECKS, PLANNING, LAUNCHES))
        total = total_s / steps * 1e6
        return cls(
            total, checks, planning, launches, function - planning - launches, total - checks - function
        )

    def rows(self) -> list[tuple[str, float]]:
        return [
            (CHECKS.name, self.checks),
            (PLANNING.name, self.planning),
            (LAUNCHES.name, self.launches),
            ("rest of the Function's apply and backward", self.rest_of_function),
            ("autograd engine and glue", self.autograd_and_glue),
        ]


# ----------------------------------------------------------------------------------------------
# Variants: what fusedbn runs, and torch's eager equivalent on the same tensors
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One kind of BatchNorm call, run by fusedbn and by torch's eager equivalent (``reference``)."""

    name: str
    description: str
    reference: str
    training: bool = True
    layout: str = NCHW
    activation: str | None = None
    residual: bool = False
    split: bool = False  # force the split path (several programs per channel)
    sync: bool = False  # FusedSyncBatchNorm over a gloo group of one process
    floor: bool = False  # fusedbn's side is FloorBatchNorm, not fusedbn
    direct_launch: bool = True  # False: every launch through kernel[grid] (FUSEDBN_FAST_LAUNCH=0)


VARIANTS = (
    Variant("whole-channel", "training fwd+bwd, whole-channel path", "BatchNorm"),
    Variant("split", "training fwd+bwd, split path", "BatchNorm", split=True),
    Variant("channels_last", "training fwd+bwd, channels_last", "BatchNorm", layout=CHANNELS_LAST),
    Variant("relu", "training fwd+bwd, fused ReLU", "BatchNorm + relu", activation="relu"),
    Variant(
        "add-relu", "training fwd+bwd, fused residual add + ReLU", "BatchNorm + add + relu",
        activation="relu", residual=True,
    ),
    Variant("eval", "eval forward (no_grad)", "BatchNorm eval", training=False),
    Variant("sync-1", "FusedSyncBatchNorm, one process (gloo)", "BatchNorm", sync=True),
    Variant(
        "triton-launch", "training fwd+bwd, whole-channel, launched by kernel[grid] (FUSEDBN_FAST_LAUNCH=0)",
        "BatchNorm", direct_launch=False,
    ),
    Variant(
        "floor", "empty autograd.Function: BatchNorm's inputs, saves and allocations", "BatchNorm",
        floor=True,
    ),
)  # fmt: skip
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


class _FloorFunction(torch.autograd.Function):
    """What any Python BatchNorm Function does at the least: take (x, weight, bias), allocate the
    output and the two statistics, save four tensors, allocate the three gradients; nothing else."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        mean = torch.empty(x.shape[1], device=x.device)
        ctx.save_for_backward(x, weight, mean, torch.empty_like(mean))
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, weight, _, _ = ctx.saved_tensors
        return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


class FloorBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm module whose forward applies _FloorFunction: the floor of the host time."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _FloorFunction.apply(input, self.weight, self.bias)


def split_limits(shape: Shape) -> LaunchLimits:
    """Limits that send ``shape`` down the split path: tiles of a quarter channel, never whole-channel."""
    n_per_channel = math.prod(shape.dims) // shape.num_channels
    return LaunchLimits(
        single_tile=1, stream_tile=max(n_per_channel // 4, 1), whole_channel_blocks_per_sm=math.inf
    )


@dataclass
class Case:
    """A variant's two calls, ready to run: each returns what its mode produces."""

    variant: Variant
    fusedbn: Callable[[], Any]
    torch: Callable[[], Any]
    context: Callable[[], contextlib.AbstractContextManager]  # entered around fusedbn's blocks


def fused_module(variant: Variant, reference: nn.Module) -> nn.Module:
    """fusedbn's module for ``variant``, with ``reference``'s parameters and buffers (copied)."""
    if variant.floor:
        return FloorBatchNorm(reference.num_features, device=reference.weight.device)
    if variant.sync:
        return FusedSyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(reference))
    module = convert_model(copy.deepcopy(reference))
    module.activation = variant.activation
    return module


def torch_module(variant: Variant, reference: nn.Module, device: torch.device) -> nn.Module:
    """torch's module: its SyncBatchNorm for the synchronized variant on CUDA (it refuses CPU
    tensors), else ``reference`` itself."""
    if variant.sync and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(reference))
    return reference


def build_case(variant: Variant, shape: Shape, dtype: str, device: torch.device) -> Case:
    """Both calls of ``variant`` on one input (and residual and upstream gradient)."""
    reference = reference_module(shape, device, MODULE_SEED)
    fused = fused_module(variant, reference)
    eager = torch_module(variant, reference, device)
    x = case_tensor(shape, dtype, variant.layout, device, X_SEED, X_OFFSET)
    residual = case_tensor(shape, dtype, variant.layout, device, X_SEED + 10) if variant.residual else None
    grad_output = case_tensor(shape, dtype, variant.layout, device, GRAD_SEED)

    def epilogue(y: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        if extra is not None:
            y = y + extra
        return F.relu(y) if variant.activation == "relu" else y

    def call(module: nn.Module, fused_epilogue: bool) -> Callable[[], Any]:
        module.train(variant.training)
        if not variant.training:
            data = x.detach()

            def evaluate() -> torch.Tensor:
                with torch.no_grad():
                    return module(data)

            return evaluate
        x_leaf = x.detach().requires_grad_(True)
        extra = None if residual is None else residual.detach().requires_grad_(True)
        inputs = [x_leaf, *module.parameters(), *([extra] if extra is not None else [])]
        if fused_epilogue:
            def forward() -> torch.Tensor:
                return module(x_leaf) if extra is None else module(x_leaf, extra)
        else:
            def forward() -> torch.Tensor:
                return epilogue(module(x_leaf), extra)
        return lambda: torch.autograd.grad(forward(), inputs, grad_output)

    return Case(
        variant=variant,
        fusedbn=call(fused, fused_epilogue=not variant.floor),
        torch=call(eager, fused_epilogue=False),
        context=lambda: fused_setting(variant, shape),
    )


@contextmanager
def fused_setting(variant: Variant, shape: Shape) -> Iterator[None]:
    """What fusedbn's blocks of ``variant`` run inside: the split path's limits, or Triton's own
    launches (every KernelLauncher's direct path off, put back after)."""
    launchers = [] if variant.direct_launch else kernel_launchers(forward, backward)
    fast = [launcher.fast for launcher in launchers]
    limits = split_limits(shape) if variant.split else None
    with launch_limits(limits) if limits else contextlib.nullcontext():
        try:
            for launcher in launchers:
                launcher.fast = False
            yield
        finally:
            for launcher, was_fast in zip(launchers, fast, strict=True):
                launcher.fast = was_fast


@contextmanager
def single_process_group(needed: bool) -> Iterator[None]:
    """A gloo process group of one process for the synchronized variant, unless one exists."""
    if not needed or dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def time_block(step: Callable[[], Any], steps: int, device: torch.device, context: Any) -> float:
    """Microseconds per call of ``step`` over ``steps`` calls back to back inside ``context``."""
    with context:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return (time.perf_counter() - start) / steps * 1e6


def python_calls(step: Callable[[], Any], steps: int, context: Any) -> float:
    """Function calls per call of ``step`` as cProfile counts them (Python and builtin functions)."""
    profiler = cProfile.Profile()
    with context:
        profiler.enable()
        for _ in range(steps):
            step()
        profiler.disable()
    return pstats.Stats(profiler).total_calls / steps


def allocations(step: Callable[[], Any], steps: int, device: torch.device, context: Any) -> float:
    """Tensor allocations per call of ``step``: torch.profiler's memory events of positive size."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with context, profile(activities=activities, profile_memory=True) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    events = profiler.profiler.kineto_results.events()
    return sum(1 for e in events if e.name() == "[memory]" and e.nbytes() > 0) / steps


def launches(step: Callable[[], Any], steps: int, context: Any) -> float:
    """KernelLauncher calls (kernel launches) per call of ``step``."""
    counter = [0]

    def counting(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            counter[0] += 1
            return fn(*args, **kwargs)

        return call

    owner, name = _resolve(*LAUNCHER_CALL)
    with context, _patched(owner, name, counting):
        for _ in range(steps):
            step()
    return counter[0] / steps


@dataclass
class Side:
    """What was measured for one side (fusedbn or torch) of a variant."""

    us: list[float] = field(default_factory=list)  # per round
    python_calls: float = math.nan
    allocations: float = math.nan
    launches: float = math.nan


@dataclass
class VariantResult:
    variant: Variant
    fusedbn: Side
    torch: Side
    stages: StageTimes | None = None
    missing: tuple[str, ...] = ()

    @property
    def ratios(self) -> list[float]:
        """fusedbn's time over torch's, round by round (paired)."""
        return [f / t for f, t in zip(self.fusedbn.us, self.torch.us, strict=True)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values``."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


@dataclass(frozen=True)
class Settings:
    """How much to measure."""

    rounds: int
    steps: int  # calls per timed block
    warmup: int  # untimed calls of each side first
    count_steps: int  # calls under cProfile, torch.profiler and the stage clocks


def measure(cases: list[Case], device: torch.device, settings: Settings) -> list[VariantResult]:
    """Warm up, time the cases round by round (interleaved), then count calls, allocations, launches
    and fusedbn's stages."""
    results = [VariantResult(case.variant, Side(), Side()) for case in cases]

    def sides(case: Case, result: VariantResult) -> list[tuple[Callable[[], Any], Any, Side]]:
        return [
            (case.fusedbn, case.context, result.fusedbn),
            (case.torch, contextlib.nullcontext, result.torch),
        ]

    for case, result in zip(cases, results, strict=True):
        for step, context, _ in sides(case, result):
            time_block(step, settings.warmup, device, context())
    for round_index in range(settings.rounds):
        for case, result in zip(cases, results, strict=True):
            # fusedbn first in even rounds, torch first in odd ones
            for step, context, side in sides(case, result)[:: 1 if round_index % 2 == 0 else -1]:
                side.us.append(time_block(step, settings.steps, device, context()))
    for case, result in zip(cases, results, strict=True):
        for step, context, side in sides(case, result):
            side.python_calls = python_calls(step, settings.count_steps, context())
            side.allocations = allocations(step, settings.count_steps, device, context())
            side.launches = launches(step, settings.count_steps, context())
        if not case.variant.floor:
            result.stages, result.missing = staged(case, device, settings)
    return results


def staged(case: Case, device: torch.device, settings: Settings) -> tuple[StageTimes, tuple[str, ...]]:
    """fusedbn's stages per call: each stage's median over ``rounds`` instrumented blocks of
    ``count_steps`` calls (a block that the machine interrupts moves one value of each, not the
    result); the functions not found."""
    blocks = []
    steps = settings.count_steps
    for _ in range(settings.rounds):
        clock = StageClock()
        with instrumented(clock) as missing:
            total_us = time_block(case.fusedbn, steps, device, case.context())
        blocks.append(StageTimes.from_clock(clock, total_us * steps / 1e6, steps))
    columns = zip(*map(dataclasses.astuple, blocks), strict=True)
    medians = [statistics.median(values) for values in columns]
    return StageTimes(*medians), tuple(missing)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def machine_info(device: torch.device, fake_gpu: bool, load_before: tuple[float, ...]) -> dict[str, str]:
    """Where and with what the run was measured, the load averages before and after included."""
    load_after = os.getloadavg()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": "fake GPU (GPUTarget cuda 90, launches stubbed) on " + device_name(device) if fake_gpu
        else device_name(device),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "load": "before " + " ".join(f"{v:.2f}" for v in load_before)
        + ", after " + " ".join(f"{v:.2f}" for v in load_after),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "commit": git_commit(),
    }  # fmt: skip


CSV_FILE = "host_time.csv"
MARKDOWN_FILE = "host_time.md"


def csv_rows(results: list[VariantResult]) -> list[tuple[str, str, str, float]]:
    """(variant, side, metric, value) rows: per-round times, ratio quartiles, counts, stages."""
    rows = []
    for result in results:
        name = result.variant.name
        q1, median, q3 = quartiles(result.ratios)
        rows += [(name, "fusedbn/torch", "ratio_q1", q1), (name, "fusedbn/torch", "ratio_median", median),
                 (name, "fusedbn/torch", "ratio_q3", q3)]  # fmt: skip
        for side_name, side in (("fusedbn", result.fusedbn), ("torch", result.torch)):
            rows.append((name, side_name, "us_per_call_median", statistics.median(side.us)))
            rows += [(name, side_name, f"us_round_{i}", us) for i, us in enumerate(side.us)]
            rows += [(name, side_name, "python_calls_per_call", side.python_calls),
                     (name, side_name, "allocations_per_call", side.allocations),
                     (name, side_name, "launches_per_call", side.launches)]  # fmt: skip
        if result.stages is not None:
            rows.append((name, "fusedbn", "stage_total_us", result.stages.total))
            rows += [(name, "fusedbn", f"stage_us:{stage}", us) for stage, us in result.stages.rows()]
    return rows


def write_csv(results: list[VariantResult], info: dict[str, str], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*info, "variant", "side", "metric", "value"])
        for row in csv_rows(results):
            writer.writerow([*info.values(), *row[:3], f"{row[3]:.4g}"])


def format_markdown(results: list[VariantResult], info: dict[str, str], shape: Shape, dtype: str,
                    settings: Settings) -> str:  # fmt: skip
    """The summary: machine, the ratio table, the counts, fusedbn's stages."""
    lines = [
        f"# Host time per call: fusedbn vs torch eager, {shape.name} {dtype}",
        "",
        *(f"- {key}: {value}" for key, value in info.items()),
        f"- {settings.rounds} rounds of {settings.steps} calls per side and variant, interleaved; counts "
        f"over {settings.count_steps} calls; stages: medians of {settings.rounds} blocks of "
        f"{settings.count_steps} calls",
        "",
        "| variant | fusedbn | torch runs | fusedbn / torch, median [quartiles] | fusedbn us | torch us "
        "| launches | Python calls fusedbn / torch | allocations fusedbn / torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        q1, median, q3 = quartiles(result.ratios)
        f, t = result.fusedbn, result.torch
        lines.append(
            f"| {result.variant.name} | {result.variant.description} | {result.variant.reference} "
            f"| {median:.2f}x [{q1:.2f}, {q3:.2f}] "
            f"| {statistics.median(f.us):.1f} | {statistics.median(t.us):.1f} "
            f"| {f.launches:.0f} | {f.python_calls:.0f} / {t.python_calls:.0f} "
            f"| {f.allocations:.1f} / {t.allocations:.1f} |"
        )
    staged = [r for r in results if r.stages is not None]
    if staged:
        names = [name for name, _ in staged[0].stages.rows()]
        lines += [
            "",
            "fusedbn's time per call by stage, us (share of the instrumented total), with a wall clock "
            "around each stage's functions (the clocks add their own cost: the instrumented total is "
            "shown; each value is a median over blocks, so they need not add up exactly):",
            "",
            "| variant | instrumented total | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for result in staged:
            stages = result.stages
            cells = " | ".join(f"{us:.1f} ({us / stages.total:.0%})" for _, us in stages.rows())
            lines.append(f"| {result.variant.name} | {stages.total:.1f} | {cells} |")
        missing = sorted({m for r in staged for m in r.missing})
        if missing:
            lines += ["", f"Not present in this version, so not timed: {', '.join(missing)}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

DEFAULTS = {"rounds": 15, "steps": 200, "warmup": 50, "count_steps": 50}
SMOKE = {"rounds": 3, "steps": 3, "warmup": 2, "count_steps": 2}
FAKE_GPU_SHAPE, CUDA_SHAPE = "2x4x2x2", "8x64x8x8"


def parse_variants(text: str) -> list[str]:
    """Comma-separated variant names, checked."""
    return parse_choices(text, VARIANT_NAMES, "variant")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the host-time benchmark's options to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--fake-gpu", action="store_true",
        help="run on the CPU with a fake GPU (no device needed); without it, CUDA is needed",
    )  # fmt: skip
    parser.add_argument(
        "--smoke", action="store_true",
        help="a few calls of each variant: checks that the benchmark measures, claims no speed",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path("runs/host-time"), help="output folder (default: runs/host-time)"
    )
    parser.add_argument(
        "--shape", type=option_type(shape_named),
        help=f"NxCx... input shape (default: {FAKE_GPU_SHAPE} with --fake-gpu, {CUDA_SHAPE} on CUDA)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", type=option_type(lambda text: parse_dtypes(text)[0]),
        help="float32, float16, bfloat16 (default: float32 with --fake-gpu, float16 on CUDA)",
    )  # fmt: skip
    parser.add_argument(
        "--variants", type=option_type(parse_variants),
        help=f"comma-separated, from {', '.join(VARIANT_NAMES)} (default: all)",
    )  # fmt: skip
    for name, help_text in (
        ("rounds", "interleaved rounds, each giving one paired ratio per variant"),
        ("steps", "calls per timed block"),
        ("warmup", "untimed calls of each side first"),
        ("count_steps", "calls counted under cProfile, torch.profiler and the stage clocks"),
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=_positive_int, dest=name,
            help=f"{help_text} (default: {DEFAULTS[name]}; smoke: {SMOKE[name]})",
        )  # fmt: skip


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


@contextmanager
def _host_setting(fake: bool) -> Iterator[Any]:
    """The fake GPU when asked for, and one torch thread, put back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if fake:
            with fake_gpu() as gpu:
                yield gpu
        else:
            yield None
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    """Measure and report; 0 on success, 2 when the machine cannot run it."""
    load_before = os.getloadavg()
    device = torch.device("cpu" if args.fake_gpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("host time: error: no CUDA device (--fake-gpu measures on the CPU)", file=sys.stderr)
        return 2
    preset = SMOKE if args.smoke else DEFAULTS
    settings = Settings(**{name: getattr(args, name) or preset[name] for name in DEFAULTS})
    shape = args.shape or shape_named(FAKE_GPU_SHAPE if args.fake_gpu else CUDA_SHAPE)
    dtype = args.dtype or ("float32" if args.fake_gpu else "float16")
    chosen = args.variants or list(VARIANT_NAMES)
    variants = [
        v for v in VARIANTS if v.name in chosen and (v.layout != CHANNELS_LAST or len(shape.dims) > 2)
    ]
    with _host_setting(args.fake_gpu), single_process_group(any(v.sync for v in variants)):
        cases = [build_case(variant, shape, dtype, device) for variant in variants]
        results = measure(cases, device, settings)
        info = machine_info(device, args.fake_gpu, load_before)
    args.out.mkdir(parents=True, exist_ok=True)
    text = format_markdown(results, info, shape, dtype, settings)
    (args.out / MARKDOWN_FILE).write_text(text)
    write_csv(results, info, args.out / CSV_FILE)
    print(text)
    print(f"wrote {args.out / MARKDOWN_FILE}, {args.out / CSV_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fusedbn.bench.host_time``."""
    parser = argparse.ArgumentParser(prog="python -m fusedbn.bench.host_time", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
