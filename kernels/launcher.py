"""Launch a compiled Triton kernel without Triton's per-call argument binding.

``kernel[grid](*args, **constexprs)`` binds every argument anew on each call (specialisation,
cache key, launch metadata): tens of microseconds for a BatchNorm kernel's thirty-odd arguments,
more than a small layer runs on the GPU. A KernelLauncher binds once per specialisation (each
tensor's dtype and 16-byte alignment, each int's value, the other scalars' types, the constexprs and
the device; built from the argument layout, tensors then ints then floats, once it is known). The
first call goes through ``kernel[grid]``, which compiles and returns the compiled kernel; later calls
pass its C launcher the argument list Triton would, with the stream read on every call, so CUDA
streams and graph capture behave as with ``kernel[grid]``. At most ``MAX_SPECIALISATIONS`` bindings
are kept per kernel, the oldest dropped first.

Inside ``launches_for_the_compiler()`` (fusedbn's triton_op bodies, traced by torch.compile) a launch
goes through ``torch.library.wrap_triton`` instead, so the compiled program launches the kernel.

Runtime arguments are passed positionally and constexprs by keyword. Everything else takes the
plain ``kernel[grid]`` path: Triton's interpreter, Triton before 3.4 (no ``triton.knobs``, whose
launchers take other arguments), torch.compile tracing, a registered launch hook (profilers such as
proton), kernel pre-run hooks, ``FUSEDBN_FAST_LAUNCH=0`` in the environment when the launcher is
made (at import), and any specialisation whose binding failed. A binding or direct launch that
raises is reported once per kernel (a RuntimeWarning naming the kernel and the error); that
specialisation then keeps Triton's path.
"""

import contextlib
import operator
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import Any

import torch
import triton
from torch import Tensor
from torch.library import wrap_triton
from triton.runtime.jit import JITFunction

FAST_LAUNCH_ENV = "FUSEDBN_FAST_LAUNCH"
_dtype_of = operator.attrgetter("dtype")
MAX_SPECIALISATIONS = 256  # per kernel by default; a dropped one is bound again if it comes back


# True inside launches_for_the_compiler().
_for_the_compiler = False


@contextlib.contextmanager
def launches_for_the_compiler() -> Iterator[None]:
    """Inside the block, every launch goes through ``torch.library.wrap_triton``, which records it
    when torch's compiler traces the code (fusedbn's triton_op bodies run in this block), so that
    the compiled program launches the kernel itself."""
    global _for_the_compiler
    previous, _for_the_compiler = _for_the_compiler, True
    try:
        yield
    finally:
        _for_the_compiler = previous


def launching_for_the_compiler() -> bool:
    """Whether launches go to torch's compiler (inside launches_for_the_compiler)."""
    return _for_the_compiler


def launch_hooks_registered() -> bool:
    """True when Triton has a launch hook to call (HookChain objects with calls, or older hooks)."""
    runtime = triton.knobs.runtime
    enter, exit_hook = runtime.launch_enter_hook, runtime.launch_exit_hook
    return bool(
        (enter is not None and getattr(enter, "calls", True))
        or (exit_hook is not None and getattr(exit_hook, "calls", True))
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


def argument_layout(args: tuple[Any, ...]) -> tuple[int, int] | None:
    """(tensors, ints) when ``args`` are that many tensors, then that many ints and bools, then
    floats only (the order of every fusedbn kernel's parameters); else None."""
    tensors = 0
    while tensors < len(args) and isinstance(args[tensors], Tensor):
        tensors += 1
    end = tensors
    while end < len(args) and type(args[end]) in (int, bool):
        end += 1
    if not all(type(arg) is float for arg in args[end:]):
        return None
    return tensors, end - tensors


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


class KernelLauncher:
    """``launcher(grid, *args, **constexprs)`` launches ``kernel`` like ``kernel[grid](...)``.

    ``fast``: whether the direct path may be used at all (default: the environment's choice, read
    here, once); ``max_specialisations``: how many bindings are kept.
    """

    def __init__(
        self, kernel: Any, fast: bool | None = None, max_specialisations: int = MAX_SPECIALISATIONS
    ) -> None:
        self.kernel = kernel
        self.name = getattr(getattr(kernel, "fn", kernel), "__name__", repr(kernel))
        # Under TRITON_INTERPRET the kernel is an InterpretedFunction: nothing to bind.
        self.fast = (
            isinstance(kernel, JITFunction)
            and hasattr(triton, "knobs")
            and (os.environ.get(FAST_LAUNCH_ENV, "1") != "0" if fast is None else fast)
        )
        self.max_specialisations = max_specialisations
        self.bound: dict[tuple[Any, ...], BoundKernel | None] = {}
        # (tensors, ints) leading the positional arguments, learned on the first binding.
        self.layout: tuple[int, int] | None = None
        self.warned = False

    def key(self, device: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """The specialisation key of a call (may raise AttributeError or TypeError: not keyable)."""
        if self.layout is None:
            return (device, specialization(args), tuple(kwargs.items()))
        # The leading tensors' dtypes and alignment (all aligned, the usual case, or which are),
        # the ints by value; the floats after them are floats by the argument layout.
        count, ints = self.layout
        tensors = args[:count]
        if reduce(or_, map(Tensor.data_ptr, tensors)) % 16:
            aligned = tuple([pointer % 16 == 0 for pointer in map(Tensor.data_ptr, tensors)])
        else:
            aligned = True
        dtypes = tuple(map(_dtype_of, tensors))
        return (device, dtypes, aligned, args[count:count + ints], *kwargs, *kwargs.values())

    def __call__(self, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
        if _for_the_compiler:
            wrap_triton(self.kernel)[grid](*args, **kwargs)
            return
        if not (
            self.fast
            and not torch.compiler.is_compiling()
            and not launch_hooks_registered()
            and not getattr(self.kernel, "pre_run_hooks", None)
        ):
            self.kernel[grid](*args, **kwargs)
            return
        driver = triton.runtime.driver.active
        device = driver.get_current_device()
        try:
            key = self.key(device, args, kwargs)
            bound = self.bound.get(key, self)
        except (AttributeError, TypeError):  # an argument Triton accepts but this key cannot hold
            bound = None
        if bound is self:  # first call of this specialisation: launch through Triton, then bind
            compiled = self.kernel[grid](*args, **kwargs)
            self._remember(device, compiled, args, kwargs)
            return
        if bound is None:
            self.kernel[grid](*args, **kwargs)
            return
        try:
            bound.launch(grid, driver.get_current_stream(device), args)
        except Exception as error:  # the launcher refused the call, so nothing ran: Triton's path
            self._report(error, "launching it directly")
            self.bound[key] = None
            self.kernel[grid](*args, **kwargs)

    def _remember(self, device: Any, compiled: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Keep the binding of ``compiled`` for later calls like this one (None: Triton's path)."""
        try:
            bound = bind(self.kernel, compiled, args, kwargs)
        except Exception as error:
            self._report(error, "binding it")
            bound = None
        layout = argument_layout(args)
        if self.layout is None and layout is not None:
            self.layout = layout  # keys take the quicker form from now on
            self.bound.clear()
        elif layout != self.layout:
            return  # arguments laid out otherwise than the quick key expects: never kept
        if len(self.bound) >= self.max_specialisations:
            del self.bound[next(iter(self.bound))]
        self.bound[self.key(device, args, kwargs)] = bound

    def _report(self, error: Exception, doing: str) -> None:
        """Warn, once per kernel, that a direct launch failed and Triton's path is taken instead."""
        if not self.warned:
            self.warned = True
            warnings.warn(
                f"fusedbn: {doing} failed for kernel {self.name} ({type(error).__name__}: {error}); "
                "that specialisation takes Triton's launch path from now on",
                RuntimeWarning,
                stacklevel=3,
            )
