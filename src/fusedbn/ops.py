"""The Triton launchers registered as PyTorch custom operators.

Registering them (``torch.ops.fusedbn.batch_norm_forward`` and ``...backward``) with fake
implementations lets ``torch.compile(model, fullgraph=True)`` and ``torch.export`` treat a fused
BatchNorm as one opaque operator instead of breaking the graph at the kernel launches; the
operator schema records that the forward updates the running statistics in place.
"""

import torch
from torch import Tensor

from fusedbn.kernels import batch_norm_backward, batch_norm_forward
from fusedbn.kernels.layout import accumulator_dtype


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
) -> tuple[Tensor, Tensor, Tensor]:
    """BatchNorm forward; returns (output, mean, invstd). See kernels/forward.py."""
    return batch_norm_forward(
        input, weight, bias, running_mean, running_var, num_batches_tracked,
        use_batch_stats, momentum, eps,
    )


@forward_op.register_fake
def _forward_fake(input, weight, bias, running_mean, running_var, num_batches_tracked,
                  use_batch_stats, momentum, eps):
    stats = input.new_empty(input.shape[1], dtype=accumulator_dtype(input.dtype))
    return torch.empty_like(input), stats, torch.empty_like(stats)


@torch.library.custom_op("fusedbn::batch_norm_backward", mutates_args=())
def backward_op(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    use_batch_stats: bool,
    need_param_grads: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """BatchNorm backward; returns (grad_input, grad_weight, grad_bias). See kernels/backward.py."""
    return batch_norm_backward(
        grad_output, input, weight, mean, invstd, use_batch_stats, need_param_grads
    )


@backward_op.register_fake
def _backward_fake(grad_output, input, weight, mean, invstd, use_batch_stats, need_param_grads):
    return torch.empty_like(input), torch.empty_like(mean), torch.empty_like(mean)
