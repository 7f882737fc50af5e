"""The functional BatchNorm: torch.nn.functional.batch_norm's signature, run by fusedbn's kernels."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fusedbn.autograd import SyncBatchNormFunction, apply_batch_norm
from fusedbn.backend import backend_for, kernels_run_on
from fusedbn.kernels.call import BatchNormCall, batch_norm_call

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ACTIVATIONS = (None, "relu")
# torch's rule (CPU): all per-channel tensors share one dtype, the input's, or float32 when the
# input is float16 or bfloat16 (autocast).
PARAMETER_DTYPES = {
    torch.float32: (torch.float32,),
    torch.float64: (torch.float64,),
    torch.float16: (torch.float16, torch.float32),
    torch.bfloat16: (torch.bfloat16, torch.float32),
}


def check_batch_norm_args(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
    num_batches_tracked: Tensor | None = None,
    residual: Tensor | None = None,
    activation: str | None = None,
) -> None:
    """Raise the error torch would raise for a bad BatchNorm call, with a message naming the problem.

    Everything is checked before any state is touched, so a rejected call changes nothing. As in
    torch, an empty input is not held to the dtype rule (its output and gradients are empty or
    zero).
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm: input must be a Tensor, got {type(input).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"batch_norm: input must be float16, bfloat16, float32 or float64, got {input.dtype}"
        )
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm: expected input of shape (N, C, ...) with at least 2 dims, "
            f"got {input.dim()}D input of shape {tuple(input.shape)}"
        )
    num_channels = input.shape[1]
    per_channel = {
        "running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias
    }
    allowed = PARAMETER_DTYPES[input.dtype]
    param_dtypes = {t.dtype for t in per_channel.values() if t is not None}
    for name, tensor in per_channel.items():
        if tensor is None:
            continue
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"batch_norm: {name} must be a floating tensor, got {tensor.dtype}")
        if input.numel() > 0 and (tensor.dtype not in allowed or len(param_dtypes) > 1):
            raise RuntimeError(
                f"batch_norm: mixed dtypes: {name} is {tensor.dtype} with {input.dtype} input; "
                f"weight, bias and running statistics must all be {input.dtype}"
                + (" or all float32" if len(allowed) > 1 else "")
            )
        if tensor.numel() != num_channels:
            raise RuntimeError(
                f"batch_norm: {name} should contain {num_channels} elements (one per channel of "
                f"input {tuple(input.shape)}), not {tensor.numel()}"
            )
        if tensor.device != input.device:
            raise RuntimeError(
                f"batch_norm: expected all tensors on one device, but input is on {input.device} "
                f"and {name} is on {tensor.device}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must be given together")
    if not training and running_mean is None:
        raise ValueError(
            "batch_norm: running_mean and running_var are required when training=False"
        )
    if num_batches_tracked is not None:
        if num_batches_tracked.numel() != 1 or num_batches_tracked.device != input.device:
            raise RuntimeError(
                "batch_norm: num_batches_tracked must be a one-element tensor on the input's device"
            )
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"batch_norm: activation must be one of {ACTIVATIONS}, got {activation!r}"
        )
    if residual is not None:
        if residual.shape != input.shape:
            raise RuntimeError(
                f"batch_norm: residual must have the input's shape {tuple(input.shape)}, "
                f"got {tuple(residual.shape)}"
            )
        if residual.dtype not in FLOAT_DTYPES or residual.device != input.device:
            raise TypeError(
                f"batch_norm: residual must be a floating tensor on {input.device}, got "
                f"{residual.dtype} on {residual.device}"
            )
    if eps < 0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if training:
        # Like torch: exactly one value per channel is an error; an empty batch is not.
        if input.numel() == num_channels and num_channels > 0:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size "
                f"{input.shape}"
            )
        if eps <= 0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")


def usual_call(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
    num_batches_tracked: Tensor | None,
    residual: Tensor | None,
    activation: str | None,
) -> bool:
    """True for a call in the usual form, which check_batch_norm_args accepts: a floating input of
    2 or more dims; per-channel tensors of one allowed dtype, one per channel, contiguous, on the
    input's device; running statistics given together (or none, in training); a one-element
    num_batches_tracked and a floating residual of the input's shape on that device; a known
    activation; a valid eps. Anything else goes to check_batch_norm_args for the full diagnosis
    (a call that is not usual may still be valid: strided parameters, an empty input).
    """
    if not isinstance(input, Tensor):
        return False
    allowed = PARAMETER_DTYPES.get(input.dtype)
    if allowed is None or input.dim() < 2 or activation not in ACTIVATIONS:
        return False
    channels, device, dtype = input.shape[1], input.device, None
    for tensor in (weight, bias, running_mean, running_var):
        if tensor is None:
            continue
        if dtype is None:
            dtype = tensor.dtype
            if dtype not in allowed:
                return False
        if tensor.dtype != dtype or tensor.numel() != channels or tensor.device != device:
            return False
        if not tensor.is_contiguous():
            return False
    if (running_mean is None) != (running_var is None) or (running_mean is None and not training):
        return False
    if num_batches_tracked is not None and (
        num_batches_tracked.numel() != 1 or num_batches_tracked.device != device
    ):
        return False
    if residual is not None and (
        residual.shape != input.shape or residual.dtype not in FLOAT_DTYPES
        or residual.device != device
    ):
        return False
    if training:
        return eps > 0 and input.numel() != channels
    return eps >= 0


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_batch_stats: bool,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Tensor | None,
    residual: Tensor | None,
    activation: str | None,
    synchronize: bool,
    process_group: Any,
) -> Tensor:
    """fused_batch_norm's work after its own argument rule, shared with the modules: check the
    arguments (quickly for the usual form), decide the call once (BatchNormCall), count the batch,
    run it. ``momentum`` None without ``num_batches_tracked`` is a factor never used (nothing to
    update: the modules pass it so)."""
    usual = usual_call(
        input, running_mean, running_var, weight, bias, use_batch_stats, eps, num_batches_tracked,
        residual, activation,
    )
    if not usual:
        check_batch_norm_args(
            input, running_mean, running_var, weight, bias, use_batch_stats, eps,
            num_batches_tracked, residual, activation,
        )
    kernels = kernels_run_on(input.device.type)
    if synchronize and (not kernels or residual is not None or activation is not None):
        raise ValueError(
            "batch_norm: synchronized BatchNorm runs fusedbn's kernels only (CUDA tensors, or CPU "
            f"tensors with TRITON_INTERPRET=1; here: {backend_for(input.device)}) and fuses no "
            "residual or activation"
        )
    call = batch_norm_call(
        use_batch_stats, running_mean, running_var, num_batches_tracked, momentum, eps,
        activation == "relu",
    )
    if num_batches_tracked is not None and call.update_running:
        num_batches_tracked.add_(1)

    if not kernels:
        factor = 1.0 / float(num_batches_tracked) if call.cumulative else call.momentum
        output = F.batch_norm(
            input, running_mean, running_var, weight, bias, use_batch_stats, factor, eps
        )
        if residual is not None:
            output = output + residual
        return F.relu(output) if call.relu else output

    if not usual:
        weight, bias, call = _contiguous(weight, bias, call)
    if synchronize:
        output = SyncBatchNormFunction.apply(input, weight, bias, call, process_group)
    else:
        output = apply_batch_norm(input, weight, bias, residual, call)
    if call.running_mean is not running_mean and call.update_running:
        running_mean.copy_(call.running_mean)  # strided running statistics: the copies' values
        running_var.copy_(call.running_var)
    return output


def _contiguous(
    weight: Tensor | None, bias: Tensor | None, call: BatchNormCall
) -> tuple[Tensor | None, Tensor | None, BatchNormCall]:
    """The kernels address per-channel tensors with stride 1: strided views (weight[::2], a column
    of a matrix) are read through contiguous copies; running statistics are copied back after."""
    running = [None if t is None else t.contiguous() for t in (call.running_mean, call.running_var)]
    return (
        None if weight is None else weight.contiguous(),
        None if bias is None else bias.contiguous(),
        call._replace(running_mean=running[0], running_var=running[1]),
    )


def fused_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    num_batches_tracked: Tensor | None = None,
    residual: Tensor | None = None,
    activation: str | None = None,
    synchronize: bool = False,
    process_group: Any = None,
) -> Tensor:
    """BatchNorm with the signature and results of ``torch.nn.functional.batch_norm``.

    In training the batch statistics normalise ``input`` and, when running statistics are given,
    update them in place: ``running = (1 - momentum) * running + momentum * batch`` with the unbiased
    batch variance. If ``num_batches_tracked`` is given it is incremented in training, and
    ``momentum=None`` then selects the cumulative average (factor ``1 / num_batches_tracked``), as
    ``torch.nn.BatchNorm*`` does; without ``num_batches_tracked`` it is a TypeError, as in torch.
    Outside training the running statistics normalise ``input``.

    ``residual`` (same shape as input) is added to the normalised output and ``activation="relu"``
    applies a ReLU after that, both inside the same kernels: relu(batch_norm(input) + residual).

    With ``synchronize=True`` in training, the batch statistics are those of the batches of every
    process in ``process_group`` (default: the whole torch.distributed world), as in
    ``torch.nn.SyncBatchNorm``; every process must make the call.

    The output has the input's dtype and memory format; statistics are computed in float32 (float64
    for float64 input). :func:`fusedbn.backend_for` tells which implementation runs.
    """
    if momentum is None and num_batches_tracked is None:
        check_batch_norm_args(
            input, running_mean, running_var, weight, bias, training, eps, num_batches_tracked,
            residual, activation,
        )
        raise TypeError(
            "batch_norm: momentum=None (the cumulative average) needs num_batches_tracked; "
            "torch.nn.functional.batch_norm takes a float momentum"
        )
    return batch_norm(
        input, running_mean, running_var, weight, bias, training, momentum, eps,
        num_batches_tracked, residual, activation, synchronize and training, process_group,
    )
