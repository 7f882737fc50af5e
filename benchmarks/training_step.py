"""Training-step benchmark: a whole ResNet-50 step (forward, loss, backward, SGD update) with each BatchNorm.

Variants: ``torch``, ``fusedbn`` (after fusedbn.convert_model, running fusedbn's kernels: backend "triton"),
``fusedbn-auto`` (the same as users get it: backend "auto", the cost model's choice per layer) and
``fusedbn-epilogues`` (fusedbn's kernels with the ReLUs and residual adds fused into the BatchNorms).
Executions: ``eager``, ``cuda-graph`` (the step captured once, replayed), ``compile`` and
``compile-reduce-overhead`` (torch.compile modes). Precisions: ``bf16`` (autocast), ``fp16`` (autocast and a
GradScaler), ``fp32``. Every case starts from the same weights and synthetic batch, warms up, then reports
images/s, wall, GPU (CUDA events) and host (enqueue) time per step, each kernel's device time and the
BatchNorm share, and whether its losses and running statistics are within TOLERANCES of torch eager's. Cases
run execution by execution, eager first, within ``--time-budget``. Writes OUT/training_step.csv,
OUT/training_step_kernels.csv, OUT/training_step.txt and OUT/training_step.png.
``--smoke``: a tiny ResNet on 16x16 images, eager, on the CPU.
"""

import argparse
import copy
import dataclasses
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fusedbn.bench.cases import CHANNELS_LAST, LAYOUTS, NCHW, choices, integers, positive
from fusedbn.bench.core import backend_for, convert_model
from fusedbn.bench.profiling import KernelTime, batchnorm_share, kernel_times
from fusedbn.bench.providers import fusedbn_backend, relative_difference
from fusedbn.bench.resnet import fuse_epilogues, resnet50, tiny_resnet
from fusedbn.bench.results import error_status
from fusedbn.bench.timing import Budget, synchronize, time_calls
from fusedbn.cli import OneLineErrorParser
from fusedbn.outputs import OutputFolderError, output_folder
from fusedbn.records import RunRecord, run_record, table, write_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TORCH_BN = "torch"
FUSEDBN = "fusedbn"
AUTO = "fusedbn-auto"
EPILOGUES = "fusedbn-epilogues"
VARIANTS = (TORCH_BN, FUSEDBN, AUTO, EPILOGUES)

EAGER = "eager"
CUDA_GRAPH = "cuda-graph"
COMPILE = "compile"
COMPILE_REDUCE_OVERHEAD = "compile-reduce-overhead"
EXECUTIONS = (EAGER, CUDA_GRAPH, COMPILE, COMPILE_REDUCE_OVERHEAD)
CUDA_ONLY = (CUDA_GRAPH, COMPILE_REDUCE_OVERHEAD)

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODELS = {"resnet50": resnet50, "tiny": tiny_resnet}  # by name: number of classes -> (model, source)


class Tolerance(NamedTuple):
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
    execution: str
    precision: str
    layout: str
    batch: int

    @property
    def group(self) -> tuple[str, str, int]:
        """The cases with the same group are checked against each other."""
        return (self.precision, self.layout, self.batch)

    @property
    def label(self) -> str:
        return f"{self.variant} {self.execution} {self.precision} {self.layout} b{self.batch}"


@dataclass(frozen=True)
class StepSettings:
    """What every case runs: the model, the image size, and how many steps of each kind."""

    model: str  # a key of MODELS
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
    executions: tuple[str, ...]
    precisions: tuple[str, ...]
    layouts: tuple[str, ...]
    batches: tuple[int, ...]
    time_budget_s: float = math.inf

    def cases(self) -> list[StepCase]:
        """Every case, execution by execution; within one group by group, torch's BatchNorm first."""
        return [
            StepCase(variant, execution, precision, layout, batch)
            for execution in self.executions
            for batch in self.batches
            for precision in self.precisions
            for layout in self.layouts
            for variant in self.variants
        ]


def base_model(settings: StepSettings) -> tuple[nn.Module, str]:
    """The model every variant starts from (seeded weights), and where its definition came from."""
    if settings.model not in MODELS:
        raise ValueError(f"unknown model {settings.model!r}; choose {' or '.join(MODELS)}")
    torch.manual_seed(settings.seed)
    return MODELS[settings.model](settings.num_classes)


def variant_model(base: nn.Module, variant: str, device: torch.device) -> nn.Module:
    """A copy of ``base`` with the BatchNorms of ``variant``."""
    model = copy.deepcopy(base)
    if variant == TORCH_BN:
        return model
    if variant in (FUSEDBN, AUTO):
        return convert_model(model, backend=fusedbn_backend(variant != AUTO, device))
    if variant == EPILOGUES:
        return fuse_epilogues(model, backend=fusedbn_backend(variant != AUTO, device))
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


class TrainStep:
    """One training step of ``model`` on a fixed batch (autocast, cross-entropy, backward through a GradScaler
    for fp16, SGD) run as ``execution`` says (a CUDA graph aside: :func:`graph_step`); calling it returns the
    loss (a device tensor)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision: str,
                 learning_rate: float, execution: str = EAGER) -> None:  # fmt: skip
        device = images.device
        self.images, self.labels = images, labels
        self.forward = model
        if execution in (COMPILE, COMPILE_REDUCE_OVERHEAD):
            self.forward = torch.compile(model, mode="reduce-overhead" if execution != COMPILE else None)
        # torch.compile's CUDA-graph trees (reduce-overhead) must be told that a new step begins.
        self.mark_step_begin = execution == COMPILE_REDUCE_OVERHEAD
        self.dtype = PRECISIONS[precision]
        # fused SGD takes the GradScaler's scale and inf flag on the device: no host synchronisation.
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=learning_rate, momentum=0.9, fused=device.type == "cuda"
        )
        self.scaler = (torch.amp.GradScaler(device.type, init_scale=2.0**12, growth_interval=1_000_000)
                       if precision == "fp16" else None)  # fmt: skip

    def update(self) -> torch.Tensor:
        """Forward, backward and optimiser step, leaving the gradients in place (what a graph captures)."""
        with torch.autocast(self.images.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
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
        if self.mark_step_begin:
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        return self.update().clone()


def graph_step(step: TrainStep, warmup_steps: int) -> Callable[[], torch.Tensor]:
    """Capture ``step`` in a CUDA graph after ``warmup_steps`` steps on a side stream (which set up the
    momentum and GradScaler state the replays update in place); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    step.optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = step.update()

    def replay() -> torch.Tensor:
        graph.replay()
        return static_loss.clone()

    return replay


def prepared_step(case: StepCase, model: nn.Module, plan: StepPlan) -> Callable[[], torch.Tensor]:
    """The warmed-up step that ``case.execution`` times, on random images (N, 3, H, W) in ``case.layout`` and
    random labels made from the seed: ``plan.settings.warmup_steps`` steps already ran."""
    settings, device, batch, size = plan.settings, plan.device, case.batch, plan.settings.image_size
    memory_format = torch.channels_last if case.layout == CHANNELS_LAST else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).train()
    generator = torch.Generator(device=device).manual_seed(settings.seed + 1)
    images = torch.randn((batch, 3, size, size), generator=generator, device=device)
    labels = torch.randint(0, settings.num_classes, (batch,), generator=generator, device=device)
    images = images.contiguous(memory_format=memory_format)
    step = TrainStep(model, images, labels, case.precision, settings.learning_rate, case.execution)
    if case.execution == CUDA_GRAPH:
        return graph_step(step, settings.warmup_steps)
    for _ in range(settings.warmup_steps):
        step()
    synchronize(device)
    return step


def run_case(case: StepCase, plan: StepPlan, base: nn.Module) -> StepResult:
    """Build, warm up, time and profile one case; a failure is recorded in the result, not raised."""
    device = plan.device
    if device.type != "cuda" and case.execution in CUDA_ONLY:
        return StepResult(case, f"skipped: {case.execution} needs CUDA")
    setting = fusedbn_backend(case.variant != AUTO, device)
    backend = "torch" if case.variant == TORCH_BN else backend_for(device, setting)
    start = time.perf_counter()
    try:
        model = variant_model(base, case.variant, device)
        step = prepared_step(case, model, plan)
        prepare_s = time.perf_counter() - start
        steps = time_calls(step, device, plan.settings.timed_steps, keep=True, device_times=True)
        stats = {name: value.detach().float().cpu().clone() for name, value in model.state_dict().items()
                 if name.endswith(("running_mean", "running_var"))}  # fmt: skip
        profile_steps = plan.settings.profile_steps
        kernels = kernel_times(step, device, profile_steps) if profile_steps else []
    except Exception as error:  # one failing case must not end the run; its row says why
        return StepResult(case, error_status(error), backend)
    losses = torch.stack(steps.results).float().cpu().tolist()
    step_ms = steps.wall_s / len(losses) * 1e3
    return StepResult(
        case, "ok", backend, images_per_s=case.batch / step_ms * 1e3, step_ms=step_ms,
        gpu_ms=statistics.median(steps.device_ms) if steps.device_ms else math.nan,
        host_ms=statistics.median(steps.host_s) * 1e3, bn_share=batchnorm_share(kernels),
        loss_first=losses[0], loss_last=losses[-1], prepare_s=prepare_s, losses=losses, running_stats=stats,
        kernels=kernels,
    )  # fmt: skip


def _torch_eager_by_group(results: list[StepResult]) -> dict[tuple[str, str, int], StepResult]:
    """The measured torch-BatchNorm eager result of each group: the reference its cases are held to."""
    return {r.case.group: r for r in results
            if r.ok and r.case.variant == TORCH_BN and r.case.execution == EAGER}  # fmt: skip


def check_agreement(results: list[StepResult]) -> None:
    """Fill in each measured result's loss and running-statistics gaps from the torch eager result of
    its group, and whether they are within TOLERANCES ("yes", "NO", or "-" without a reference)."""
    references = _torch_eager_by_group(results)
    for result in (r for r in results if r.ok):
        reference = references.get(result.case.group)
        if reference is None:
            result.agrees = "-"
            continue
        result.loss_diff = relative_difference(torch.tensor(result.losses), torch.tensor(reference.losses))
        result.stats_diff = relative_difference([result.running_stats[n] for n in reference.running_stats],
                                                list(reference.running_stats.values()))  # fmt: skip
        tolerance = TOLERANCES[result.case.precision]
        within = result.loss_diff <= tolerance.loss and result.stats_diff <= tolerance.running_stats
        result.agrees = "yes" if within else "NO"


def run_plan(
    plan: StepPlan, base: nn.Module, on_result: Callable[[list[StepResult]], None] | None = None
) -> list[StepResult]:
    """Run every case of ``plan`` from a copy of ``base`` within the time budget, calling ``on_result(results
    so far)`` after each; then fill in the agreement with torch eager."""
    budget = Budget(plan.time_budget_s)
    results = []
    for case in plan.cases():
        result = StepResult(case, f"skipped: {budget}") if budget.spent() else run_case(case, plan, base)
        results.append(result)
        torch.compiler.reset()  # free what the case left (compiled graphs, CUDA graphs, cached blocks)
        gc.collect()
        torch.cuda.empty_cache()  # nothing to do where CUDA was not initialised
        if on_result is not None:
            on_result(results)
    check_agreement(results)
    return results


CSV_FILE = "training_step.csv"
KERNELS_FILE = "training_step_kernels.csv"
SUMMARY_FILE = "training_step.txt"
PLOT_FILE = "training_step.png"
CASE_COLUMNS = list(StepCase.__dataclass_fields__)
RESULT_COLUMNS = [f.name for f in dataclasses.fields(StepResult) if f.repr and f.name != "case"]
KERNEL_COLUMNS = ["kernel", "device_us_per_step", "launches_per_step", "batchnorm"]


def write_csvs(results: list[StepResult], record: RunRecord, out: Path) -> list[Path]:
    """Write one row per case and one row per (case, kernel) into ``out``; returns the paths."""
    paths = [out / CSV_FILE, out / KERNELS_FILE]
    record_row = dataclasses.asdict(record)
    rows = [record_row | dataclasses.asdict(r.case) | {c: getattr(r, c) for c in RESULT_COLUMNS}
            for r in results]  # fmt: skip
    write_csv(paths[0], rows, [*record_row, *CASE_COLUMNS, *RESULT_COLUMNS])
    kernels = [dataclasses.asdict(r.case) | {"kernel": k.name, "device_us_per_step": f"{k.device_us:.2f}",
                                             "launches_per_step": f"{k.launches:g}",
                                             "batchnorm": int(k.batchnorm)}
               for r in results for k in r.kernels]  # fmt: skip
    write_csv(paths[1], kernels, CASE_COLUMNS + KERNEL_COLUMNS)
    return paths


def _number(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def format_summary(results: list[StepResult], record: RunRecord, top_kernels: int = 8) -> str:
    """The run's record, its table (a row per case, with its speed relative to torch eager), then each
    case's longest-running BatchNorm kernels, then failures."""
    eager_torch = _torch_eager_by_group(results)
    rows = []
    for r in results:
        reference = eager_torch.get(r.case.group)
        speedup = r.images_per_s / reference.images_per_s if reference else math.nan
        rows.append(dataclasses.asdict(r.case) | {"status": r.status} | ({
            "img/s": f"{r.images_per_s:.1f}", "vs torch": _number(speedup, ".2f"),
            "step ms": f"{r.step_ms:.2f}", "gpu ms": _number(r.gpu_ms, ".2f"), "host ms": f"{r.host_ms:.2f}",
            "BN %": _number(r.bn_share * 100, ".1f"), "loss gap": _number(r.loss_diff, ".1e"),
            "stats gap": _number(r.stats_diff, ".1e"), "agrees": r.agrees, "backend": r.backend,
        } if r.ok else {}))  # fmt: skip
    lines = [
        record.header(), "", table(rows), "",
        "vs torch: images/s over torch BatchNorm's in eager mode, same precision, layout and batch.",
        "Tolerances (relative, loss over the timed steps / running statistics after them): "
        + ", ".join(f"{p} {t.loss:g}/{t.running_stats:g}" for p, t in TOLERANCES.items()),
    ]  # fmt: skip
    for r in (r for r in results if r.kernels):
        lines += ["", f"BatchNorm kernels of {r.case.label} (device us per step, launches per step):"]
        bn_kernels = [k for k in r.kernels if k.batchnorm][:top_kernels]
        lines += [f"  {k.device_us:>10.1f} {k.launches:>6g}  {k.name[:110]}" for k in bn_kernels]
    problems = [r for r in results if r.status.startswith("error") or r.agrees == "NO"]
    lines += ["", *(f"PROBLEM {r.case.label}: {r.status if not r.ok else 'disagrees with torch eager'}"
                    for r in problems)] if problems else []  # fmt: skip
    return "\n".join(lines)


def plot_figure(results: list[StepResult], title: str) -> "Figure | None":
    """A bar chart of images/s per case, a group of bars per (execution, precision, layout, batch), each
    bar labelled with its variant and what ran its BatchNorm; None when no case was measured."""
    measured = [r for r in results if r.ok]
    if not measured:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys((r.case.execution, *r.case.group) for r in measured))
    backends = {r.case.variant: r.backend for r in measured}  # by variant, in the order measured
    value = {((r.case.execution, *r.case.group), r.case.variant): r.images_per_s for r in measured}
    figure = Figure(figsize=(max(7.0, 1.2 * len(groups) + 2), 4.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    width = 0.8 / len(backends)
    for i, (variant, backend) in enumerate(backends.items()):
        xs = [g + i * width for g, key in enumerate(groups) if (key, variant) in value]
        ys = [value[(key, variant)] for key in groups if (key, variant) in value]
        axes.bar(xs, ys, width, label=f"{variant} (BatchNorm run by {backend})", color=f"C{i}")
    axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    axes.set_xticklabels([f"{e}\n{p}\n{layout}\nbatch {b}" for e, p, layout, b in groups], fontsize=7)
    axes.set_ylabel("images/s (higher is better)")
    figure.suptitle(title, fontsize=10)
    # Below the case labels, where it hides no bar.
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=min(len(backends), 2))
    figure.tight_layout()
    return figure


GPU_DEFAULTS = dict(model="resnet50", image_size=224, variants=VARIANTS, executions=EXECUTIONS,
                    precisions=("bf16", "fp16"), layouts=(CHANNELS_LAST, NCHW), batches=(128, 64), warmup=20,
                    steps=50, profile_steps=3)  # fmt: skip
SMOKE_DEFAULTS = GPU_DEFAULTS | dict(model="tiny", image_size=16, executions=(EAGER,), precisions=("fp32",),
                                     layouts=(CHANNELS_LAST,), batches=(4,), warmup=1, steps=2,
                                     profile_steps=0)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training-step benchmark's options to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--smoke", action="store_true", help="CPU check in seconds: tiny ResNet, 16x16 images, eager, fp32")
    add("--out", type=Path, default=Path("runs/training-step"), help="output folder")
    add("--model", choices=tuple(MODELS), help="default: resnet50; smoke: tiny")
    add("--image-size", type=positive(int), help="default: 224; smoke: 16")
    add("--variants", type=choices(VARIANTS, "variant"), help=f"default: {','.join(VARIANTS)}")
    add("--executions", type=choices(EXECUTIONS, "execution"),
        help=f"how each step runs: {', '.join(EXECUTIONS)} (default: all; smoke: eager)")
    add("--precisions", type=choices(tuple(PRECISIONS), "precision"),
        help="bf16, fp16, fp32 (default: bf16,fp16; smoke: fp32)")
    add("--layouts", type=choices(LAYOUTS, "layout"), help="default: channels_last,nchw")
    add("--batches", type=integers("batch sizes", 2), help="each at least 2 (default: 128,64; smoke: 4)")
    add("--warmup", type=positive(int), help="warm-up steps per case (default: 20; smoke: 1)")
    add("--steps", type=positive(int), help="timed steps per case (default: 50; smoke: 2)")
    add("--profile-steps", type=int,
        help="steps profiled per case for kernel times and the BN share, 0: none (default: 3)")
    add("--time-budget", type=float, default=math.inf, metavar="SECONDS",
        help="start no case after this long; the rest are recorded as skipped (default: none)")  # fmt: skip


def build_plan(args: argparse.Namespace) -> StepPlan:
    """The StepPlan that parsed options ask for: each option given, else its preset's default."""
    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS
    pick = {name: default if getattr(args, name) is None else getattr(args, name)
            for name, default in defaults.items()}  # fmt: skip
    model = pick["model"]
    settings = StepSettings(
        model=model, image_size=pick["image_size"], num_classes=10 if model == "tiny" else 1000,
        warmup_steps=pick["warmup"], timed_steps=pick["steps"], profile_steps=pick["profile_steps"],
    )  # fmt: skip
    return StepPlan(
        torch.device("cpu" if args.smoke else "cuda"), settings, time_budget_s=args.time_budget,
        **{name: tuple(pick[name]) for name in ("variants", "executions", "precisions", "layouts", "batches")}
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with parsed options: 0 when every case ran and agreed, 1 otherwise, 2 when it
    cannot start."""
    plan = build_plan(args)
    if plan.device.type == "cuda" and not torch.cuda.is_available():
        print("training step: error: no CUDA device (--smoke runs the CPU check)", file=sys.stderr)
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
    """Run ``plan``, write its files into ``out`` and return the exit code (see :func:`run`)."""
    base, source = base_model(plan.settings)
    record = run_record(plan.device)

    def progress(results: list[StepResult]) -> None:
        # The CSVs are rewritten after every case, so a run that is cut short keeps what it measured.
        write_csvs(results, record, out)
        result = results[-1]
        speed = f"{result.images_per_s:.1f} img/s" if result.ok else result.status
        print(f"{result.case.label}: {speed}", flush=True)

    results = run_plan(plan, base, progress)
    record = record.finished()
    paths = [*write_csvs(results, record, out), out / SUMMARY_FILE]
    size = plan.settings.image_size
    text = f"{source} at {size}x{size}, {plan.settings.timed_steps} timed steps per case\n"
    text += format_summary(results, record)
    paths[-1].write_text(text + "\n")
    figure = plot_figure(results, f"Training steps of {source} at {size}x{size} on {record.device}")
    if figure is not None:
        figure.savefig(out / PLOT_FILE, dpi=110)
        paths.append(out / PLOT_FILE)
    print("\n" + text)
    print(f"\nwrote {', '.join(map(str, paths))}")
    return 1 if any(r.status.startswith("error") or r.agrees == "NO" for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/training_step.py``: run the benchmark with ``argv`` (default: the command line)."""
    parser = OneLineErrorParser(prog="python benchmarks/training_step.py", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
