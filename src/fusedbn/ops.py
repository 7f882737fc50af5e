"""The Triton launchers registered as PyTorch custom operators.

Registering them (``torch.ops.fusedbn.batch_norm_forward`` and ``...backward``) with fake
implementations lets ``torch.compile(model, fullgraph=True)`` and ``torch.export`` treat a fused
BatchNorm as one opaque operator instead of breaking the graph at the kernel launches; the
operator schema records that the forward updates the running statistics in place.
"""

import torch
from torch import Tensor

from fusedbn.kernels import batch_norm_backward, batch_norm_forward
from fusedbn.kernels.layout import accumulator_dtype, fold_input, relu_mask_like


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
    """BatchNorm forward (+ residual, + ReLU); returns (output, mean, invstd, relu_mask)."""
    return batch_norm_forward(
        input, weight, bias, running_mean, running_var, num_batches_tracked,
        use_batch_stats, momentum, eps, residual, relu,
    )


@forward_op.register_fake
def _forward_fake(input, weight, bias, running_mean, running_var, num_batches_tracked,
                  use_batch_stats, momentum, eps, residual, relu):
    x, view = fold_input(input)
    stats = x.new_empty(view.num_channels, dtype=accumulator_dtype(x.dtype))
    relu_mask = relu_mask_like(x, view) if relu else x.new_empty(0, dtype=torch.uint8)
    return torch.empty_like(x), stats, torch.empty_like(stats), relu_mask


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
    grad_input, grad_weight, grad_bias, grad_residual = batch_norm_backward(
        grad_output, input, weight, mean, invstd, use_batch_stats, need_param_grads,
        relu_mask, need_grad_residual,
    )
    if grad_residual is None:
        grad_residual = grad_input.new_empty(0)
    return grad_input, grad_weight, grad_bias, grad_residual


@backward_op.register_fake
def _backward_fake(grad_output, input, weight, mean, invstd, use_batch_stats, need_param_grads,
                   relu_mask, need_grad_residual):
    x, _ = fold_input(input)
    grad_residual = torch.empty_like(x) if relu_mask is not None and need_grad_residual else (
        x.new_empty(0)
    )
    return torch.empty_like(x), torch.empty_like(mean), torch.empty_like(mean), grad_residual
