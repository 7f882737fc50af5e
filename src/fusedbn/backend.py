"""Which implementation runs a call: compiled Triton, Triton's interpreter, or PyTorch's own kernel.

CUDA tensors always run the Triton kernels. CPU tensors run them under Triton's interpreter when the
environment variable ``TRITON_INTERPRET=1`` was set before fusedbn was imported (that is how the test
suite exercises the kernels without a GPU); otherwise CPU calls fall back to PyTorch's native
BatchNorm, so CPU users and the tuning harness run at native speed.
"""

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

TRITON = "triton"
TRITON_INTERPRETER = "triton-interpreter"
TORCH = "torch"

# Triton reads this variable when a kernel is decorated, so it is read once, at import, here too.
INTERPRETER_ENABLED = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRETER_ENABLED:
    # Triton's interpreter imports numpy, which Triton does not declare: without it, importing triton
    # fails deep inside Triton. Say what is missing before fusedbn imports triton.
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise ImportError(
            "TRITON_INTERPRET=1 runs fusedbn's kernels under Triton's interpreter, which needs numpy: "
            "pip install numpy, or unset TRITON_INTERPRET"
        ) from None

# Set by triton_on_cpu(): CPU tensors take the Triton launchers' path (the fake GPU's).
_TRITON_ON_CPU: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fusedbn_triton_on_cpu", default=False
)


@contextlib.contextmanager
def triton_on_cpu() -> Iterator[None]:
    """Inside the block (this thread or task), CPU tensors run fusedbn's Triton launchers.

    For ``fusedbn.bench.fake_gpu``, which swaps the kernels for fakes that launch nothing: the
    host path of a GPU call then runs on the CPU, to be measured and tested.
    """
    token = _TRITON_ON_CPU.set(True)
    try:
        yield
    finally:
        _TRITON_ON_CPU.reset(token)


def kernels_run_on(device_type: str) -> bool:
    """Whether fusedbn's kernels (rather than PyTorch's BatchNorm) run for tensors of ``device_type``."""
    return device_type == "cuda" or (
        device_type == "cpu" and (INTERPRETER_ENABLED or _TRITON_ON_CPU.get())
    )


def backend_for(device: torch.device | str) -> str:
    """Name the implementation that fusedbn uses for tensors on ``device``.

    Returns ``"triton-interpreter"`` for CPU and CUDA tensors when the interpreter is enabled,
    ``"triton"`` for CUDA otherwise (and for CPU tensors inside :func:`triton_on_cpu`), and
    ``"torch"`` (PyTorch's native BatchNorm) for the rest.
    """
    device = torch.device(device)
    if not kernels_run_on(device.type):
        return TORCH
    if INTERPRETER_ENABLED and not (device.type == "cpu" and _TRITON_ON_CPU.get()):
        return TRITON_INTERPRETER
    return TRITON
