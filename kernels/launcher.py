"""Launch a compiled Triton kernel without Triton's per-call argument binding.

``kernel[grid](*args, **constexprs)`` binds every argument anew on each call: it specialises each
one (dtype and 16-byte alignment of tensors, value of ints), hashes the result into a cache key,
builds launch metadata for the hooks, then calls the compiled kernel's launcher. For a BatchNorm
with thirty-odd arguments that is tens of microseconds per launch, more than the kernel runs on the
GPU for a small layer.

A KernelLauncher makes that binding once per specialisation. Its key holds what Triton specialises
on (each tensor's dtype and whether its address is 16-byte aligned, each int's value, the type of
the other scalars) plus the keyword arguments and the current device. On a miss the call goes
through ``kernel[grid]``, which compiles if needed, launches, and returns the compiled kernel; the
launcher keeps that kernel's C launcher and the constexpr values that follow the positional
arguments. On a hit it calls the C launcher directly with the same argument list Triton would pass:
every kernel parameter in signature order, the tensors themselves (the C launcher reads their
addresses), and the stream read on every call, so CUDA streams and graph capture behave as with
``kernel[grid]``.

Runtime arguments are passed positionally and constexprs by keyword. Everything else takes the
plain ``kernel[grid]`` path: Triton's interpreter, torch.compile tracing, a registered launch hook
(profilers such as proton), kernel pre-run hooks, ``FUSEDBN_FAST_LAUNCH=0`` in the environment,
and any specialisation whose binding failed.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.runtime.jit import JITFunction

FAST_LAUNCH_ENV = "FUSEDBN_FAST_LAUNCH"


def fast_launch_enabled() -> bool:
    """False when the environment turns the fast path off (``FUSEDBN_FAST_LAUNCH=0``)."""
    return os.environ.get(FAST_LAUNCH_ENV, "1") != "0"


def launch_hooks_registered() -> bool:
    """True when Triton has a launch hook to call (HookChain objects with calls, or older hooks)."""
    runtime = triton.knobs.runtime
    return any(
        hook is not None and bool(getattr(hook, "calls", True))
        for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook)
    )


def specialization(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What Triton specialises a kernel on, per positional argument.

    Tensors: dtype and 16-byte alignment. Ints and bools: their value (Triton turns an int equal to
    1 into a constant and marks multiples of 16). Floats: only that they are floats.
    """
    key = []
    for arg in args:
        kind = type(arg)
        if kind is int or kind is bool:
            key.append(arg)
        elif kind is float:
            key.append(float)
        else:
            key.append((arg.dtype, arg.data_ptr() % 16 == 0))
    return tuple(key)


@dataclass(frozen=True)
class BoundKernel:
    """A compiled kernel's launcher and the arguments that follow the positional ones."""

    run: Any  # the compiled kernel's C launcher
    function: Any  # its device function handle
    packed_metadata: Any
    trailing_args: tuple[Any, ...]  # constexprs and defaults, in signature order

    def launch(self, grid: tuple[int, ...], stream: int, args: tuple[Any, ...]) -> None:
        grid_0, grid_1, grid_2 = (*grid, 1, 1)[:3]
        # No launch metadata and no hooks: the caller checked that none are registered.
        self.run(
            grid_0, grid_1, grid_2, stream, self.function, self.packed_metadata, None, None, None,
            *args, *self.trailing_args,
        )


def bind(kernel: JITFunction, compiled: Any, args: tuple[Any, ...], kwargs: dict[str, Any]):
    """The BoundKernel that launches ``compiled`` as ``kernel[grid](*args, **kwargs)`` did, or None.

    None when the compile is still pending (asynchronous compilation) or a parameter after the
    positional ones is not a constexpr, so its value could change from call to call.
    """
    if compiled is None or hasattr(compiled, "result"):
        return None
    parameters = {name: value for name, value in kwargs.items() if name in kernel.arg_names}
    bound = kernel.signature.bind(*args, **parameters)
    bound.apply_defaults()
    values = list(bound.arguments.values())
    if len(values) != len(kernel.params) or not all(
        param.is_constexpr for param in kernel.params[len(args):]
    ):
        return None
    return BoundKernel(
        run=compiled.run,
        function=compiled.function,
        packed_metadata=compiled.packed_metadata,
        trailing_args=tuple(values[len(args):]),
    )


_NOT_BOUND = object()


class KernelLauncher:
    """``launcher(grid, *args, **constexprs)`` launches ``kernel`` like ``kernel[grid](...)``."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        # Under TRITON_INTERPRET the kernel is an InterpretedFunction: nothing to bind.
        self.compiled = isinstance(kernel, JITFunction)
        self.bound: dict[tuple[Any, ...], BoundKernel | None] = {}

    def fast_path_allowed(self) -> bool:
        return (
            self.compiled
            and fast_launch_enabled()
            and not torch.compiler.is_compiling()
            and not launch_hooks_registered()
            and not self.kernel.pre_run_hooks
        )

    def __call__(self, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
        if not self.fast_path_allowed():
            self.kernel[grid](*args, **kwargs)
            return
        driver = triton.runtime.driver.active
        device = driver.get_current_device()
        try:
            key = (device, specialization(args), *kwargs.items())
            bound = self.bound.get(key, _NOT_BOUND)
        except (AttributeError, TypeError):  # an argument Triton accepts but this key cannot hold
            bound = None
        if bound is _NOT_BOUND:  # first call of this specialisation: launch through Triton, bind
            compiled = self.kernel[grid](*args, **kwargs)
            try:
                self.bound[key] = bind(self.kernel, compiled, args, kwargs)
            except Exception:  # binding failed: this specialisation keeps the plain path
                self.bound[key] = None
            return
        if bound is None:
            self.kernel[grid](*args, **kwargs)
            return
        try:
            bound.launch(grid, driver.get_current_stream(device), args)
        except Exception:  # the launcher refused the call, so nothing ran: take the plain path
            self.bound[key] = None
            self.kernel[grid](*args, **kwargs)
