"""Running the per-op suite: every selected case, measured unit by unit, each result handed on at once.

A group is one (shape, dtype, layout); a unit is some providers on one group. Every group's eager, fusedbn
and FlagGems cases run first, in one unit per group (FlagGems is skipped, with the reason, where it does not
import); torch.compile, slow to compile, runs after all of them, so that a time budget that runs out costs
compile cases only. Within a unit the input, the upstream gradient and each provider's module are made once
(torch.compile compiles once per unit for training and once more for eval); every mode is timed for every
provider, and each provider's first output is compared with eager's.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from fusedbn.bench.cases import (
    AUTO,
    COMPILE,
    EAGER,
    FLAG_GEMS,
    FUSEDBN,
    LAYOUTS,
    MODES,
    PROVIDERS,
    Shape,
    layout_applies,
    minimal_bytes,
)
from fusedbn.bench.providers import (
    backend_name,
    case_inputs,
    load_state,
    mode_call,
    provider_module,
    relative_difference,
    unavailable_reason,
)
from fusedbn.bench.results import OK, Result, error_status
from fusedbn.bench.timing import Budget, TimingSettings, gigabytes_per_second, measure

# Providers in the order they are timed: eager first, since its output is the reference.
PROVIDER_ORDER = (EAGER, FUSEDBN, AUTO, FLAG_GEMS, COMPILE)


@dataclass
class Benchmark:
    """Everything a run of the per-op suite measures, and how.

    The compile provider runs only on ``compile_shapes`` (names) and ``compile_modes``, since compiling is
    slow. ``time_budget_s`` stops measuring (the rest is recorded as skipped) once the run has taken that
    long; ``compile_budget_s`` does the same for compile once the first calls of compiled modules (which
    compile) have taken that long in all.
    """

    device: torch.device
    shapes: list[Shape]
    dtypes: list[str]
    layouts: list[str] = field(default_factory=lambda: list(LAYOUTS))
    modes: list[str] = field(default_factory=lambda: list(MODES))
    providers: list[str] = field(default_factory=lambda: list(PROVIDERS))
    compile_shapes: set[str] | None = None  # None: every shape
    compile_modes: list[str] | None = None  # None: every mode
    compile_mode: str = "default"
    settings: TimingSettings = field(default_factory=TimingSettings)
    copy_bytes: int = 1 << 30
    time_budget_s: float = math.inf
    compile_budget_s: float = math.inf

    def groups(self) -> list[tuple[Shape, str, str]]:
        """The (shape, dtype, layout) groups, shapes first, skipping layouts a shape does not have."""
        return [(shape, dtype, layout) for shape in self.shapes for dtype in self.dtypes
                for layout in self.layouts if layout_applies(shape, layout)]  # fmt: skip

    def units(self) -> list["Unit"]:
        """The units in running order: eager, fusedbn and FlagGems on every group, then compile, dtype by
        dtype and layout by layout, shapes innermost, so that a budget that runs out leaves whole sets of
        shapes compiled."""
        groups = self.groups()
        first = tuple(p for p in (EAGER, FUSEDBN, AUTO, FLAG_GEMS) if p in self.providers)
        units = [Unit(*group, first) for group in groups] if first else []
        if COMPILE in self.providers:
            groups.sort(key=lambda g: (self.dtypes.index(g[1]), self.layouts.index(g[2])))
            units += [Unit(*group, (COMPILE,)) for group in groups
                      if any(COMPILE in self.providers_for(group[0], mode) for mode in self.modes)]
        return units

    def providers_for(self, shape: Shape, mode: str) -> list[str]:
        """The providers timed for ``shape`` in ``mode``, in timing order."""
        compiles = (self.compile_shapes is None or shape.name in self.compile_shapes) and (
            self.compile_modes is None or mode in self.compile_modes
        )
        return [p for p in PROVIDER_ORDER if p in self.providers and (p != COMPILE or compiles)]

    def case_count(self) -> int:
        """How many results the run produces."""
        return sum(len(self.providers_for(s, mode)) for s, _, _ in self.groups() for mode in self.modes)


@dataclass(frozen=True)
class Unit:
    """Some providers measured together on one (shape, dtype, layout) group."""

    shape: Shape
    dtype: str
    layout: str
    providers: tuple[str, ...]


class _Budgets:
    def __init__(self, bench: Benchmark):
        self.bench = bench
        self.time = Budget(bench.time_budget_s)
        self.compile_s = 0.0

    def skip_reason(self, provider: str) -> str | None:
        """Why ``provider``'s next case is not measured (a spent budget, FlagGems missing), or None."""
        if self.time.spent():
            return f"skipped: {self.time}"
        if provider == COMPILE and self.compile_s > self.bench.compile_budget_s:
            return f"skipped: compile budget of {self.bench.compile_budget_s:g} s spent"
        return None if unavailable_reason(provider) is None else f"skipped: {unavailable_reason(provider)}"


def _run_unit(bench: Benchmark, unit: Unit, copy_gbps: float, budgets: _Budgets) -> Iterator[Result]:
    device, shape, dtype, layout = bench.device, unit.shape, unit.dtype, unit.layout
    reference, x, grad_output = case_inputs(shape, dtype, layout, device)
    initial_state = {name: value.clone() for name, value in reference.state_dict().items()}
    modules: dict[str, torch.nn.Module] = {}

    for mode in bench.modes:
        nbytes = minimal_bytes(shape, dtype, mode)
        # Eager's output, computed when the first provider of this mode is about to be measured.
        expected, reference_error, reference_ran = None, None, False
        for provider in (p for p in bench.providers_for(shape, mode) if p in unit.providers):
            base = dict(shape=shape.name, dtype=dtype, layout=layout, mode=mode, provider=provider,
                        backend=backend_name(provider, device), bytes=nbytes)  # fmt: skip
            reason = budgets.skip_reason(provider)
            if reason is not None:
                yield Result(status=reason, **base)
                continue
            if not reference_ran:
                reference_ran = True
                try:
                    load_state(reference, initial_state)
                    expected = mode_call(reference, mode, x, grad_output)()
                except Exception as error:  # recorded on every provider's row of this mode
                    reference_error = error
            if reference_error is not None:
                yield Result(status=error_status(reference_error, "in eager reference: "), **base)
                continue
            try:
                if provider not in modules:
                    modules[provider] = provider_module(provider, reference, bench.compile_mode)
                module = modules[provider]
                load_state(module, initial_state)
                measured = measure(mode_call(module, mode, x, grad_output), device, bench.settings)
            except Exception as error:  # one failing case must not end the run; its row says why
                yield Result(status=error_status(error), **base)
                continue
            if provider == COMPILE:
                budgets.compile_s += measured.first_call_s
            rel_diff = math.nan if provider == EAGER else relative_difference(measured.first_result, expected)
            gbps = gigabytes_per_second(nbytes, measured.median_ms)
            yield Result(status=OK, median_ms=measured.median_ms, min_ms=measured.min_ms,
                         max_ms=measured.max_ms, first_call_s=measured.first_call_s, gbps=gbps,
                         copy_share=gbps / copy_gbps, rel_diff=rel_diff, **base)  # fmt: skip


def run_benchmark(
    bench: Benchmark, copy_gbps: float, on_unit: Callable[[int, Unit, list[Result]], None] | None = None
) -> Iterator[Result]:
    """Measure every case of ``bench``, yielding each result as soon as it is known.

    ``copy_gbps`` is the measured copy bandwidth each case's effective bandwidth is a share of.
    ``on_unit(index, unit, results)`` is called after each unit of ``bench.units()``. torch.compile's
    caches are reset before each compile unit so that none runs into its recompilation limit.
    """
    budgets = _Budgets(bench)
    for index, unit in enumerate(bench.units()):
        if COMPILE in unit.providers:
            torch.compiler.reset()
        results = []
        for result in _run_unit(bench, unit, copy_gbps, budgets):
            results.append(result)
            yield result
        if on_unit is not None:
            on_unit(index, unit, results)
