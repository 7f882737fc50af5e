"""Which implementation runs a BatchNorm call: fusedbn's Triton kernels or PyTorch's own BatchNorm.

Every module and the functional API take ``backend``: ``"auto"`` (the default), ``"triton"`` or
``"torch"``.

- ``"torch"`` runs ``torch.nn.functional.batch_norm`` (then torch's add and ReLU for an epilogue).
- ``"triton"`` runs fusedbn's kernels: compiled on CUDA tensors, and on CPU tensors under Triton's
  interpreter when the environment variable ``TRITON_INTERPRET=1`` was set before fusedbn was
  imported (that is how the test suite runs the kernels without a GPU). Anywhere else it is an error.
- ``"auto"`` leaves the choice to fusedbn: inside a :func:`use_backend` block, that block's backend;
  otherwise the kernels wherever they can run, and torch's BatchNorm elsewhere (plain CPU tensors,
  so CPU users and the tuning harness run at native speed).

Whatever the setting, TorchScript (``torch.jit.script`` and ``torch.jit.trace``) and ONNX export record
torch's BatchNorm, so the saved program runs without fusedbn or Triton.

The settings are plain module attributes rather than context variables, read on every call: torch.compile
can trace them (and recompiles when they change), as it does torch's own ``torch.backends`` flags.
"""

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from fusedbn import costs

AUTO = "auto"
TRITON = "triton"
TORCH = "torch"
BACKENDS = (AUTO, TRITON, TORCH)
# What backend_for reports for kernels run by Triton's interpreter.
TRITON_INTERPRETER = "triton-interpreter"

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

# What "auto" means inside a use_backend block (AUTO outside any).
_auto_means = AUTO
# True inside triton_on_cpu(): CPU tensors take the Triton launchers' path (the fake GPU's).
_triton_on_cpu = False
# The GPU the fake GPU's choices are made for (its Triton target is sm_90).
FAKE_GPU = "NVIDIA H200"
# The cost model's choices by call, the cost tables by GPU name, and GPU names by device index.
_choices: dict[tuple, str] = {}
_table_for = functools.cache(costs.table_for)
_device_name = functools.cache(torch.cuda.get_device_name)


def check_backend(backend: str) -> None:
    """Raise ValueError naming the choices unless ``backend`` is one of them."""
    if backend not in BACKENDS:
        raise ValueError(f"fusedbn: backend must be one of {BACKENDS}, got {backend!r}")


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Inside the block, every call whose backend is ``"auto"`` (the default of the modules and the
    functional API) uses ``backend``; calls set to ``"triton"`` or ``"torch"`` keep theirs.
    Process-wide, like ``torch.backends`` flags."""
    global _auto_means
    check_backend(backend)
    previous, _auto_means = _auto_means, backend
    try:
        yield
    finally:
        _auto_means = previous


@contextlib.contextmanager
def triton_on_cpu() -> Iterator[None]:
    """Inside the block, CPU tensors run fusedbn's Triton launchers.

    For ``fusedbn.bench.fake_gpu``, which swaps the kernels for fakes that launch nothing: the host
    path of a GPU call then runs on the CPU, to be measured and tested.
    """
    global _triton_on_cpu
    previous, _triton_on_cpu = _triton_on_cpu, True
    try:
        yield
    finally:
        _triton_on_cpu = previous


def kernels_run_on(device_type: str) -> bool:
    """Whether fusedbn's kernels can run on tensors of ``device_type`` in this process."""
    return device_type == "cuda" or (
        device_type == "cpu" and (INTERPRETER_ENABLED or _triton_on_cpu)
    )


def recording_for_torchscript_or_onnx() -> bool:
    """Whether torch.jit.trace or the ONNX exporter is recording this call: both record torch's
    BatchNorm, which they can represent, whatever the backend."""
    return torch.jit.is_tracing() or (torch.compiler.is_compiling() and torch.onnx.is_in_onnx_export())


class Choice(NamedTuple):
    """The implementation a call takes, and why (with the cost model's predictions, when used)."""

    implementation: str  # TRITON or TORCH
    reason: str
    prediction: costs.Prediction | None = None

    def __str__(self) -> str:
        return f"{self.implementation}: {self.reason}"


def implementation(
    backend: str, input: Tensor, training: bool, residual: Tensor | None = None,
    relu: bool = False, synchronize: bool = False,
) -> str:
    """``TRITON`` or ``TORCH``: what runs this call with this ``backend`` setting (the arguments
    are the call's; "auto" runs a synchronized BatchNorm's kernels wherever they run). Raises
    ValueError for an unknown setting, and for ``"triton"`` where the kernels cannot run."""
    if backend == AUTO:
        backend = _auto_means
    if backend == TORCH:
        return TORCH
    if backend != AUTO and backend != TRITON:
        check_backend(backend)
    if recording_for_torchscript_or_onnx():
        return TORCH
    device = input.device
    if not kernels_run_on(device.type):
        if backend == AUTO:
            return TORCH
        raise _kernels_cannot_run(device.type)
    if backend == TRITON or synchronize or (device.type == "cpu" and not _triton_on_cpu):
        return TRITON  # the interpreter is a test of the kernels, never a choice
    return _predicted_best(*_call(input, training, residual is not None, relu))


def _kernels_cannot_run(device_type: str) -> ValueError:
    return ValueError(
        f"fusedbn: backend='triton' cannot run on {device_type} tensors here: the kernels run on "
        "CUDA, and on the CPU only under Triton's interpreter (TRITON_INTERPRET=1 set before "
        "fusedbn is imported); use backend='auto' or 'torch'"
    )


def _call(input: Tensor, training: bool, residual: bool, relu: bool) -> tuple:
    """What the cost model's choice for a call depends on: the arguments of :func:`_predict`. Its
    mode is "fwdbwd" for training with a backward to come (the input needs a gradient), else "fwd"
    or "eval"."""
    backward = training and input.requires_grad and torch.is_grad_enabled()
    return (
        input.device, input.shape, input.stride(), input.dtype,
        "fwdbwd" if backward else "fwd" if training else "eval",
        residual, relu, torch.compiler.is_compiling(),
    )


def _predicted_best(
    device: torch.device, shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype,
    mode: str, residual: bool, relu: bool, compiling: bool,
) -> str:
    """The implementation the cost model predicts faster for such a call (one dictionary lookup
    after its first call: choices are kept until the cost table changes). :mod:`fusedbn.ops` marks
    it as a constant result for compiled code."""
    key = (device, shape, stride, dtype, mode, residual, relu, compiling)
    chosen = _choices.get(key)
    if chosen is None:  # compiled, torch's BatchNorm is the compiler's to lower
        chosen = _choices[key] = TRITON if _predict(*key).chosen == TRITON else TORCH
    return chosen


def _predict(
    device: torch.device, shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype,
    mode: str, residual: bool, relu: bool, compiling: bool,
) -> costs.Prediction:
    """The cost model's prediction for a call (the table of ``device``'s GPU kind)."""
    name = FAKE_GPU if device.type == "cpu" else _device_name(device.index)
    probe = torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    layout = "channels_last" if probe.dim() in (4, 5) and not probe.is_contiguous() and (
        probe.is_contiguous(memory_format=torch.channels_last if probe.dim() == 4 else torch.channels_last_3d)
    ) else "nchw"
    call = costs.Call(
        tuple(shape), probe.element_size(), str(dtype).removeprefix("torch."), layout, mode,
        residual, relu,
    )
    return _table_for(name).predict(call, (costs.TRITON, costs.COMPILE if compiling else costs.TORCH))


def use_cost_table(path: str | os.PathLike | None) -> None:
    """Make ``auto`` choose with the cost table in the file ``path`` (as FUSEDBN_COST_TABLE does),
    or with the tables fusedbn ships (None). Raises CostTableError naming the file and the
    problem; then nothing changes."""
    if path is not None:
        costs.load_table(path)
        os.environ[costs.TABLE_ENV] = os.fspath(path)
    else:
        os.environ.pop(costs.TABLE_ENV, None)
    _table_for.cache_clear()
    _choices.clear()


def explain(
    input: Tensor, training: bool = True, *, residual: Tensor | None = None,
    activation: str | None = None, backend: str = AUTO,
) -> Choice:
    """Which implementation a BatchNorm of ``input`` with these arguments takes, and why: the
    setting or the place that decides, or the cost model's predicted time of each candidate."""
    chosen = implementation(backend, input, training, residual, activation == "relu")
    setting = _auto_means if backend == AUTO else backend
    if chosen == TORCH and not kernels_run_on(input.device.type):
        reason = f"fusedbn's kernels do not run on {input.device.type} tensors here"
    elif recording_for_torchscript_or_onnx():
        reason = "TorchScript and ONNX record torch's BatchNorm"
    elif setting != AUTO:
        reason = f"backend={setting!r}" + (" (use_backend)" if backend == AUTO else "")
    elif input.device.type == "cpu" and not _triton_on_cpu:
        reason = "Triton's interpreter runs the kernels on the CPU (TRITON_INTERPRET=1)"
    else:
        prediction = _predict(*_call(input, training, residual is not None, activation == "relu"))
        return Choice(chosen, f"cost model: {prediction}", prediction)
    return Choice(chosen, reason)


def backend_for(device: torch.device | str, backend: str = AUTO) -> str:
    """Name what runs calls on ``device`` with the ``backend`` setting: ``"torch"`` (PyTorch's own
    BatchNorm), ``"triton"`` (fusedbn's compiled kernels), ``"triton-interpreter"`` (the kernels
    under Triton's interpreter) or, for "auto" where the cost model chooses per call (a GPU),
    ``"auto"`` (:func:`explain` tells a call's choice)."""
    device = torch.device(device)
    setting = _auto_means if backend == AUTO else backend
    check_backend(setting)
    if setting == TORCH or (setting == AUTO and not kernels_run_on(device.type)):
        return TORCH
    if not kernels_run_on(device.type):
        raise _kernels_cannot_run(device.type)
    if INTERPRETER_ENABLED and not (device.type == "cpu" and _triton_on_cpu):
        return TRITON_INTERPRETER
    return setting
