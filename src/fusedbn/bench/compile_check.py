"""The compile gate: every kernel specialisation fusedbn launches, compiled for real GPUs on the CPU.

``python -m fusedbn.bench.compile_check`` calls fusedbn's functional API (forward and backward) on fake
tensors for a grid of cases (shapes x dtypes x layouts x epilogues x modes x multiprocessor counts, the launch
choice pinned with LaunchLimits), records every kernel launch, and keeps each specialisation once, as Triton's
own binder tells them apart. Worker processes (compile_worker.py) compile each for each target. Results per
specialisation and target (status, compile time, warps, registers, spills, shared memory, access widths) go
to OUT/triton-<version>.json with the run's record and :func:`kernels_digest`; OUT/REPORT.md
(kernel_report.py) is rendered from every such file. docs/compile-gate.md has the details.
"""

import argparse
import ast
import hashlib
import itertools
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fusedbn.bench.cases import (
    DTYPE_ALIASES,
    DTYPES,
    EVAL,
    FWDBWD,
    LAYOUTS,
    Shape,
    choices,
    integers,
    layout_applies,
    parse_shapes,
    positive,
    random_tensor,
)
from fusedbn.bench.compile_worker import bind, specialisation_text
from fusedbn.bench.core import (
    KERNEL_SOURCES,
    TICKET_COUNTERS,
    TRITON,
    LaunchLimits,
    fused_batch_norm,
    launch_limits,
    triton_on_cpu,
)
from fusedbn.bench.fake_gpu import KernelCall, recording_launches
from fusedbn.bench.kernel_report import failures, write_report
from fusedbn.cli import OneLineErrorParser
from fusedbn.records import run_record

EPILOGUES = ("none", "relu", "add_relu")
MODES = (FWDBWD, EVAL)  # the BatchNorm modes the gate records: training forward and backward, eval
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
        return " ".join(map(str, (self.shape.name, self.dtype, self.layout, self.epilogue, self.mode)))


def grid_cases(
    shapes: Iterable[Shape], dtypes: Iterable[str], layouts: Iterable[str], epilogues: Iterable[str],
    modes: Iterable[str], multiprocessors: Iterable[int],
) -> list[Case]:
    """Every combination, less channels_last for shapes without spatial dims (it is nchw there)."""
    grid = itertools.product(shapes, dtypes, layouts, epilogues, modes, multiprocessors)
    return [Case(*values) for values in grid if layout_applies(values[0], values[2])]


def describe(arg: Any) -> Any:
    """A launch argument as the gate keeps it (JSON-ready): a tensor as its dtype and whether its address is
    16-byte aligned (placed as the CUDA allocator places a fresh tensor), anything else as its value."""
    if isinstance(arg, torch.Tensor):
        address = ALLOCATION_ALIGNMENT + arg.storage_offset() * arg.element_size()
        return {"dtype": str(arg.dtype).removeprefix("torch."), "aligned": address % 16 == 0}
    return list(arg) if isinstance(arg, tuple) else arg


def described(call: KernelCall) -> dict[str, Any]:
    """A recorded launch as the gate keeps it: ``kernel`` is ``module:name``."""
    return {"kernel": f"{call.kernel.__module__}:{call.kernel.__name__}", "grid": list(call.grid),
            "args": [describe(a) for a in call.args],
            "kwargs": {k: describe(v) for k, v in call.kwargs.items()}}


def record_case(case: Case) -> list[dict[str, Any]]:
    """The launches (described) of one forward and backward of ``case`` on fake tensors: parameters float32
    for half-precision input, else in its dtype. The split path's ticket counters made meanwhile are kept
    apart from real calls' and dropped."""
    dtype = DTYPES[case.dtype]
    param_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    channels = case.shape.num_channels
    with (FakeTensorMode(), triton_on_cpu(), recording_launches(launch=False) as calls,
          mock.patch.dict(TICKET_COUNTERS, clear=True)):  # fmt: skip
        x, residual = (random_tensor(case.shape, case.dtype, case.layout, "cpu", seed=0).requires_grad_(True)
                       for _ in range(2))  # fmt: skip
        weight, bias = (torch.empty(channels, dtype=param_dtype).requires_grad_(True) for _ in range(2))
        running_mean, running_var = (torch.empty(channels, dtype=param_dtype) for _ in range(2))
        with launch_limits(LaunchLimits(multiprocessors=case.multiprocessors)):
            y = fused_batch_norm(x, running_mean, running_var, weight, bias, case.mode == FWDBWD, 0.1, 1e-5,
                                 residual=residual if case.epilogue == "add_relu" else None,
                                 activation=None if case.epilogue == "none" else "relu", backend=TRITON)
            y.backward(torch.empty_like(y))
    return [described(call) for call in calls]


def task_for(launch: dict[str, Any], capability: int) -> dict[str, Any]:
    """The worker's task for compiling ``launch`` for ``capability``."""
    return {**launch, "capability": capability}


def triton_specialisation(launch: dict[str, Any]) -> str:
    """What Triton's binder makes of a launch (for sm_90): launches it binds alike compile to one kernel."""
    _, decided = bind(task_for(launch, 90))
    return f"{launch['kernel']}({specialisation_text(decided)}) {decided['options']!r}"


@dataclass
class Specialisation:
    """A launch as Triton compiles it, the cases that make it, and its result per target."""

    launch: dict[str, Any]
    cases: list[int]
    results: dict[int, dict[str, Any]]

    @property
    def kernel(self) -> str:
        return self.launch["kernel"].split(":")[1]


def collect_specialisations(cases: list[Case]) -> tuple[list[Specialisation], list[list[int]]]:
    """The distinct specialisations of all cases (as Triton's binder tells them apart), and per case the
    indices of the ones it launches."""
    by_launch: dict[str, int] = {}
    by_binding: dict[str, int] = {}
    found: list[Specialisation] = []
    per_case: list[list[int]] = []
    for index, case in enumerate(cases):
        indices = []
        for launch in record_case(case):
            text = json.dumps(launch, sort_keys=True)
            if text not in by_launch:
                binding = triton_specialisation(launch)
                if binding not in by_binding:
                    by_binding[binding] = len(found)
                    found.append(Specialisation(launch, [], {}))
                by_launch[text] = by_binding[binding]
            spec = by_launch[text]
            if index not in found[spec].cases:
                found[spec].cases.append(index)
            indices.append(spec)
        per_case.append(indices)
    return found, per_case


def dtype_class(dtype: str) -> str:
    """16-bit, 32-bit or 64-bit floats: the kernels' code differs by class, not within one."""
    return str(DTYPES[dtype].itemsize * 8)


def elements_per_thread(launch: dict[str, Any]) -> int:
    """Tile elements each thread holds: where register pressure and compiler trouble grow."""
    kwargs = launch["kwargs"]
    tile = kwargs.get("BLOCK_N", 1) * kwargs.get("BLOCK_S", 1) * kwargs.get("BLOCK_C", 1)
    return tile // (32 * kwargs.get("num_warps", 4))


# Cases that once crashed the compiler (Triton 3.9, sm_90, the fused ReLU's backward with a select): the
# representative subset always compiles every specialisation they launch.
REGRESSION_CASES = (
    ("64x256x56x56", "float16", "nchw", "relu", FWDBWD, 132),
    ("64x1024x14x14", "float16", "nchw", "relu", FWDBWD, 132),
    ("64x256x14x14", "float32", "nchw", "relu", FWDBWD, 132),
    ("64x128x28x28", "float32", "nchw", "relu", FWDBWD, 132),
)


def representative_subset(specs: list[Specialisation], cases: list[Case]) -> list[int]:
    """Indices of a few specialisations that launch each kernel with each epilogue, dtype class and layout at
    least once (greedily: the one covering most first, then the one with most elements per thread, so each
    combination compiles at its heaviest), and all those of the REGRESSION_CASES in ``cases``, in order."""
    regressions = {
        i for i, case in enumerate(cases)
        if (case.shape.name, case.dtype, case.layout, case.epilogue, case.mode,
            case.multiprocessors) in REGRESSION_CASES
    }  # fmt: skip
    covers = [
        {(spec.kernel, cases[i].epilogue, dtype_class(cases[i].dtype), cases[i].layout) for i in spec.cases}
        for spec in specs
    ]
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


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):  # fmt: skip
                node.body = body[1:] or [ast.Pass()]
    return tree


def kernels_digest(commit: str | None = None) -> str:
    """A digest of the code (without comments and docstrings) of fusedbn's kernel modules but launcher.py
    (which runs after the gate records a launch), as they are or at ``commit`` (read with git). Raises
    subprocess.CalledProcessError or OSError where git cannot read them, ValueError for a "-dirty" commit."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=KERNEL_SOURCES, capture_output=True, text=True,
                              check=True, timeout=30).stdout  # fmt: skip

    if commit is not None and commit.endswith("-dirty"):
        raise ValueError(f"commit {commit} had uncommitted changes: its kernels are not in git")
    if commit is None:
        names = [path.name for path in KERNEL_SOURCES.glob("*.py")]
    else:
        names = git("ls-tree", "--name-only", commit, "./").split()
    digest = hashlib.sha256()
    for name in sorted(n for n in names if n.endswith(".py") and n != "launcher.py"):
        if commit is None:
            source = (KERNEL_SOURCES / name).read_text(encoding="utf-8")
        else:
            source = git("show", f"{commit}:./{name}")
        digest.update(f"{name}\n{ast.unparse(_without_docstrings(ast.parse(source)))}\n".encode())
    return digest.hexdigest()


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
            raise RuntimeError(f"the compile worker did not start; see {self.log_path}:\n{self.log_tail()}")
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


def compile_all(
    tasks: list[tuple[tuple[int, int], dict[str, Any]]],
    site: str | None,
    jobs: int,
    timeout: float,
    progress: Callable[[int, int, dict[str, int]], None],
) -> tuple[dict[tuple[int, int], dict[str, Any]], dict[str, str]]:
    """Compile every (task id, task) in ``jobs`` workers; results by task id, and the workers' Triton. A task
    whose worker dies is a crash, one that takes over ``timeout`` seconds a timeout (the worker is killed);
    the worker is replaced."""
    results: dict[tuple[int, int], dict[str, Any]] = {}
    counts = {"ok": 0, "error": 0, "crash": 0, "timeout": 0}
    pending = list(reversed(tasks))
    with tempfile.TemporaryDirectory(prefix="fusedbn-compile-") as scratch:
        # The workers' environment: no interpreter, ``site`` first on the path, a Triton cache of their own.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = os.path.join(scratch, "cache")
        if site:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
        numbers = itertools.count()
        workers = [Worker(env, scratch, next(numbers)) for _ in range(max(1, min(jobs, len(tasks))))]
        triton_info = workers[0].hello
        selector = selectors.DefaultSelector()

        def finish(worker: Worker, result: dict[str, Any], replace: bool) -> None:
            results[worker.task] = result
            counts[result["status"]] += 1
            worker.task = None
            progress(len(results), len(tasks), counts)
            if replace:  # a worker that died or was killed: a new one takes its place
                workers.remove(worker)
                worker.stop()
                workers.append(Worker(env, scratch, next(numbers)))

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
                        finish(worker, json.loads(line), replace=False)
                    else:  # the worker died: the compiler crashed on this task
                        code = worker.process.wait()
                        died = {"status": "crash", "signal": signal.Signals(-code).name if code < 0 else None}
                        if code >= 0:
                            died["returncode"] = code
                        finish(worker, {**died, "stderr_tail": worker.log_tail()}, replace=True)
                for worker in list(workers):
                    if worker.task and time.monotonic() - worker.started > timeout:
                        selector.unregister(worker.process.stdout)
                        finish(worker, {"status": "timeout", "seconds": timeout}, replace=True)
        finally:
            for worker in workers:
                worker.stop()
    return results, triton_info


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
    """Record ``cases``, compile their specialisations (or the representative subset) for every target, and
    return the JSON-ready result."""
    targets = list(targets)
    specs, per_case = collect_specialisations(cases)
    chosen = set(representative_subset(specs, cases) if subset else range(len(specs)))
    tasks = [((i, cc), task_for(specs[i].launch, cc)) for i in sorted(chosen) for cc in targets]
    results, triton_info = compile_all(tasks, site, jobs, timeout, progress or (lambda *a: None))
    for (i, cc), result in results.items():
        specs[i].results[cc] = result
    return {
        **asdict(run_record().finished()),
        **triton_info,  # the Triton that compiled, which --site may have chosen
        "kernels_digest": kernels_digest(),
        "targets": targets,
        "subset": subset,
        "cases": [{**asdict(case), "shape": case.shape.name, "launches": per_case[i]}
                  for i, case in enumerate(cases)],
        "specialisations": [
            {"id": i, "kernel": spec.kernel, "module": spec.launch["kernel"].split(":")[0],
             **{key: spec.launch[key] for key in ("grid", "args", "kwargs")}, "cases": spec.cases,
             "results": {str(cc): result for cc, result in sorted(spec.results.items())}}
            for i, spec in enumerate(specs) if i in chosen
        ],
    }


def _targets(text: str) -> list[int]:
    values = integers("compute capabilities")(text)
    unknown = [v for v in values if v not in TARGETS]
    if unknown:
        known = ", ".join(map(str, TARGETS))
        raise argparse.ArgumentTypeError(f"unknown target {unknown[0]}; choose from {known}")
    return values


def _site(text: str) -> str:
    if not (Path(text) / "triton" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text} holds no triton package (pip install --target DIR triton)")
    return str(Path(text).resolve())


def build_parser() -> argparse.ArgumentParser:
    """The gate's options; by default ResNet-50's shapes in every dtype, layout, epilogue and mode, planned
    for every SM count, compiled for every target."""
    parser = OneLineErrorParser(
        prog="python -m fusedbn.bench.compile_check",
        description="Compile every kernel specialisation fusedbn launches for sm_80/sm_90/sm_100 "
                    "on the CPU and report crashes, errors, spills and access widths.",
    )
    add = parser.add_argument
    add("--out", type=Path, default=Path("runs/compile-check"),
        help="folder for triton-<version>.json and REPORT.md")
    add("--site", type=_site, help="a Triton site folder (pip install --target DIR triton==X) to compile "
        "with instead of this environment's Triton")
    add("--targets", type=_targets, default=list(TARGETS), help="compute capabilities, e.g. 80,90,100")
    add("--shapes", type=parse_shapes, default=parse_shapes("resnet50"),
        help="shape groups or NxCx... shapes (default: resnet50)")
    add("--dtypes", type=choices(tuple(DTYPES), "dtype", DTYPE_ALIASES), default=list(DTYPES))
    add("--layouts", type=choices(LAYOUTS, "layout"), default=list(LAYOUTS))
    add("--epilogues", type=choices(EPILOGUES, "epilogue"), default=list(EPILOGUES))
    add("--modes", type=choices(MODES, "mode"), default=list(MODES), help="fwdbwd (training), eval")
    add("--multiprocessors", type=integers("SM counts"), default=list(MULTIPROCESSORS.values()),
        help="SM counts to plan launches for (default: 108,132,148)")
    add("--subset", action="store_true", help="compile the representative subset (what the CI test does)")
    add("--jobs", type=positive(int), default=2, help="worker processes")
    add("--timeout", type=positive(float), default=600.0, help="seconds per compile")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the gate with ``argv``; 0 when every specialisation compiled without a problem, else 1."""
    args = build_parser().parse_args(argv)
    grid = (args.shapes, args.dtypes, args.layouts, args.epilogues, args.modes, args.multiprocessors)
    report = run_gate(grid_cases(*grid), args.targets, args.site, args.jobs, args.timeout, args.subset,
                      progress_printer())  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"triton-{report['triton']}.json"
    path.write_text(json.dumps(report) + "\n", encoding="utf-8")
    write_report(args.out)
    problems = failures(report)
    print(f"{len(report['specialisations'])} specialisations x {len(args.targets)} targets with "
          f"Triton {report['triton']}: {len(problems)} problems; wrote {path} and {args.out / 'REPORT.md'}")
    for line in problems:
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
