"""Host time: what one BatchNorm call costs the host, fusedbn's against torch's, variant by variant.

On a small layer the device finishes each kernel long before the host launches the next, so a call's wall time
is host time. Each variant (whole-channel and split paths, channels_last, each fused epilogue, eval,
FusedSyncBatchNorm over one process, launches through Triton's ``kernel[grid]``, and a floor: an empty
autograd.Function with BatchNorm's inputs and allocations) runs fusedbn's module and torch's eager equivalent
on the same tensors in interleaved blocks of calls; each round gives one paired ratio, reported as median and
quartiles. Then, per call: Python function calls (cProfile), tensor allocations (torch.profiler), kernel
launches, and each area's share of fusedbn's profiled self time (the profiler slows Python more than C).
``--fake-gpu`` runs it on the CPU (fusedbn.bench.fake_gpu: Triton's binder and cache run, nothing is launched;
torch on one thread); without it, it needs CUDA. Writes OUT/host_time.csv and OUT/host_time.md.
"""

import argparse
import contextlib
import copy
import cProfile
import dataclasses
import math
import pstats
import statistics
import sys
import sysconfig
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from fusedbn.bench.cases import (
    CHANNELS_LAST,
    EVAL,
    FWDBWD,
    NCHW,
    Shape,
    choices,
    layout_applies,
    parse_dtypes,
    positive,
    random_tensor,
    shape_named,
)
from fusedbn.bench.core import (
    KERNEL_SOURCES,
    LAUNCHERS,
    FusedSyncBatchNorm,
    LaunchLimits,
    convert_model,
    launch_limits,
    use_backend,
)
from fusedbn.bench.fake_gpu import fake_gpu, recording_launches
from fusedbn.bench.providers import RESIDUAL_SEED, case_inputs, mode_call
from fusedbn.bench.timing import time_calls
from fusedbn.cli import OneLineErrorParser
from fusedbn.records import SOURCE, RunRecord, run_record, table, write_csv


@dataclass(frozen=True)
class Variant:
    """One kind of BatchNorm call, run by fusedbn and by torch's eager equivalent (``reference``)."""

    name: str
    description: str
    training: bool = True
    layout: str = NCHW
    activation: str | None = None
    residual: bool = False
    split: bool = False  # force the split path (several programs per channel)
    sync: bool = False  # FusedSyncBatchNorm over a gloo group of one process
    floor: bool = False  # fusedbn's side is FloorBatchNorm, not fusedbn
    direct_launch: bool = True  # False: every launch through kernel[grid] (FUSEDBN_FAST_LAUNCH=0)
    backend: str = "triton"  # "auto": the cost model chooses per call, as a user's default call does

    @property
    def reference(self) -> str:
        """What torch's side runs, as the report names it: "BatchNorm" (or "BatchNorm eval"), its epilogue."""
        epilogue = (["add"] if self.residual else []) + ([self.activation] if self.activation else [])
        return " + ".join(["BatchNorm" if self.training else "BatchNorm eval", *epilogue])


VARIANTS = (
    Variant("whole-channel", "training fwd+bwd, whole-channel path"),
    Variant("split", "training fwd+bwd, split path", split=True),
    Variant("channels_last", "training fwd+bwd, channels_last", layout=CHANNELS_LAST),
    Variant("relu", "training fwd+bwd, fused ReLU", activation="relu"),
    Variant("add-relu", "training fwd+bwd, fused residual add + ReLU", activation="relu", residual=True),
    Variant("eval", "eval forward (no_grad)", training=False),
    Variant("auto", "training fwd+bwd, backend=\"auto\"", backend="auto"),
    Variant("auto-eval", "eval forward (no_grad), backend=\"auto\"", training=False, backend="auto"),
    Variant("sync-1", "FusedSyncBatchNorm, one process (gloo)", sync=True),
    Variant(
        "triton-launch", "training fwd+bwd, whole-channel, launched by kernel[grid] (FUSEDBN_FAST_LAUNCH=0)",
        direct_launch=False,
    ),
    Variant("floor", "empty autograd.Function: BatchNorm's inputs, saves and allocations", floor=True),
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


def fused_module(variant: Variant, reference: nn.Module) -> nn.Module:
    """fusedbn's module for ``variant``, with ``reference``'s parameters and buffers (copied)."""
    if variant.floor:
        return FloorBatchNorm(reference.num_features, device=reference.weight.device)
    if variant.sync:
        return FusedSyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(reference))
    module = convert_model(copy.deepcopy(reference))
    module.activation = variant.activation
    return module


def build_comparison(variant: Variant, shape: Shape, dtype: str, device: torch.device) -> "Comparison":
    """Both sides of ``variant``, not measured yet, on one input (and residual and upstream gradient)."""
    reference, x, grad_output = case_inputs(shape, dtype, variant.layout, device)
    residual = random_tensor(shape, dtype, variant.layout, device, RESIDUAL_SEED)
    residual = residual if variant.residual else None
    mode = FWDBWD if variant.training else EVAL
    torch_module = reference  # or its SyncBatchNorm for the synchronized variant on CUDA (it refuses the CPU)
    if variant.sync and device.type == "cuda":
        torch_module = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(reference))

    def torch_forward(module: nn.Module, data: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        y = module(data) if extra is None else module(data) + extra
        return F.relu(y) if variant.activation == "relu" else y

    def fused_forward(module: nn.Module, data: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        return module(data) if extra is None else module(data, extra)

    fused = mode_call(fused_module(variant, reference), mode, x, grad_output, residual,
                      torch_forward if variant.floor else fused_forward)  # fmt: skip
    torch_call = mode_call(torch_module, mode, x, grad_output, residual, torch_forward)
    return Comparison(variant, Side(fused, lambda: fused_setting(variant, shape)), Side(torch_call))


@contextmanager
def fused_setting(variant: Variant, shape: Shape) -> Iterator[None]:
    """What fusedbn's blocks of ``variant`` run inside: its backend (its kernels unless the variant
    measures "auto"), the split path's limits, or Triton's own launches (every KernelLauncher's direct
    path off, put back after)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(use_backend(variant.backend))
        if variant.split:  # tiles of a quarter channel, never whole-channel
            quarter = max(math.prod(shape.dims) // shape.num_channels // 4, 1)
            limits = LaunchLimits(single_tile=1, stream_tile=quarter, whole_channel_blocks_per_sm=math.inf)
            stack.enter_context(launch_limits(limits))
        for launcher in () if variant.direct_launch else LAUNCHERS:
            stack.callback(setattr, launcher, "fast", launcher.fast)
            launcher.fast = False
        yield


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


# Where a source file's code belongs, by the folder it is in: fusedbn's own files by name.
_AREAS = {
    str(SOURCE): "fusedbn/",
    str(KERNEL_SOURCES): "fusedbn/kernels/",
    sysconfig.get_paths()["purelib"]: "",  # other installed packages, by package name
    sysconfig.get_paths()["stdlib"]: "Python standard library",
}


def source_area(filename: str) -> str:
    """What a profiled function's file belongs to: one of fusedbn's files (``fusedbn/functional.py``),
    torch, Triton (or another installed package), the standard library, C functions (``~``), or the
    benchmark's own code."""
    if filename == "~":
        return "C functions"
    path = str(Path(filename).resolve())
    for folder, area in sorted(_AREAS.items(), key=lambda item: -len(item[0])):
        if path.startswith(folder + "/"):
            rest = path[len(folder) + 1 :]
            return area + rest if area.endswith("/") else area or rest.split("/")[0]
    return "the benchmark's own calls"


@dataclass
class Side:
    """One side (fusedbn or torch) of a variant: its call, what its blocks run inside, what it measured."""

    call: Callable[[], Any]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    us: list[float] = field(default_factory=list)  # per round
    python_calls: float = math.nan
    allocations: float = math.nan
    launches: float = math.nan
    self_time: Counter[str] = field(default_factory=Counter)  # share of cProfile's self time by area


def profile_calls(side: Side, steps: int, device: torch.device) -> None:
    """Count, per call of ``side``'s call, its Python function calls (and where their self time goes), its
    tensor allocations (torch.profiler's memory events of positive size) and its kernel launches."""
    profiler = cProfile.Profile()
    with side.context():
        profiler.enable()
        time_calls(side.call, device, steps)
        profiler.disable()
    stats = pstats.Stats(profiler)
    side.python_calls = stats.total_calls / steps
    total = sum(row[2] for row in stats.stats.values()) or 1.0
    for (filename, _, _), row in stats.stats.items():
        side.self_time[source_area(filename)] += row[2] / total
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with side.context(), profile(activities=activities, profile_memory=True) as memory:
        with recording_launches() as calls:
            time_calls(side.call, device, steps)
    events = memory.profiler.kineto_results.events()
    side.allocations = sum(1 for e in events if e.name() == "[memory]" and e.nbytes() > 0) / steps
    side.launches = len(calls) / steps


@dataclass
class Comparison:
    """fusedbn's and torch's side of one variant."""

    variant: Variant
    fusedbn: Side
    torch: Side

    def quartiles(self) -> tuple[float, float, float]:
        """(first quartile, median, third quartile) of fusedbn's time over torch's, round by round."""
        ratios = [f / t for f, t in zip(self.fusedbn.us, self.torch.us, strict=True)]
        return tuple(statistics.quantiles(ratios, n=4, method="inclusive")) if len(ratios) > 1 else ratios * 3


@dataclass(frozen=True)
class Settings:
    """How much to measure."""

    rounds: int
    steps: int  # calls per timed block
    warmup: int  # untimed calls of each side first
    count_steps: int  # calls under cProfile and torch.profiler


def measure(comparisons: list[Comparison], device: torch.device, settings: Settings) -> None:
    """Warm up, time the sides round by round (interleaved), then count calls, allocations and launches."""
    for round_index in range(-1, settings.rounds):  # round -1: the warm-up
        steps = settings.warmup if round_index < 0 else settings.steps
        for comparison in comparisons:
            # fusedbn first in even rounds, torch first in odd ones
            for side in (comparison.fusedbn, comparison.torch)[:: 1 if round_index % 2 == 0 else -1]:
                with side.context():
                    calls = time_calls(side.call, device, steps)
                if round_index >= 0:
                    side.us.append(calls.us_per_call)
    for comparison in comparisons:
        profile_calls(comparison.fusedbn, settings.count_steps, device)
        profile_calls(comparison.torch, settings.count_steps, device)


CSV_FILE = "host_time.csv"
MARKDOWN_FILE = "host_time.md"


def csv_rows(results: list[Comparison], record: RunRecord) -> list[dict[str, object]]:
    """A row per (variant, side, metric): per-round times, ratio quartiles, counts, self-time shares."""
    rows = []
    for result in results:
        values = [("fusedbn/torch", f"ratio_{name}", ratio)
                  for name, ratio in zip(("q1", "median", "q3"), result.quartiles(), strict=True)]
        for side_name, side in (("fusedbn", result.fusedbn), ("torch", result.torch)):
            values += [(side_name, "us_per_call_median", statistics.median(side.us)),
                       *((side_name, f"us_round_{i}", us) for i, us in enumerate(side.us)),
                       (side_name, "python_calls_per_call", side.python_calls),
                       (side_name, "allocations_per_call", side.allocations),
                       (side_name, "launches_per_call", side.launches),
                       *((side_name, f"self_time_share:{a}", share) for a, share in side.self_time.items())]
        rows += [dataclasses.asdict(record) | {"variant": result.variant.name, "side": side, "metric": metric,
                                               "value": f"{value:.4g}"}
                 for side, metric, value in values]  # fmt: skip
    return rows


def format_markdown(
    results: list[Comparison], record: RunRecord, shape: Shape, dtype: str, settings: Settings, fake: bool
) -> str:
    """The summary: the run's record, the ratio table, the counts, where fusedbn's time goes."""
    if fake:
        device = f"fake GPU (GPUTarget cuda 90, launches stubbed) on {record.device}"
        record = dataclasses.replace(record, device=device)
    rows = []
    for result in results:
        q1, median, q3 = result.quartiles()
        f, t = result.fusedbn, result.torch
        rows.append({
            "variant": result.variant.name, "fusedbn": result.variant.description,
            "torch runs": result.variant.reference,
            "fusedbn / torch, median [quartiles]": f"{median:.2f}x [{q1:.2f}, {q3:.2f}]",
            "fusedbn us": f"{statistics.median(f.us):.1f}", "torch us": f"{statistics.median(t.us):.1f}",
            "launches": f"{f.launches:.0f}",
            "Python calls fusedbn / torch": f"{f.python_calls:.0f} / {t.python_calls:.0f}",
            "allocations fusedbn / torch": f"{f.allocations:.1f} / {t.allocations:.1f}",
        })  # fmt: skip
    where = [
        {"variant": r.variant.name, "fusedbn's profiled self time, largest shares first": ", ".join(
            f"{area} {share:.0%}" for area, share in r.fusedbn.self_time.most_common(6))}
        for r in results
    ]  # fmt: skip
    return "\n".join([
        f"# Host time per call: fusedbn vs torch eager, {shape.name} {dtype}", "",
        f"- {record.header()}",
        f"- {settings.rounds} rounds of {settings.steps} calls per side and variant, interleaved; counts "
        f"over {settings.count_steps} calls", "", table(rows), "",
        "Where fusedbn's host time goes: each area's share of the self time cProfile measured over those "
        "calls (fusedbn's own files by name; the profiler slows Python code more than C code).", "",
        table(where),
    ]) + "\n"  # fmt: skip


# Each of Settings' fields: its default, its smoke default, and its option's help.
SETTINGS = {
    "rounds": (15, 3, "interleaved rounds, each giving one paired ratio per variant"),
    "steps": (200, 3, "calls per timed block"),
    "warmup": (50, 2, "untimed calls of each side first"),
    "count_steps": (50, 2, "calls counted under cProfile and torch.profiler"),
}
FAKE_GPU_SHAPE, CUDA_SHAPE = "2x4x2x2", "8x64x8x8"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the host-time benchmark's options to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--fake-gpu", action="store_true", help="run on the CPU with a fake GPU (no device needed); "
        "without it, CUDA is needed")
    add("--smoke", action="store_true", help="a few calls of each variant: checks that it measures, no speed")
    add("--out", type=Path, default=Path("runs/host-time"), help="output folder (default: runs/host-time)")
    add("--shape", type=shape_named, help=f"NxCx... input shape (default: {FAKE_GPU_SHAPE} with --fake-gpu, "
        f"{CUDA_SHAPE} on CUDA)")
    add("--dtype", type=lambda text: parse_dtypes(text)[0],
        help="float32, float16, bfloat16 (default: float32 with --fake-gpu, float16 on CUDA)")
    add("--variants", type=choices(VARIANT_NAMES, "variant"),
        help=f"comma-separated, from {', '.join(VARIANT_NAMES)} (default: all)")
    for name, (default, smoke, text) in SETTINGS.items():
        add(f"--{name.replace('_', '-')}", type=positive(int), dest=name,
            help=f"{text} (default: {default}; smoke: {smoke})")


def run(args: argparse.Namespace) -> int:
    """Measure and report; 0 on success, 2 when the machine cannot run it."""
    device = torch.device("cpu" if args.fake_gpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("host time: error: no CUDA device (--fake-gpu measures on the CPU)", file=sys.stderr)
        return 2
    settings = Settings(**{name: getattr(args, name) or (smoke if args.smoke else default)
                           for name, (default, smoke, _) in SETTINGS.items()})  # fmt: skip
    shape = args.shape or shape_named(FAKE_GPU_SHAPE if args.fake_gpu else CUDA_SHAPE)
    dtype = args.dtype or ("float32" if args.fake_gpu else "float16")
    chosen = args.variants or VARIANT_NAMES
    variants = [v for v in VARIANTS if v.name in chosen and layout_applies(shape, v.layout)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # put back after
    try:
        with (fake_gpu() if args.fake_gpu else contextlib.nullcontext(),
              single_process_group(any(v.sync for v in variants))):  # fmt: skip
            record = run_record(device)
            results = [build_comparison(v, shape, dtype, device) for v in variants]
            measure(results, device, settings)
            record = record.finished()
    finally:
        torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    text = format_markdown(results, record, shape, dtype, settings, args.fake_gpu)
    (args.out / MARKDOWN_FILE).write_text(text)
    rows = csv_rows(results, record)
    write_csv(args.out / CSV_FILE, rows, list(rows[0]))
    print(text)
    print(f"wrote {args.out / MARKDOWN_FILE}, {args.out / CSV_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/host_time.py``: run the benchmark with ``argv`` (default: the command line)."""
    parser = OneLineErrorParser(prog="python benchmarks/host_time.py", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
