"""The Triton launchers registered as PyTorch custom operators.

Registering them (``torch.ops.fusedbn.batch_norm_forward`` and ``...backward``) with fake
implementations lets ``torch.compile(model, fullgraph=True)`` and ``torch.export`` treat a fused
BatchNorm as one opaque operator instead of breaking the graph at the kernel launches; the
operator schema records that the forward updates the running statistics in place.
"""

import torch
from torch import Tensor

from fusedbn.kernels import batch_norm_backward, batch_norm_forward
from fusedbn.kernels.backward import allocate_backward_outputs
from fusedbn.kernels.call import BatchNormCall
from fusedbn.kernels.forward import allocate_forward_outputs
from fusedbn.kernels.layout import fold_input, plan_batch_norm


@torch.library.custom_op("fusedbn::batch_norm_forward", mutates_args=("running_mean", "running_var"))
def forward_op(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    use_batch_stats: bool,
    momentum: float,
    eps: float,
    residual: Tensor | None,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BatchNorm forward (+ residual, + ReLU); returns (output, mean, invstd, relu_mask).

    The arguments are BatchNormCall's, flat (``num_batches_tracked`` only for the cumulative
    average); relu_mask is empty without a ReLU.
    """
    x, plan = plan_batch_norm(input, relu)
    call = BatchNormCall(
        use_batch_stats, running_mean, running_var, num_batches_tracked, momentum, eps, relu
    )
    return _with_empty_relu_mask(*batch_norm_forward(x, plan, call, weight, bias, residual))


def _with_empty_relu_mask(
    y: Tensor, mean: Tensor, invstd: Tensor, relu_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # A custom operator returns tensors: no relu_mask is an empty one.
    if relu_mask is None:
        relu_mask = torch.empty(0, dtype=torch.uint8, device=y.device)
    return y, mean, invstd, relu_mask


@forward_op.register_fake
def _forward_fake(input, weight, bias, running_mean, running_var, num_batches_tracked,
                  use_batch_stats, momentum, eps, residual, relu):
    return _with_empty_relu_mask(*allocate_forward_outputs(*fold_input(input), relu))


@torch.library.custom_op("fusedbn::batch_norm_backward", mutates_args=())
def backward_op(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    use_batch_stats: bool,
    need_param_grads: bool,
    relu_mask: Tensor | None,
    need_grad_residual: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BatchNorm backward; returns (grad_input, grad_weight, grad_bias, grad_residual).

    grad_residual is only computed with a ReLU mask and need_grad_residual (else it is empty).
    """
    x, plan = plan_batch_norm(input, relu_mask is not None)
    return _with_empty_grad_residual(*batch_norm_backward(
        grad_output, x, plan, weight, mean, invstd, use_batch_stats, need_param_grads,
        relu_mask, need_grad_residual,
    ))


def _with_empty_grad_residual(
    grad_input: Tensor, grad_weight: Tensor, grad_bias: Tensor, grad_residual: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # A custom operator returns tensors: no grad_residual is an empty one.
    if grad_residual is None:
        grad_residual = grad_input.new_empty(0)
    return grad_input, grad_weight, grad_bias, grad_residual


@backward_op.register_fake
def _backward_fake(grad_output, input, weight, mean, invstd, use_batch_stats, need_param_grads,
                   relu_mask, need_grad_residual):
    outputs = allocate_backward_outputs(*fold_input(input), relu_mask is not None and need_grad_residual)
    return _with_empty_grad_residual(*outputs)
