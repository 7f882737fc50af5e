"""The compile gate: every kernel specialisation fusedbn launches, compiled for real GPUs on the CPU.

``python -m fusedbn.bench.compile_check`` runs fusedbn's public functional API (forward and backward)
over a grid of cases: shapes (ResNet-50's by default) x dtypes x layouts x epilogues (none, relu,
add+relu) x modes (training, eval) x multiprocessor counts (A100 108, H100/H200 132, B200 148, pinned
with LaunchLimits so that the whole-channel or split path is the one that GPU would take). The calls
run on fake tensors (torch's FakeTensorMode: shapes, strides and dtypes, no memory), so ResNet-sized
inputs cost nothing, and every kernel launch is recorded at ``KernelLauncher.__call__`` instead of
being made. Launches that Triton would compile alike are kept once: a tensor counts by its dtype and
whether its address is 16-byte aligned (fake tensors are placed as the CUDA allocator places real
ones, at 512-byte aligned addresses plus their storage offset), an int by whether it is 1, a multiple
of 16 and 32-bit, everything else by its value.

Each specialisation is then compiled for each target (sm_80, sm_90, sm_100) by worker processes
(compile_worker.py) that bind it with Triton's own binder and compile it with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``. A worker that dies (a compiler
segfault) is replaced and the specialisation recorded as a crash. ``--site`` puts another Triton's
site folder (``pip install --target DIR triton==X``) first on the workers' path, to check that version.

The result, per specialisation and target: ok / error / crash / timeout, compile time, num_warps,
registers, spills, shared memory and the width of every global load and store (from the SASS), goes
to OUT/triton-<version>.json; OUT/REPORT.md (kernel_report.py) is rendered from every such file in OUT.
``--subset`` compiles the representative subset the CI test compiles (representative_subset).

Recording needs fusedbn's kernel path on CPU tensors, i.e. ``TRITON_INTERPRET=1`` before fusedbn is
imported; without it the command starts itself again with it set.
"""

import argparse
import contextlib
import datetime
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fusedbn
from fusedbn.backend import TRITON_INTERPRETER, backend_for
from fusedbn.bench.cases import CHANNELS_LAST, NCHW, Shape, option_type, parse_choices, parse_shapes
from fusedbn.kernels import tickets
from fusedbn.kernels.launcher import KernelLauncher
from fusedbn.kernels.layout import LaunchLimits, launch_limits

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}
DTYPE_ALIASES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp64": "float64"}
EPILOGUES = ("none", "relu", "add_relu")
TRAIN, EVAL = "train", "eval"
MODES = (TRAIN, EVAL)
# Streaming multiprocessors of the GPUs the launch choice is pinned to.
MULTIPROCESSORS = {"a100": 108, "h100": 132, "b200": 148}
TARGETS = (80, 90, 100)
# Where the CUDA caching allocator puts a fresh tensor: 512-byte aligned.
ALLOCATION_ALIGNMENT = 512


@dataclass(frozen=True)
class Case:
    """One BatchNorm call, forward and backward, on the fake GPU."""

    shape: Shape
    dtype: str
    layout: str
    epilogue: str
    mode: str
    multiprocessors: int

    @property
    def label(self) -> str:
        return (f"{self.shape.name} {self.dtype} {self.layout} {self.epilogue} {self.mode} "
                f"sm{self.multiprocessors}")


def grid_cases(
    shapes: Iterable[Shape], dtypes: Iterable[str], layouts: Iterable[str], epilogues: Iterable[str],
    modes: Iterable[str], multiprocessors: Iterable[int],
) -> list[Case]:
    """Every combination, less channels_last for shapes without spatial dims (it is nchw there)."""
    cases = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in layouts:
                if layout == CHANNELS_LAST and len(shape.dims) < 3:
                    continue
                for epilogue in epilogues:
                    for mode in modes:
                        for sms in multiprocessors:
                            cases.append(Case(shape, dtype, layout, epilogue, mode, sms))
    return cases


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch: ``kernel`` is ``module:name``; tensors in ``args`` are described
    as {"dtype", "aligned"}, everything else is the value passed."""

    kernel: str
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return self.kernel.split(":")[1]

    def key(self) -> tuple[Any, ...]:
        """What Triton specialises on: launches with equal keys compile to the same kernel."""
        return (self.kernel, tuple(_specialisation_key(arg) for arg in self.args), self.kwargs)


def _specialisation_key(arg: Any) -> Any:
    if isinstance(arg, dict):
        return (arg["dtype"], arg["aligned"])
    if type(arg) is int:
        return ("int", arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31)
    if type(arg) is float:
        return "float"
    return arg


def describe(arg: Any) -> Any:
    """A launch argument as a Launch keeps it (JSON-ready)."""
    if isinstance(arg, torch.Tensor):
        address = ALLOCATION_ALIGNMENT + arg.storage_offset() * arg.element_size()
        return {"dtype": str(arg.dtype).removeprefix("torch."), "aligned": address % 16 == 0}
    return arg


@contextlib.contextmanager
def recording_launches() -> Iterator[list[Launch]]:
    """Within the block, kernel launches are appended to the yielded list instead of being made."""
    launches: list[Launch] = []

    def record(launcher: KernelLauncher, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
        fn = launcher.kernel.fn
        launches.append(Launch(
            f"{fn.__module__}:{fn.__name__}", tuple(grid), tuple(describe(a) for a in args),
            tuple(sorted(kwargs.items())),
        ))

    # The split path's ticket counters made meanwhile are fake tensors: kept apart from the cache
    # that real calls on this thread use (tickets.py), and dropped afterwards.
    with (
        mock.patch.object(KernelLauncher, "__call__", record),
        mock.patch.dict(tickets._counters, clear=True),
    ):
        yield launches


def _layout_tensor(shape: tuple[int, ...], dtype: torch.dtype, layout: str) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=dtype)
    if layout == CHANNELS_LAST:
        memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        tensor = tensor.contiguous(memory_format=memory_format)
    return tensor


def record_case(case: Case) -> list[Launch]:
    """The launches of one training or eval step (forward, then backward) of ``case``.

    The module's parameters are float32 for float16/bfloat16 input (mixed precision) and in the
    input's dtype otherwise; weight, bias and a fused residual require gradients.
    """
    if backend_for("cpu") != TRITON_INTERPRETER:
        raise RuntimeError("recording launches needs TRITON_INTERPRET=1 set before fusedbn is imported")
    dtype = DTYPES[case.dtype]
    param_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    channels = case.shape.num_channels
    with FakeTensorMode(), recording_launches() as launches:
        x = _layout_tensor(case.shape.dims, dtype, case.layout).requires_grad_(True)
        weight = torch.empty(channels, dtype=param_dtype).requires_grad_(True)
        bias = torch.empty(channels, dtype=param_dtype).requires_grad_(True)
        running_mean = torch.empty(channels, dtype=param_dtype)
        running_var = torch.empty(channels, dtype=param_dtype)
        residual = None
        if case.epilogue == "add_relu":
            residual = _layout_tensor(case.shape.dims, dtype, case.layout).requires_grad_(True)
        activation = None if case.epilogue == "none" else "relu"
        with launch_limits(LaunchLimits(multiprocessors=case.multiprocessors)):
            y = fusedbn.fused_batch_norm(
                x, running_mean, running_var, weight, bias, case.mode == TRAIN, 0.1, 1e-5,
                residual=residual, activation=activation,
            )
            y.backward(torch.empty_like(y))
    return launches


@dataclass
class Specialisation:
    """A launch as Triton compiles it, the cases that make it, and its result per target."""

    launch: Launch
    cases: list[int]
    results: dict[int, dict[str, Any]]


def collect_specialisations(cases: list[Case]) -> tuple[list[Specialisation], list[list[int]]]:
    """The distinct specialisations of all cases, and per case the indices of the ones it launches."""
    by_key: dict[tuple[Any, ...], int] = {}
    found: list[Specialisation] = []
    per_case: list[list[int]] = []
    for index, case in enumerate(cases):
        indices = []
        for launch in record_case(case):
            key = launch.key()
            if key not in by_key:
                by_key[key] = len(found)
                found.append(Specialisation(launch, [], {}))
            spec = by_key[key]
            if index not in found[spec].cases:
                found[spec].cases.append(index)
            indices.append(spec)
        per_case.append(indices)
    return found, per_case


def dtype_class(dtype: str) -> str:
    """16-bit, 32-bit or 64-bit floats: the kernels' code differs by class, not within one."""
    return {"float16": "16", "bfloat16": "16", "float32": "32", "float64": "64"}[dtype]


def elements_per_thread(launch: Launch) -> int:
    """Tile elements each thread holds: where register pressure and compiler trouble grow."""
    kwargs = dict(launch.kwargs)
    tile = kwargs.get("BLOCK_N", 1) * kwargs.get("BLOCK_S", 1) * kwargs.get("BLOCK_C", 1)
    return tile // (32 * kwargs.get("num_warps", 4))


# Cases that once crashed the compiler (issue 15: Triton 3.9, sm_90, the fused ReLU's backward
# with a select: whole_channel_backward_kernel and partial_sums_kernel in float16 and bfloat16,
# and partial_sums_kernel on the split path in float32 too): the representative subset always
# compiles every specialisation they launch.
REGRESSION_CASES = (
    ("64x256x56x56", "float16", NCHW, "relu", TRAIN, 132),
    ("64x1024x14x14", "float16", NCHW, "relu", TRAIN, 132),
    ("64x256x14x14", "float32", NCHW, "relu", TRAIN, 132),
    ("64x128x28x28", "float32", NCHW, "relu", TRAIN, 132),
)


def representative_subset(specs: list[Specialisation], cases: list[Case]) -> list[int]:
    """Indices of a few specialisations that launch each kernel with each epilogue, dtype class and
    layout at least once, and all those of the REGRESSION_CASES in ``cases``, in index order.

    A greedy cover: the specialisation covering most uncovered combinations first and, among
    equals, the one with the most elements per thread, so that each combination is compiled at its
    heaviest.
    """
    regressions = {
        i for i, case in enumerate(cases)
        if (case.shape.name, case.dtype, case.layout, case.epilogue, case.mode,
            case.multiprocessors) in REGRESSION_CASES
    }
    covers = []
    for spec in specs:
        covers.append({
            (spec.launch.name, cases[i].epilogue, dtype_class(cases[i].dtype), cases[i].layout)
            for i in spec.cases
        })
    chosen = [i for i, spec in enumerate(specs) if regressions.intersection(spec.cases)]
    uncovered = set().union(*covers) - set().union(*(covers[i] for i in chosen)) if covers else set()
    while uncovered:
        best = max(
            range(len(specs)),
            key=lambda i: (len(covers[i] & uncovered), elements_per_thread(specs[i].launch), -i),
        )
        chosen.append(best)
        uncovered -= covers[best]
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------
# Compiling in worker processes that may crash
# ----------------------------------------------------------------------------------------------


def worker_environment(site: str | None, cache_dir: str) -> dict[str, str]:
    """The workers' environment: compiled kernels (no interpreter), ``site`` first on the path, and
    a Triton cache of their own, so that every specialisation is really compiled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if site:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
    env["TRITON_CACHE_DIR"] = cache_dir
    return env


class Worker:
    """A compile_worker process with at most one task in flight."""

    def __init__(self, env: dict[str, str], log_dir: str, number: int) -> None:
        self.log_path = Path(log_dir) / f"worker-{number}.log"
        self.log = open(self.log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fusedbn.bench.compile_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True,
        )
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the compile worker did not start; see {self.log_path}:\n"
                               + self.log_tail())
        self.hello = json.loads(line)
        self.task: tuple[int, int] | None = None  # (specialisation, target) in flight
        self.started = 0.0

    def send(self, task_id: tuple[int, int], task: dict[str, Any]) -> None:
        self.task, self.started = task_id, time.monotonic()
        self.process.stdin.write(json.dumps(task) + "\n")
        self.process.stdin.flush()

    def log_tail(self, chars: int = 1500) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def _death(returncode: int | None) -> dict[str, Any]:
    if returncode is not None and returncode < 0:
        return {"status": "crash", "signal": signal.Signals(-returncode).name}
    return {"status": "crash", "signal": None, "returncode": returncode}


def compile_all(
    tasks: list[tuple[tuple[int, int], dict[str, Any]]],
    site: str | None,
    jobs: int,
    timeout: float,
    progress: Callable[[int, int, dict[str, int]], None],
) -> tuple[dict[tuple[int, int], dict[str, Any]], dict[str, str]]:
    """Compile every (task id, task) in ``jobs`` workers; results by task id, and the workers' Triton.

    A worker that dies while compiling is replaced: its task is a crash. One that takes longer
    than ``timeout`` seconds is killed: its task timed out.
    """
    results: dict[tuple[int, int], dict[str, Any]] = {}
    counts = {"ok": 0, "error": 0, "crash": 0, "timeout": 0}
    pending = list(reversed(tasks))
    with tempfile.TemporaryDirectory(prefix="fusedbn-compile-") as scratch:
        env = worker_environment(site, os.path.join(scratch, "cache"))
        started = 0
        workers = []
        for _ in range(max(1, min(jobs, len(tasks)))):
            workers.append(Worker(env, scratch, started))
            started += 1
        triton_info = workers[0].hello
        selector = selectors.DefaultSelector()
        try:
            while pending or any(w.task for w in workers):
                for worker in workers:
                    if worker.task is None and pending:
                        worker.send(*pending.pop())
                        selector.register(worker.process.stdout, selectors.EVENT_READ, worker)
                for key, _ in selector.select(timeout=1.0):
                    worker = key.data
                    line = worker.process.stdout.readline()
                    selector.unregister(worker.process.stdout)
                    if line:
                        result = json.loads(line)
                    else:  # the worker died: the compiler crashed on this task
                        worker.process.wait()
                        result = {**_death(worker.process.returncode),
                                  "stderr_tail": worker.log_tail()}
                    results[worker.task] = result
                    counts[result["status"]] += 1
                    worker.task = None
                    progress(len(results), len(tasks), counts)
                    if not line:
                        workers.remove(worker)
                        worker.stop()
                        workers.append(Worker(env, scratch, started))
                        started += 1
                for worker in list(workers):
                    if worker.task and time.monotonic() - worker.started > timeout:
                        selector.unregister(worker.process.stdout)
                        results[worker.task] = {"status": "timeout", "seconds": timeout}
                        counts["timeout"] += 1
                        progress(len(results), len(tasks), counts)
                        workers.remove(worker)
                        worker.stop()
                        workers.append(Worker(env, scratch, started))
                        started += 1
        finally:
            for worker in workers:
                worker.stop()
    return results, triton_info


def task_for(launch: Launch, capability: int) -> dict[str, Any]:
    """The worker's task for compiling ``launch`` for ``capability``."""
    return {"kernel": launch.kernel, "grid": list(launch.grid), "args": list(launch.args),
            "kwargs": dict(launch.kwargs), "capability": capability}


def progress_printer(every_s: float = 15.0) -> Callable[[int, int, dict[str, int]], None]:
    """A progress callback printing one line at most every ``every_s`` seconds, and at the end."""
    start = time.monotonic()
    last = [start]

    def show(done: int, total: int, counts: dict[str, int]) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        elapsed = now - start
        eta = elapsed / done * (total - done) if done else 0.0
        tally = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        print(f"[{done}/{total}] {elapsed:.0f} s, {tally}; about {eta:.0f} s to go",
              file=sys.stderr, flush=True)

    return show


def run_gate(
    cases: list[Case],
    targets: Iterable[int],
    site: str | None = None,
    jobs: int = 2,
    timeout: float = 600.0,
    subset: bool = False,
    progress: Callable[[int, int, dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """Record ``cases``, compile their specialisations (or the representative subset) for every
    target, and return the JSON-ready result (see the module docstring)."""
    targets = list(targets)
    specs, per_case = collect_specialisations(cases)
    chosen = set(representative_subset(specs, cases) if subset else range(len(specs)))
    tasks = [((i, cc), task_for(specs[i].launch, cc)) for i in sorted(chosen) for cc in targets]
    results, triton_info = compile_all(tasks, site, jobs, timeout, progress or (lambda *a: None))
    for (i, cc), result in results.items():
        specs[i].results[cc] = result
    return {
        "triton": triton_info["triton"],
        "triton_path": triton_info["triton_path"],
        "torch": torch.__version__,
        "fusedbn": fusedbn.__version__,
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "targets": targets,
        "subset": subset,
        "cases": [{**asdict(case), "shape": case.shape.name, "launches": per_case[i]}
                  for i, case in enumerate(cases)],
        "specialisations": [
            {"id": i, "kernel": spec.launch.name, "module": spec.launch.kernel.split(":")[0],
             "grid": list(spec.launch.grid), "args": list(spec.launch.args),
             "kwargs": dict(spec.launch.kwargs), "cases": spec.cases,
             "results": {str(cc): result for cc, result in sorted(spec.results.items())}}
            for i, spec in enumerate(specs) if i in chosen
        ],
    }


def spills(result: dict[str, Any]) -> bool:
    """Whether a compiled kernel spills registers: spill stores, or a stack or local memory."""
    return result["status"] == "ok" and bool(
        result["spill_stores"] or result["stack_bytes"] or result["local_bytes"]
    )


def spills_for_lack_of_registers(result: dict[str, Any]) -> bool:
    """Spills that cost time, a gate failure: the kernel spills at its register limit (it uses all
    but at most one allocation unit of 8 of the registers its block size allows a thread), or it
    still spills when ptxas compiles it at -O1.

    At its default -O3 ptxas also spills a value or two of a kernel well under the limit, to keep it
    at a register count that fits one more block per SM (64 for 256 threads, say); at -O1 it
    compiles the same kernel with more registers and no spill. Those occupancy spills, a few bytes
    that stay in L1, are reported (occupancy_spills), not failures.
    """
    return spills(result) and (
        result["registers"] >= result["register_limit"] - 8 or result["spill_bytes_at_o1"] > 0
    )


def occupancy_spills(result: dict[str, Any]) -> bool:
    """Spills under the register limit that ptxas -O1 does not make (see
    spills_for_lack_of_registers)."""
    return spills(result) and not spills_for_lack_of_registers(result)


def problem(result: dict[str, Any]) -> str | None:
    """A result's problem in words (crash, compile error, timeout or a spill at the register
    limit), or None."""
    if result["status"] == "crash":
        return f"crash {result.get('signal') or result.get('returncode')}"
    if result["status"] == "error":
        return "error " + (result["error"].strip().splitlines() or [""])[-1]
    if result["status"] == "timeout":
        return f"timeout after {result['seconds']:.0f} s"
    if spills_for_lack_of_registers(result):
        return "spill at the register limit " + spill_text(result)
    return None


def spill_text(result: dict[str, Any]) -> str:
    return (f"({result['registers']} registers, {result['spill_stores']} spill stores, "
            f"{result['stack_bytes']} bytes of stack, {result['local_bytes']} bytes of local memory)")


def failures(report: dict[str, Any]) -> list[str]:
    """One line per crash, compile error, timeout or spill at the register limit in a run_gate
    result."""
    found = []
    for spec in report["specialisations"]:
        for target, result in spec["results"].items():
            what = problem(result)
            if what:
                found.append(f"sm_{target} {spec['kernel']} #{spec['id']}: {what}")
    return found


def _commit() -> str | None:
    """The checkout's commit; FUSEDBN_COMMIT names it for a copy without .git (as in gpu_check.sh)."""
    if os.environ.get("FUSEDBN_COMMIT"):
        return os.environ["FUSEDBN_COMMIT"]
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def _targets(text: str) -> list[int]:
    values = _ints(text)
    unknown = [v for v in values if v not in TARGETS]
    if unknown:
        raise ValueError(f"unknown target {unknown[0]}; choose from {', '.join(map(str, TARGETS))}")
    return values


def _site(text: str) -> str:
    if not (Path(text) / "triton" / "__init__.py").is_file():
        raise ValueError(f"{text} holds no triton package (pip install --target {text} triton==X)")
    return str(Path(text).resolve())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fusedbn.bench.compile_check",
        description="Compile every kernel specialisation fusedbn launches for sm_80/sm_90/sm_100 "
                    "on the CPU and report crashes, errors, spills and access widths.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/compile-check"),
                        help="folder for triton-<version>.json and REPORT.md")
    parser.add_argument("--site", type=option_type(_site), default=None,
                        help="a Triton site folder (pip install --target DIR triton==X) to compile "
                             "with instead of this environment's Triton")
    parser.add_argument("--targets", type=option_type(_targets), default=list(TARGETS),
                        help="compute capabilities, e.g. 80,90,100")
    parser.add_argument("--shapes", type=option_type(parse_shapes), default=parse_shapes("resnet50"),
                        help="shape groups or NxCx... shapes (default: resnet50)")
    parser.add_argument("--dtypes", default=list(DTYPES),
                        type=option_type(lambda t: parse_choices(t, tuple(DTYPES), "dtype",
                                                                 DTYPE_ALIASES)))
    parser.add_argument("--layouts", default=[NCHW, CHANNELS_LAST],
                        type=option_type(lambda t: parse_choices(t, (NCHW, CHANNELS_LAST), "layout")))
    parser.add_argument("--epilogues", default=list(EPILOGUES),
                        type=option_type(lambda t: parse_choices(t, EPILOGUES, "epilogue")))
    parser.add_argument("--modes", default=list(MODES),
                        type=option_type(lambda t: parse_choices(t, MODES, "mode")))
    parser.add_argument("--multiprocessors", type=option_type(_ints),
                        default=list(MULTIPROCESSORS.values()),
                        help="SM counts to plan launches for (default: 108,132,148)")
    parser.add_argument("--subset", action="store_true",
                        help="compile only the representative subset (what the CI test compiles)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per compile")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if backend_for("cpu") != TRITON_INTERPRETER:
        # fusedbn chose its backend at import: start again with the kernel path on CPU tensors.
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        return subprocess.call([sys.executable, "-m", "fusedbn.bench.compile_check", *argv], env=env)
    from fusedbn.bench.kernel_report import write_report

    cases = grid_cases(args.shapes, args.dtypes, args.layouts, args.epilogues, args.modes,
                       args.multiprocessors)
    report = run_gate(cases, args.targets, args.site, args.jobs, args.timeout, args.subset,
                      progress_printer())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"triton-{report['triton']}.json"
    path.write_text(json.dumps(report) + "\n", encoding="utf-8")
    write_report(args.out)
    problems = failures(report)
    print(f"{len(report['specialisations'])} specialisations x {len(args.targets)} targets with "
          f"Triton {report['triton']}: {len(problems)} problems; wrote {path} and "
          f"{args.out / 'REPORT.md'}")
    for line in problems:
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
