"""Which implementation runs a call: compiled Triton, Triton's interpreter, or PyTorch's own kernel.

CUDA tensors always run the Triton kernels. CPU tensors run them under Triton's interpreter when the
environment variable ``TRITON_INTERPRET=1`` was set before fusedbn was imported (that is how the test
suite exercises the kernels without a GPU); otherwise CPU calls fall back to PyTorch's native
BatchNorm, so CPU users and the tuning harness run at native speed.
"""

import os

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


def backend_for(device: torch.device | str) -> str:
    """Name the implementation that fusedbn uses for tensors on ``device``.

    Returns ``"triton-interpreter"`` for CPU and CUDA tensors when the interpreter is enabled,
    ``"triton"`` for CUDA otherwise, and ``"torch"`` (PyTorch's native BatchNorm) for the rest.
    """
    device = torch.device(device)
    if INTERPRETER_ENABLED and device.type in ("cpu", "cuda"):
        return TRITON_INTERPRETER
    if device.type == "cuda":
        return TRITON
    return TORCH
