"""Host-time report: where the host time of one training forward+backward of a BatchNorm layer goes.

For each shape, torch's nn.BatchNorm and fusedbn's module run forward and backward back to back (the
upstream gradient fixed, gradients of input, weight and bias requested). With a small layer the
device finishes each kernel long before the host launches the next, so the wall time per step is
the host's time. The report gives:

1. the wall time per step of each (plain run, no instrumentation);
2. fusedbn's step split into named stages, from a second run with a wall clock around each stage's
   functions (STAGES; nested calls of one stage count once): argument checks, planning (folding the
   input, choosing the launch), kernel launches (Triton's binding and launch, or a direct launch
   path), the rest of the autograd Function bodies, and what is left: autograd's engine and the
   Python between the pieces. The clocks add their own cost, so the instrumented total is shown too;
3. the operators with the most host time in each, from torch.profiler (which sees the thread that
   runs backward as well).

On the CPU fusedbn runs Triton's interpreter (TRITON_INTERPRET=1) or torch's own BatchNorm: the
report names the backend, and its numbers say nothing about a GPU. Writes OUT/host_time.txt and
OUT/host_time.csv.
"""

import argparse
import csv
import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from fusedbn.backend import backend_for
from fusedbn.bench.cases import (
    CHANNELS_LAST,
    FUSEDBN,
    FWDBWD,
    Shape,
    parse_dtypes,
    parse_layouts,
    parse_shapes,
)
from fusedbn.bench.cases import random_tensor as case_tensor
from fusedbn.bench.providers import mode_call, provider_module, reference_module
from fusedbn.bench.results import device_name, git_commit
from fusedbn.bench.runner import GRAD_SEED, MODULE_SEED, X_OFFSET, X_SEED
from fusedbn.bench.timing import synchronize


@dataclass(frozen=True)
class Stage:
    """A named part of the host path and the functions (``module``, ``attribute path``) it consists of."""

    name: str
    targets: tuple[tuple[str, str], ...]


# Functions that do not exist in the installed versions are skipped and listed in the report.
CHECKS = Stage("argument checks", (("fusedbn.functional", "check_batch_norm_args"),))
# plan_batch_norm folds the input and chooses the launch; each module that calls it holds its own name.
PLANNING = Stage(
    "planning",
    tuple(
        (module, "plan_batch_norm")
        for module in ("fusedbn.autograd", "fusedbn.kernels.forward", "fusedbn.kernels.backward")
    ),
)
LAUNCHES = Stage(
    "kernel launches",
    (
        ("triton.runtime.jit", "JITFunction.run"),
        ("triton.runtime.interpreter", "InterpretedFunction.run"),
        ("fusedbn.kernels.launcher", "KernelLauncher.__call__"),
    ),
)
# Eager code applies ForwardADBatchNormFunction, which inherits forward and backward from this class.
FUNCTION = Stage(
    "autograd Function bodies",
    (
        ("fusedbn.autograd", "FusedBatchNormFunction.forward"),
        ("fusedbn.autograd", "FusedBatchNormFunction.backward"),
    ),
)
STAGES = (CHECKS, PLANNING, LAUNCHES, FUNCTION)


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
    """Microseconds per step of fusedbn's stages; ``rest_of_function`` and ``autograd_and_glue`` are
    what the named stages leave of the Function bodies and of the whole step."""

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
            ("rest of the Function bodies", self.rest_of_function),
            ("autograd engine and glue", self.autograd_and_glue),
        ]


def seconds_per_step(step: Callable[[], Any], device: torch.device, steps: int) -> float:
    """Wall seconds per call of ``step`` over ``steps`` calls back to back, synchronised at the end."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def top_operators(step: Callable[[], Any], device: torch.device, steps: int, rows: int) -> str:
    """torch.profiler's table of the operators with the most host time (self), per ``steps`` steps."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    return profiler.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60
    )


@dataclass(frozen=True)
class HostCase:
    """What was measured for one shape, dtype and layout."""

    shape: Shape
    dtype: str
    layout: str
    backend: str
    torch_us: float
    fusedbn_us: float
    stages: StageTimes
    missing: tuple[str, ...]
    torch_ops: str
    fusedbn_ops: str


def measure_case(
    shape: Shape, dtype: str, layout: str, device: torch.device, steps: int, warmup: int, profile_rows: int
) -> HostCase:
    """Time torch's and fusedbn's training step of a BatchNorm of ``shape``, then fusedbn's stages."""
    reference = reference_module(shape, device, MODULE_SEED)
    fused = provider_module(FUSEDBN, reference)
    x = case_tensor(shape, dtype, layout, device, X_SEED, X_OFFSET)
    grad_output = case_tensor(shape, dtype, layout, device, GRAD_SEED)
    steps_of = {
        name: mode_call(m, FWDBWD, x, grad_output) for name, m in (("torch", reference), ("fusedbn", fused))
    }
    for step in steps_of.values():
        seconds_per_step(step, device, warmup)
    plain = {name: seconds_per_step(step, device, steps) * 1e6 for name, step in steps_of.items()}
    clock = StageClock()
    with instrumented(clock) as missing:
        instrumented_s = seconds_per_step(steps_of["fusedbn"], device, steps) * steps
    profile_steps = max(1, min(steps, 20))
    return HostCase(
        shape=shape,
        dtype=dtype,
        layout=layout,
        backend=backend_for(device),
        torch_us=plain["torch"],
        fusedbn_us=plain["fusedbn"],
        stages=StageTimes.from_clock(clock, instrumented_s, steps),
        missing=tuple(missing),
        torch_ops=top_operators(steps_of["torch"], device, profile_steps, profile_rows),
        fusedbn_ops=top_operators(steps_of["fusedbn"], device, profile_steps, profile_rows),
    )


def format_case(case: HostCase) -> str:
    """The report of one case, as text."""
    stages = case.stages
    lines = [
        f"== {case.shape.name} {case.dtype} {case.layout}: host time per training forward+backward "
        f"(fusedbn backend: {case.backend})",
        f"torch eager {case.torch_us:9.1f} us/step",
        f"fusedbn     {case.fusedbn_us:9.1f} us/step ({case.fusedbn_us / case.torch_us:.2f}x torch's time)",
        f"fusedbn by stage (instrumented run: {stages.total:.1f} us/step):",
        *(f"  {name:<30} {us:9.1f} us {us / stages.total:6.1%}" for name, us in stages.rows()),
    ]
    if case.missing:
        lines.append(f"  not present in this version, so not timed: {', '.join(case.missing)}")
    lines += [
        "torch eager, top operators by host time (torch.profiler, both threads):",
        case.torch_ops,
        "fusedbn, top operators by host time (torch.profiler):",
        case.fusedbn_ops,
    ]
    return "\n".join(lines)


TEXT_FILE = "host_time.txt"
CSV_FILE = "host_time.csv"
SMOKE = {"shapes": "4x8x4x4", "dtypes": "float32", "layouts": "nchw,channels_last", "steps": 5, "warmup": 2}
GPU = {"shapes": "8x64x8x8,64x64x28x28,64x512x7x7", "dtypes": "float16", "layouts": "nchw,channels_last",
       "steps": 300, "warmup": 30}  # fmt: skip


def write_csv(cases: list[HostCase], info: dict[str, str], path: Path) -> None:
    """One row per case and part: torch's and fusedbn's step, then fusedbn's stages (us per step)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*info, "shape", "dtype", "layout", "backend", "part", "us_per_step"])
        for case in cases:
            parts = [("torch eager step", case.torch_us), ("fusedbn step", case.fusedbn_us),
                     ("fusedbn instrumented step", case.stages.total), *case.stages.rows()]  # fmt: skip
            for part, us in parts:
                writer.writerow(
                    [
                        *info.values(),
                        case.shape.name,
                        case.dtype,
                        case.layout,
                        case.backend,
                        part,
                        f"{us:.2f}",
                    ]
                )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the host-time report's options to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--smoke", action="store_true", help="run on the CPU with a tiny shape (checks the report)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/host-time"), help="output folder")
    parser.add_argument(
        "--shapes", help=f"NxCxHxW shapes (default: {GPU['shapes']}; smoke: {SMOKE['shapes']})"
    )
    parser.add_argument("--dtypes", help="default: float16; smoke: float32")
    parser.add_argument("--layouts", help="nchw, channels_last (default: both)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default: 300; smoke: 5)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 30; smoke: 2)")
    parser.add_argument(
        "--profile-rows", type=int, default=12, help="operators listed per profile (default: 12)"
    )


def run(args: argparse.Namespace) -> int:
    """Measure and report; 0 on success, 2 when the options or the machine cannot run it."""
    defaults = SMOKE if args.smoke else GPU
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("host time: error: no CUDA device (--smoke runs on the CPU)", file=sys.stderr)
        return 2
    try:
        shapes = parse_shapes(args.shapes or defaults["shapes"])
        dtypes = parse_dtypes(args.dtypes or defaults["dtypes"])
        layouts = parse_layouts(args.layouts or defaults["layouts"])
    except ValueError as error:
        print(f"host time: error: {error}", file=sys.stderr)
        return 2
    steps, warmup = args.steps or defaults["steps"], args.warmup or defaults["warmup"]
    info = {"device": device_name(device), "torch": torch.__version__, "commit": git_commit()}
    cases = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in layouts:
                if layout == CHANNELS_LAST and len(shape.dims) != 4:
                    continue
                case = measure_case(shape, dtype, layout, device, steps, warmup, args.profile_rows)
                print(format_case(case), flush=True)
                cases.append(case)
    args.out.mkdir(parents=True, exist_ok=True)
    header = " ".join(f"{k}={v}" for k, v in info.items())
    (args.out / TEXT_FILE).write_text("\n\n".join([header, *map(format_case, cases)]) + "\n")
    write_csv(cases, info, args.out / CSV_FILE)
    print(f"wrote {args.out / TEXT_FILE}, {args.out / CSV_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fusedbn.bench.host_time``."""
    parser = argparse.ArgumentParser(prog="python -m fusedbn.bench.host_time", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
