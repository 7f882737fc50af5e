"""Training-step benchmark: a whole ResNet-50 step (forward, loss, backward, SGD update) with each BatchNorm.

Variants: ``torch`` (torch's BatchNorm), ``fusedbn`` (the same model after fusedbn.convert_model) and
``fusedbn-epilogues`` (fusedbn with the ReLUs and the bottlenecks' residual adds fused into the
BatchNorms, fusedbn.bench.resnet.fuse_epilogues). Modes: ``eager``; ``cuda-graph``, the whole step
captured once and replayed; ``compile`` and ``compile-reduce-overhead``, the model under torch.compile
in that mode. Precisions: ``bf16`` (autocast), ``fp16`` (autocast and a GradScaler), ``fp32``.

Every case starts from the same weights and the same synthetic batch (random images and labels made
on the device), warms up, then times its steps: images/s and wall time per step (timed loop, one
synchronisation at its end), GPU time per step (CUDA events, median), host time per step (the
time to enqueue one step, median; the step is host-bound when it exceeds the GPU time), then profiles
a few more steps for each kernel's device time and the BatchNorm share of it. Each case's losses over
the timed steps, and its running statistics after them, are compared with those of the torch eager
case of the same batch, precision and layout (tolerances in TOLERANCES).

Cases run mode by mode (eager first), so a time budget that runs out costs the slower-to-prepare modes.
Writes OUT/training_step.csv, OUT/training_step_kernels.csv, OUT/training_step.txt and
OUT/training_step.png. ``--smoke`` is the CPU check of the harness: a tiny ResNet on 16x16 images,
eager only, a few steps.
"""

import argparse
import copy
import csv
import dataclasses
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fusedbn.backend import backend_for
from fusedbn.bench.cases import CHANNELS_LAST, LAYOUTS, option_type, parse_choices
from fusedbn.bench.profiling import KernelTime, batchnorm_share, kernel_times
from fusedbn.bench.resnet import fuse_epilogues, resnet50, tiny_resnet
from fusedbn.bench.results import device_name, error_status, git_commit
from fusedbn.bench.timing import synchronize
from fusedbn.convert import convert_model
from fusedbn.outputs import OutputFolderError, output_folder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TORCH_BN = "torch"
FUSEDBN = "fusedbn"
EPILOGUES = "fusedbn-epilogues"
VARIANTS = (TORCH_BN, FUSEDBN, EPILOGUES)

EAGER = "eager"
CUDA_GRAPH = "cuda-graph"
COMPILE = "compile"
COMPILE_REDUCE_OVERHEAD = "compile-reduce-overhead"
MODES = (EAGER, CUDA_GRAPH, COMPILE, COMPILE_REDUCE_OVERHEAD)
CUDA_ONLY_MODES = (CUDA_GRAPH, COMPILE_REDUCE_OVERHEAD)

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Tolerance:
    """How far a case's losses and running statistics may be from torch eager's (relative)."""

    loss: float
    running_stats: float


# Half-precision steps differ by rounding from the first BatchNorm on, and SGD carries the
# differences into the weights, so these grow with the number of steps; they suit tens of steps.
TOLERANCES = {
    "fp32": Tolerance(loss=1e-3, running_stats=1e-3),
    "fp16": Tolerance(loss=2e-2, running_stats=3e-2),
    "bf16": Tolerance(loss=5e-2, running_stats=8e-2),
}


@dataclass(frozen=True)
class StepCase:
    """One measured configuration."""

    variant: str
    mode: str
    precision: str
    layout: str
    batch: int

    @property
    def group(self) -> tuple[str, str, int]:
        """The cases with the same group are checked against each other."""
        return (self.precision, self.layout, self.batch)

    @property
    def label(self) -> str:
        return f"{self.variant} {self.mode} {self.precision} {self.layout} b{self.batch}"


@dataclass(frozen=True)
class StepSettings:
    """What every case runs: the model, the image size, and how many steps of each kind."""

    model: str  # "resnet50" or "tiny"
    image_size: int
    num_classes: int
    warmup_steps: int
    timed_steps: int
    profile_steps: int
    learning_rate: float = 0.01
    seed: int = 0


@dataclass
class StepResult:
    """What one case measured; ``status`` is "ok", "skipped: ..." or "error: ..."."""

    case: StepCase
    status: str
    backend: str = ""
    images_per_s: float = math.nan
    step_ms: float = math.nan
    gpu_ms: float = math.nan
    host_ms: float = math.nan
    bn_share: float = math.nan
    loss_first: float = math.nan
    loss_last: float = math.nan
    loss_diff: float = math.nan
    stats_diff: float = math.nan
    agrees: str = ""
    prepare_s: float = math.nan
    losses: list[float] = field(default_factory=list, repr=False)
    running_stats: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    kernels: list[KernelTime] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class StepPlan:
    """Which cases to run, in order, within a time budget."""

    device: torch.device
    settings: StepSettings
    variants: tuple[str, ...]
    modes: tuple[str, ...]
    precisions: tuple[str, ...]
    layouts: tuple[str, ...]
    batches: tuple[int, ...]
    time_budget_s: float = math.inf

    def cases(self) -> list[StepCase]:
        """Every case, mode by mode; within a mode group by group, torch's BatchNorm first."""
        return [
            StepCase(variant, mode, precision, layout, batch)
            for mode in self.modes
            for batch in self.batches
            for precision in self.precisions
            for layout in self.layouts
            for variant in self.variants
        ]


# ---------------------------------------------------------------------------------------------
# Building one case: the model, its data, its optimiser, and the step that a mode runs.


def base_model(settings: StepSettings) -> tuple[nn.Module, str]:
    """The model every variant starts from (seeded weights), and where its definition came from."""
    torch.manual_seed(settings.seed)
    if settings.model == "resnet50":
        return resnet50(settings.num_classes)
    if settings.model == "tiny":
        return tiny_resnet(settings.num_classes)
    raise ValueError(f"unknown model {settings.model!r}; choose resnet50 or tiny")


def variant_model(base: nn.Module, variant: str) -> nn.Module:
    """A copy of ``base`` with the BatchNorms of ``variant``."""
    model = copy.deepcopy(base)
    if variant == TORCH_BN:
        return model
    if variant == FUSEDBN:
        return convert_model(model)
    if variant == EPILOGUES:
        return fuse_epilogues(model)
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def synthetic_batch(
    settings: StepSettings, batch: int, layout: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (N, 3, H, W) in ``layout`` and random labels, made on ``device`` from the seed."""
    generator = torch.Generator(device=device).manual_seed(settings.seed + 1)
    size = (batch, 3, settings.image_size, settings.image_size)
    images = torch.randn(size, generator=generator, device=device)
    if layout == CHANNELS_LAST:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, settings.num_classes, (batch,), generator=generator, device=device)
    return images, labels


class TrainStep:
    """One training step of ``model`` on a fixed batch: forward under autocast, cross-entropy loss,
    backward (through a GradScaler for fp16), SGD update. Calling it returns the loss (a device tensor).
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        precision: str,
        learning_rate: float,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        device = images.device
        self.model, self.images, self.labels = model, images, labels
        self.forward = model if forward is None else forward
        self.dtype = PRECISIONS[precision]
        self.autocast = self.dtype != torch.float32
        # fused SGD takes the GradScaler's scale and inf flag on the device: no host synchronisation.
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=learning_rate, momentum=0.9, fused=device.type == "cuda"
        )
        self.scaler = (
            torch.amp.GradScaler(device.type, init_scale=2.0**12, growth_interval=1_000_000)
            if precision == "fp16"
            else None
        )

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def update(self) -> torch.Tensor:
        """Forward, backward and optimiser step, leaving the gradients in place (what a graph captures)."""
        with torch.autocast(self.images.device.type, dtype=self.dtype, enabled=self.autocast):
            loss = F.cross_entropy(self.forward(self.images), self.labels)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.detach()

    def __call__(self) -> torch.Tensor:
        self.zero_grad()
        return self.update().clone()


def graph_step(step: TrainStep, warmup_steps: int) -> Callable[[], torch.Tensor]:
    """Capture ``step`` in a CUDA graph after ``warmup_steps`` steps on a side stream; returns its replay.

    The warm-up steps also initialise the optimiser's momentum and the GradScaler's state, which
    the captured step then updates in place on every replay.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    step.zero_grad()
    with torch.cuda.graph(graph):
        static_loss = step.update()

    def replay() -> torch.Tensor:
        graph.replay()
        return static_loss.clone()

    return replay


def _marking_step_begins(step: TrainStep) -> Callable[[], torch.Tensor]:
    """``step``, first telling torch.compile's CUDA-graph trees that a new step begins (so the last
    step's outputs may be overwritten)."""

    def marked() -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return step()

    return marked


def prepared_step(case: StepCase, model: nn.Module, plan: StepPlan) -> Callable[[], torch.Tensor]:
    """The warmed-up step that ``case.mode`` times: ``plan.settings.warmup_steps`` steps already ran."""
    settings, device = plan.settings, plan.device
    memory_format = torch.channels_last if case.layout == CHANNELS_LAST else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).train()
    images, labels = synthetic_batch(settings, case.batch, case.layout, device)
    forward = None
    if case.mode in (COMPILE, COMPILE_REDUCE_OVERHEAD):
        forward = torch.compile(model, mode="reduce-overhead" if case.mode != COMPILE else None)
    step = TrainStep(model, images, labels, case.precision, settings.learning_rate, forward)
    if case.mode == CUDA_GRAPH:
        return graph_step(step, settings.warmup_steps)
    run = _marking_step_begins(step) if case.mode == COMPILE_REDUCE_OVERHEAD else step
    for _ in range(settings.warmup_steps):
        run()
    synchronize(device)
    return run


# ---------------------------------------------------------------------------------------------
# Measuring one case.


@dataclass(frozen=True)
class StepTiming:
    """One case's timed steps: each step's loss, the mean wall time per step and the median GPU and
    host (enqueue) times per step, in milliseconds."""

    losses: list[float]
    step_ms: float
    gpu_ms: float
    host_ms: float


def time_steps(step: Callable[[], torch.Tensor], device: torch.device, steps: int) -> StepTiming:
    """Run ``steps`` steps back to back: wall, GPU (CUDA events, median) and enqueue time per step."""
    cuda = device.type == "cuda"
    events = (
        [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        if cuda
        else []
    )
    losses, host_s = [], []
    synchronize(device)
    start = time.perf_counter()
    for index in range(steps):
        if cuda:
            events[index][0].record()
        enqueue = time.perf_counter()
        losses.append(step())
        host_s.append(time.perf_counter() - enqueue)
        if cuda:
            events[index][1].record()
    synchronize(device)
    wall_s = time.perf_counter() - start
    gpu_ms = statistics.median(a.elapsed_time(b) for a, b in events) if cuda else math.nan
    return StepTiming(
        losses=torch.stack(losses).float().cpu().tolist(),
        step_ms=wall_s / steps * 1e3,
        gpu_ms=gpu_ms,
        host_ms=statistics.median(host_s) * 1e3,
    )


def running_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm's running mean and variance, by state_dict name, as float32 CPU tensors."""
    return {
        name: value.detach().float().cpu().clone()
        for name, value in model.state_dict().items()
        if name.endswith(("running_mean", "running_var"))
    }


def run_case(case: StepCase, plan: StepPlan, base: nn.Module) -> StepResult:
    """Build, warm up, time and profile one case; a failure is recorded in the result, not raised."""
    device = plan.device
    if device.type != "cuda" and case.mode in CUDA_ONLY_MODES:
        return StepResult(case, f"skipped: {case.mode} needs CUDA")
    backend = "torch" if case.variant == TORCH_BN else backend_for(device)
    start = time.perf_counter()
    try:
        model = variant_model(base, case.variant)
        step = prepared_step(case, model, plan)
        prepare_s = time.perf_counter() - start
        timing = time_steps(step, device, plan.settings.timed_steps)
        stats = running_statistics(model)
        kernels = (
            kernel_times(step, device, plan.settings.profile_steps) if plan.settings.profile_steps else []
        )
    except Exception as error:  # one failing case must not end the run; its row says why
        return StepResult(case, error_status(error), backend)
    batch = case.batch
    return StepResult(
        case,
        "ok",
        backend,
        images_per_s=batch / timing.step_ms * 1e3,
        step_ms=timing.step_ms,
        gpu_ms=timing.gpu_ms,
        host_ms=timing.host_ms,
        bn_share=batchnorm_share(kernels),
        loss_first=timing.losses[0],
        loss_last=timing.losses[-1],
        prepare_s=prepare_s,
        losses=timing.losses,
        running_stats=stats,
        kernels=kernels,
    )


def relative_gap(actual: list[float] | torch.Tensor, expected: list[float] | torch.Tensor) -> float:
    """Largest |actual - expected| over the largest |expected| (NaN anywhere gives NaN)."""
    actual, expected = torch.as_tensor(actual).float(), torch.as_tensor(expected).float()
    if actual.shape != expected.shape:
        raise ValueError(f"cannot compare shapes {tuple(actual.shape)} and {tuple(expected.shape)}")
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def _torch_eager_by_group(results: list[StepResult]) -> dict[tuple[str, str, int], StepResult]:
    """The measured torch-BatchNorm eager result of each group: the reference its cases are held to."""
    return {r.case.group: r for r in results if r.ok and r.case.variant == TORCH_BN and r.case.mode == EAGER}


def check_agreement(results: list[StepResult]) -> None:
    """Fill in each measured result's loss and running-statistics gaps from the torch eager result of
    its group, and whether they are within TOLERANCES ("yes", "NO", or "-" without a reference)."""
    references = _torch_eager_by_group(results)
    for result in results:
        reference = references.get(result.case.group)
        if not result.ok:
            continue
        if reference is None:
            result.agrees = "-"
            continue
        result.loss_diff = relative_gap(result.losses, reference.losses)
        result.stats_diff = max(
            relative_gap(result.running_stats[name], value) for name, value in reference.running_stats.items()
        )
        tolerance = TOLERANCES[result.case.precision]
        within = result.loss_diff <= tolerance.loss and result.stats_diff <= tolerance.running_stats
        result.agrees = "yes" if within else "NO"


def _release_memory(device: torch.device) -> None:
    """Free what the last case left (compiled graphs, CUDA graphs, cached blocks) before the next."""
    torch.compiler.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_plan(
    plan: StepPlan, base: nn.Module, on_result: Callable[[list[StepResult]], None] | None = None
) -> list[StepResult]:
    """Run every case of ``plan``, each starting from a copy of ``base``, within the time budget.

    ``on_result(results so far)`` is called after each case; the agreement with torch eager is
    filled in once all cases ran.
    """
    start = time.perf_counter()
    results = []
    for case in plan.cases():
        if time.perf_counter() - start > plan.time_budget_s:
            result = StepResult(case, f"skipped: time budget of {plan.time_budget_s:g} s spent")
        else:
            result = run_case(case, plan, base)
        results.append(result)
        _release_memory(plan.device)
        if on_result is not None:
            on_result(results)
    check_agreement(results)
    return results


# ---------------------------------------------------------------------------------------------
# Reporting.

CSV_FILE = "training_step.csv"
KERNELS_FILE = "training_step_kernels.csv"
SUMMARY_FILE = "training_step.txt"
PLOT_FILE = "training_step.png"
RESULT_COLUMNS = (
    "variant", "mode", "precision", "layout", "batch", "status", "backend", "images_per_s", "step_ms",
    "gpu_ms", "host_ms", "bn_share", "loss_first", "loss_last", "loss_diff", "stats_diff", "agrees",
    "prepare_s",
)  # fmt: skip


def _row(result: StepResult) -> dict[str, object]:
    values = dataclasses.asdict(result.case) | {
        name: getattr(result, name) for name in RESULT_COLUMNS if not hasattr(result.case, name)
    }
    return {name: values[name] for name in RESULT_COLUMNS}


def write_csv(results: list[StepResult], info: dict[str, str], out: Path) -> list[Path]:
    """Write one row per case and one row per (case, kernel) to ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / CSV_FILE, out / KERNELS_FILE]
    with paths[0].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [*info, *RESULT_COLUMNS])
        writer.writeheader()
        writer.writerows(info | _row(r) for r in results)
    with paths[1].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "variant",
                "mode",
                "precision",
                "layout",
                "batch",
                "kernel",
                "device_us_per_step",
                "launches_per_step",
                "batchnorm",
            ]
        )
        for result in results:
            case = result.case
            for kernel in result.kernels:
                writer.writerow(
                    [
                        case.variant,
                        case.mode,
                        case.precision,
                        case.layout,
                        case.batch,
                        kernel.name,
                        f"{kernel.device_us:.2f}",
                        f"{kernel.launches:g}",
                        int(kernel.batchnorm),
                    ]
                )
    return paths


def _number(value: float, width: int, spec: str) -> str:
    return f"{'-' if math.isnan(value) else format(value, spec):>{width}}"


def _case_line(r: StepResult, torch_images_per_s: float) -> str:
    c = r.case
    head = f"{c.variant:<18} {c.mode:<24} {c.precision:<5} {c.layout:<13} {c.batch:>5}"
    if not r.ok:
        return f"{head} {r.status}"
    return (
        f"{head} {r.images_per_s:>8.1f} {_number(r.images_per_s / torch_images_per_s, 7, '.2f')}x "
        f"{r.step_ms:>8.2f} {_number(r.gpu_ms, 8, '.2f')} {r.host_ms:>8.2f} "
        f"{_number(r.bn_share * 100, 5, '.1f')} {_number(r.loss_diff, 8, '.1e')} "
        f"{_number(r.stats_diff, 9, '.1e')} {r.agrees:<6} {r.backend}"
    )


def format_summary(results: list[StepResult], info: dict[str, str], top_kernels: int = 8) -> str:
    """The run's table (one line per case, with its speed relative to torch eager), then each case's
    longest-running BatchNorm kernels, then failures."""
    lines = [" ".join(f"{k}={v}" for k, v in info.items()), ""]
    header = (
        f"{'variant':<18} {'mode':<24} {'prec':<5} {'layout':<13} {'batch':>5} {'img/s':>8} "
        f"{'vs torch':>8} {'step ms':>8} {'gpu ms':>8} {'host ms':>8} {'BN %':>5} {'loss gap':>8} "
        f"{'stats gap':>9} {'agrees':<6} backend"
    )
    lines.append(header)
    eager_torch = _torch_eager_by_group(results)
    for r in results:
        reference = eager_torch.get(r.case.group)
        lines.append(_case_line(r, reference.images_per_s if reference else math.nan))
    lines += [
        "",
        "vs torch: images/s over torch BatchNorm's in eager mode, same precision, layout and batch.",
        "Tolerances (relative, loss over the timed steps / running statistics after them): "
        + ", ".join(f"{p} {t.loss:g}/{t.running_stats:g}" for p, t in TOLERANCES.items()),
    ]
    for r in (r for r in results if r.kernels):
        lines += ["", f"BatchNorm kernels of {r.case.label} (device us per step, launches per step):"]
        bn_kernels = [k for k in r.kernels if k.batchnorm][:top_kernels]
        lines += [f"  {k.device_us:>10.1f} {k.launches:>6g}  {k.name[:110]}" for k in bn_kernels]
    problems = [r for r in results if r.status.startswith("error") or r.agrees == "NO"]
    if problems:
        lines += [
            "",
            *(
                f"PROBLEM {r.case.label}: {r.status if not r.ok else 'disagrees with torch eager'}"
                for r in problems
            ),
        ]
    return "\n".join(lines)


def plot_figure(results: list[StepResult], info: dict[str, str]) -> "Figure | None":
    """A bar chart of images/s per case, a group of bars per (mode, precision, layout, batch), each bar
    labelled with its variant and what ran its BatchNorm; None when no case was measured."""
    measured = [r for r in results if r.ok]
    if not measured:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys((r.case.mode, *r.case.group) for r in measured))
    variants = list(dict.fromkeys(r.case.variant for r in measured))
    backends = {r.case.variant: r.backend for r in measured}
    value = {((r.case.mode, *r.case.group), r.case.variant): r.images_per_s for r in measured}
    figure = Figure(figsize=(max(7.0, 1.2 * len(groups) + 2), 4.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        xs = [g + i * width for g, key in enumerate(groups) if (key, variant) in value]
        ys = [value[(key, variant)] for key in groups if (key, variant) in value]
        axes.bar(xs, ys, width, label=f"{variant} (BatchNorm run by {backends[variant]})", color=f"C{i}")
    axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    axes.set_xticklabels(
        [f"{mode}\n{precision}\n{layout}\nbatch {batch}" for mode, precision, layout, batch in groups],
        fontsize=7,
    )
    axes.set_ylabel("images/s (higher is better)")
    figure.suptitle(
        f"Training steps of {info['model']} at {info['image_size']}x{info['image_size']} on {info['device']}",
        fontsize=10,
    )
    # Below the case labels, where it hides no bar.
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=min(len(variants), 2))
    figure.tight_layout()
    return figure


def write_plot(results: list[StepResult], info: dict[str, str], out: Path) -> Path | None:
    """Write :func:`plot_figure` to ``out``/training_step.png; returns its path, or None when no case was
    measured."""
    figure = plot_figure(results, info)
    if figure is None:
        return None
    path = out / PLOT_FILE
    figure.savefig(path, dpi=110)
    return path


# ---------------------------------------------------------------------------------------------
# Command line.

GPU_DEFAULTS = dict(
    model="resnet50",
    image_size=224,
    variants=",".join(VARIANTS),
    modes=",".join(MODES),
    precisions="bf16,fp16",
    layouts="channels_last,nchw",
    batches="128,64",
    warmup=20,
    steps=50,
    profile_steps=3,
)
SMOKE_DEFAULTS = dict(
    model="tiny",
    image_size=16,
    variants=",".join(VARIANTS),
    modes=EAGER,
    precisions="fp32",
    layouts="channels_last",
    batches="4",
    warmup=1,
    steps=2,
    profile_steps=0,
)


def _choices(allowed: tuple[str, ...], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        return tuple(parse_choices(text, allowed, what))

    return option_type(parse)


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(
            f"batch sizes must be at least 2 (BatchNorm trains on them), got {text!r}"
        )
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training-step benchmark's options to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU harness check in seconds: tiny ResNet, 16x16 images, eager, fp32",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/training-step"), help="output folder")
    parser.add_argument("--model", choices=("resnet50", "tiny"), help="default: resnet50; smoke: tiny")
    parser.add_argument("--image-size", type=int, help="default: 224; smoke: 16")
    parser.add_argument(
        "--variants", type=_choices(VARIANTS, "variant"), help=f"default: {','.join(VARIANTS)}"
    )
    parser.add_argument(
        "--modes", type=_choices(MODES, "mode"), help=f"default: {','.join(MODES)}; smoke: eager"
    )
    parser.add_argument(
        "--precisions",
        type=_choices(tuple(PRECISIONS), "precision"),
        help="bf16, fp16, fp32 (default: bf16,fp16; smoke: fp32)",
    )
    parser.add_argument("--layouts", type=_choices(LAYOUTS, "layout"), help="default: channels_last,nchw")
    parser.add_argument("--batches", type=_batches, help="default: 128,64; smoke: 4")
    parser.add_argument("--warmup", type=int, help="warm-up steps per case (default: 20; smoke: 1)")
    parser.add_argument("--steps", type=int, help="timed steps per case (default: 50; smoke: 2)")
    parser.add_argument(
        "--profile-steps",
        type=int,
        help="steps profiled per case for kernel times and the BN share, 0: none (default: 3)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=math.inf,
        metavar="SECONDS",
        help="start no case after this long; the rest are recorded as skipped (default: none)",
    )


def build_plan(args: argparse.Namespace) -> StepPlan:
    """The StepPlan that parsed options ask for: each option given, else its preset's default."""
    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS

    def pick(name: str, parse: Callable[[str], object] = lambda v: v) -> object:
        given = getattr(args, name)
        return given if given is not None else parse(defaults[name])

    settings = StepSettings(
        model=pick("model"),
        image_size=pick("image_size"),
        num_classes=10 if pick("model") == "tiny" else 1000,
        warmup_steps=pick("warmup"),
        timed_steps=pick("steps"),
        profile_steps=pick("profile_steps"),
    )
    return StepPlan(
        device=torch.device("cpu" if args.smoke else "cuda"),
        settings=settings,
        variants=pick("variants", _choices(VARIANTS, "variant")),
        modes=pick("modes", _choices(MODES, "mode")),
        precisions=pick("precisions", _choices(tuple(PRECISIONS), "precision")),
        layouts=pick("layouts", _choices(LAYOUTS, "layout")),
        batches=pick("batches", _batches),
        time_budget_s=args.time_budget,
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with parsed options: 0 when every case ran and agreed, 1 otherwise, 2 when it
    cannot start."""
    plan = build_plan(args)
    if plan.device.type == "cuda" and not torch.cuda.is_available():
        print("training step: error: no CUDA device (--smoke runs the CPU check)", file=sys.stderr)
        return 2
    if plan.settings.timed_steps < 1 or plan.settings.warmup_steps < 1:
        print("training step: error: --steps and --warmup must be at least 1", file=sys.stderr)
        return 2
    if plan.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        with output_folder(args.out):
            return _measure_and_write(plan, args.out)
    except OutputFolderError as error:
        print(f"training step: error: {error}", file=sys.stderr)
        return 2


def _measure_and_write(plan: StepPlan, out: Path) -> int:
    """Run ``plan``, write its files into ``out`` as :func:`run` says, and return the exit code."""
    base, source = base_model(plan.settings)
    info = {
        "device": device_name(plan.device),
        "torch": torch.__version__,
        "model": source,
        "image_size": str(plan.settings.image_size),
        "timed_steps": str(plan.settings.timed_steps),
        "commit": git_commit(),
    }

    def progress(results: list[StepResult]) -> None:
        # The CSVs are rewritten after every case, so a run that is cut short keeps what it measured.
        write_csv(results, info, out)
        result = results[-1]
        speed = f"{result.images_per_s:.1f} img/s" if result.ok else result.status
        print(f"{result.case.label}: {speed}", flush=True)

    results = run_plan(plan, base, progress)
    paths = write_csv(results, info, out)
    text = format_summary(results, info)
    (out / SUMMARY_FILE).write_text(text + "\n")
    plot = write_plot(results, info, out)
    print("\n" + text)
    print(
        f"\nwrote {', '.join(str(p) for p in [*paths, out / SUMMARY_FILE] + ([plot] if plot else []))}"
    )
    failed = any(r.status.startswith("error") or r.agrees == "NO" for r in results)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fusedbn.bench.training_step``."""
    parser = argparse.ArgumentParser(prog="python -m fusedbn.bench.training_step", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
