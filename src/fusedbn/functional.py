"""The functional BatchNorm: torch.nn.functional.batch_norm's signature, run by fusedbn's kernels.

One call path serves the functional API and the modules: :func:`batch_norm` picks the implementation
(:mod:`fusedbn.backend`), then runs torch's BatchNorm (:func:`torch_batch_norm`) or checks the
arguments and runs the kernels, through :class:`fusedbn.autograd.BatchNormFunction` in eager code
and through the custom operator of :mod:`fusedbn.ops` in compiled code. Both public entry points
(:func:`fused_batch_norm` and :func:`module_batch_norm`) are torch functions that tracers such as
``torch.fx.symbolic_trace`` record as one node.
"""

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import handle_torch_function, has_torch_function_variadic

from fusedbn.autograd import BatchNormFunction
from fusedbn.backend import TORCH, implementation
from fusedbn.kernels.call import BatchNormOptions

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


def check_epilogue(input: Tensor, residual: Tensor | None, activation: str | None) -> bool:
    """Check the fused epilogue's arguments; returns whether a ReLU is fused."""
    if activation is not None and activation != "relu":
        raise ValueError(f"batch_norm: activation must be one of {ACTIVATIONS}, got {activation!r}")
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
    return activation is not None


PER_CHANNEL = ("running_mean", "running_var", "weight", "bias")


def check_batch_norm_args(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
    num_batches_tracked: Tensor | None,
) -> bool:
    """Raise the error torch would raise for a bad BatchNorm call, with a message naming the problem.

    Run before the kernels touch anything, so a rejected call changes nothing. As in torch, an
    empty input is not held to the dtype rule (its output and gradients are empty or zero).
    Returns whether every per-channel tensor has stride 1, as the kernels address them.
    """
    dtype = input.dtype
    allowed = PARAMETER_DTYPES.get(dtype)
    if allowed is None:
        raise TypeError(f"batch_norm: input must be float16, bfloat16, float32 or float64, got {dtype}")
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm: expected input of shape (N, C, ...) with at least 2 dims, "
            f"got {input.dim()}D input of shape {tuple(input.shape)}"
        )
    num_channels, device, numel = input.shape[1], input.device, input.numel()
    common_dtype, stride_one = None, True
    for name, tensor in zip(PER_CHANNEL, (running_mean, running_var, weight, bias), strict=True):
        if tensor is None:
            continue
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"batch_norm: {name} must be a floating tensor, got {tensor.dtype}")
        common_dtype = common_dtype or tensor.dtype
        if (tensor.dtype not in allowed or tensor.dtype != common_dtype) and numel > 0:
            raise RuntimeError(
                f"batch_norm: mixed dtypes: {name} is {tensor.dtype} with {dtype} input; "
                f"weight, bias and running statistics must all be {dtype}"
                + (" or all float32" if len(allowed) > 1 else "")
            )
        if tensor.numel() != num_channels:
            raise RuntimeError(
                f"batch_norm: {name} should contain {num_channels} elements (one per channel of "
                f"input {tuple(input.shape)}), not {tensor.numel()}"
            )
        if tensor.device != device:
            raise RuntimeError(
                f"batch_norm: expected all tensors on one device, but input is on {device} "
                f"and {name} is on {tensor.device}"
            )
        stride_one = stride_one and tensor.stride() == (1,)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must be given together")
    if not training and running_mean is None:
        raise ValueError("batch_norm: running_mean and running_var are required when training=False")
    if num_batches_tracked is not None and (
        num_batches_tracked.numel() != 1 or num_batches_tracked.device != device
    ):
        raise RuntimeError(
            "batch_norm: num_batches_tracked must be a one-element tensor on the input's device"
        )
    if eps < 0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if training:
        # Like torch: exactly one value per channel is an error; an empty batch is not.
        if numel == num_channels and num_channels > 0:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.shape}"
            )
        if eps <= 0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    return stride_one


def statistics_arguments(
    training: bool,
    track_running_stats: bool,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
) -> tuple[Tensor | None, Tensor | None, bool, Tensor | None]:
    """A BatchNorm module's (running_mean, running_var, use_batch_stats, num_batches_tracked) for a
    call now, by torch's rule: batch statistics in training or without running statistics; the
    running statistics when they normalise (eval) or are updated (tracked training); the counter
    in tracked training. Written in TorchScript's subset: scripted modules run it."""
    if not training:
        return running_mean, running_var, running_mean is None and running_var is None, None
    if not track_running_stats:
        return None, None, True, None
    return running_mean, running_var, True, num_batches_tracked


def averaging_factor(momentum: float | None, num_batches_tracked: Tensor | None) -> float:
    """The factor that folds a batch into the running statistics, torch's rule: ``momentum``, or
    for ``momentum=None`` the cumulative average's ``1 / (earlier batches + 1)``, where
    ``num_batches_tracked`` counts the earlier batches (0.0 when nothing is counted)."""
    if momentum is not None:
        return momentum
    if num_batches_tracked is None:
        return 0.0
    return 1.0 / (float(num_batches_tracked) + 1.0)


def torch_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Tensor | None,
    residual: Tensor | None,
    relu: bool,
) -> Tensor:
    """fused_batch_norm's result computed by torch: ``F.batch_norm``, then torch's add and ReLU.

    ``num_batches_tracked`` counts the batches folded into the running statistics, after the
    normalisation, so a call torch rejects changes nothing. Written in TorchScript's subset:
    scripted modules run it.
    """
    output = F.batch_norm(
        input, running_mean, running_var, weight, bias, training,
        averaging_factor(momentum, num_batches_tracked), eps,
    )
    if training and num_batches_tracked is not None and running_mean is not None:
        num_batches_tracked.add_(1)
    if residual is not None:
        output = output + residual
    if relu:
        output = F.relu(output)
    return output


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Tensor | None,
    residual: Tensor | None,
    activation: str | None,
    backend: str,
    synchronize: bool = False,
    process_group: Any = None,
) -> Tensor:
    """The BatchNorm of both entry points, arguments as :func:`fused_batch_norm`'s (``synchronize``
    only in training)."""
    compiling = torch.compiler.is_compiling()
    if compiling:
        from fusedbn import ops  # the compiled code's operators (imported when the compiler traces)
    relu = check_epilogue(input, residual, activation)
    if synchronize:
        if residual is not None or relu:
            raise ValueError("batch_norm: synchronized BatchNorm fuses no residual or activation")
        process_group = dist.group.WORLD if process_group is None else process_group
        if process_group is None:
            raise ValueError(
                "batch_norm: synchronized BatchNorm needs torch.distributed's process group: "
                "call torch.distributed.init_process_group first"
            )
    else:
        process_group = None
    if implementation(backend, input, training, residual, relu, synchronize) == TORCH:
        if synchronize:
            raise ValueError(
                "batch_norm: synchronized BatchNorm runs fusedbn's kernels only, with the "
                "backend 'triton' or 'auto' where the kernels run (torch.nn.SyncBatchNorm is "
                "torch's own)"
            )
        return torch_batch_norm(
            input, running_mean, running_var, weight, bias, training, momentum, eps,
            num_batches_tracked, residual, relu,
        )
    stride_one = check_batch_norm_args(
        input, running_mean, running_var, weight, bias, training, eps, num_batches_tracked
    )
    options = BatchNormOptions(training, momentum, eps, relu, process_group)
    # The kernels address per-channel tensors with stride 1: strided views (weight[::2]) are read,
    # and updated, through copies.
    weight, bias, kernel_mean, kernel_var = (
        (weight, bias, running_mean, running_var) if stride_one else
        (None if t is None else t.contiguous() for t in (weight, bias, running_mean, running_var))
    )  # fmt: skip
    arguments = (input, weight, bias, residual, kernel_mean, kernel_var, num_batches_tracked, options)
    if compiling and not synchronize:
        output = ops.compiled_batch_norm(*arguments)
    else:
        output = BatchNormFunction.apply(*arguments)[0]
    if kernel_mean is not running_mean and training:
        running_mean.copy_(kernel_mean)
        running_var.copy_(kernel_var)
    if training and num_batches_tracked is not None and running_mean is not None:
        num_batches_tracked.add_(1)
    return output


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
    backend: str = "auto",
    synchronize: bool = False,
    process_group: Any = None,
) -> Tensor:
    """BatchNorm with the signature and results of ``torch.nn.functional.batch_norm``.

    ``input`` is (N, C, ...); ``running_mean``, ``running_var``, ``weight`` and ``bias`` hold one
    value per channel (or are None). In training the batch statistics normalise ``input`` and, when
    running statistics are given, update them in place:
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased batch variance.
    ``num_batches_tracked``, if given, counts the batches folded into the running statistics, and
    ``momentum=None`` then selects the cumulative average (factor 1 / the count including this
    batch), as ``torch.nn.BatchNorm*`` does; without ``num_batches_tracked`` it is a TypeError, as
    in torch. Outside training the running statistics normalise ``input``.

    ``residual`` (the input's shape) is added to the normalised output and ``activation="relu"``
    applies a ReLU after that, both inside the same kernels: relu(batch_norm(input) + residual).

    ``backend`` chooses the implementation: ``"auto"`` (fusedbn's choice, see :mod:`fusedbn.backend`),
    ``"triton"`` or ``"torch"``; :func:`fusedbn.backend_for` tells which one runs where.

    With ``synchronize=True`` in training, the batch statistics are those of the batches of every
    process in ``process_group`` (default: the whole torch.distributed world), as in
    ``torch.nn.SyncBatchNorm``; every process must make the call.

    The output has the input's dtype and memory format; statistics are computed in float32 (float64
    for float64 input).
    """
    if has_torch_function_variadic(input, running_mean, running_var, weight, bias, residual):
        return handle_torch_function(
            fused_batch_norm, (input, running_mean, running_var, weight, bias, residual), input,
            running_mean, running_var, weight, bias, training, momentum, eps,
            num_batches_tracked=num_batches_tracked, residual=residual, activation=activation,
            backend=backend, synchronize=synchronize, process_group=process_group,
        )
    if momentum is None and num_batches_tracked is None:
        raise TypeError(
            "batch_norm: momentum=None (the cumulative average) needs num_batches_tracked; "
            "torch.nn.functional.batch_norm takes a float momentum"
        )
    return batch_norm(
        input, running_mean, running_var, weight, bias, training, momentum, eps,
        num_batches_tracked, residual, activation, backend, synchronize and training,
        process_group,
    )


def module_batch_norm(module: nn.Module, input: Tensor, residual: Tensor | None = None) -> Tensor:
    """The forward of fusedbn's BatchNorm modules, as torch's ``_BatchNorm.forward`` decides it.

    Batch statistics in training, or when the module has no running statistics; the running
    statistics are passed when they normalise (eval) or are updated (training, tracked), and
    ``num_batches_tracked`` is counted in tracked training. Tracers record it as one node taking
    the module, so a traced model still follows the module's training flag.
    """
    if has_torch_function_variadic(input, residual):
        return handle_torch_function(module_batch_norm, (input, residual), module, input, residual)
    module._check_input_dim(input)
    # The module's own dicts: nn.Module's __getattr__, which finds parameters and buffers for
    # ``module.weight``, costs about as much as a small eager call's whole decision.
    buffers, parameters = module._buffers, module._parameters
    running_mean, running_var, use_batch_stats, num_batches_tracked = statistics_arguments(
        module.training, module.track_running_stats, buffers["running_mean"],
        buffers["running_var"], buffers["num_batches_tracked"],
    )
    group = module.synchronization_group()
    if group is not None and implementation(module.backend, input, True, synchronize=True) == TORCH:
        return nn.SyncBatchNorm.forward(module, input)
    return batch_norm(
        input, running_mean, running_var, parameters["weight"], parameters["bias"],
        use_batch_stats, module.momentum, module.eps, num_batches_tracked, residual,
        module.activation, module.backend, group is not None, group,
    )
