"""The autograd Function that connects the functional API to the fused BatchNorm operators."""

from typing import Any

import torch
from torch import Tensor

from fusedbn.kernels import batch_norm_backward, batch_norm_forward
from fusedbn.ops import backward_op, forward_op


def _forward(*args: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # torch.compile and torch.export must see the custom operator; eager calls skip its
    # dispatcher round trip, a noticeable part of the host time of a small BatchNorm.
    if torch.compiler.is_compiling():
        return forward_op(*args)
    return batch_norm_forward(*args)


def _backward(*args: Any) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    if torch.compiler.is_compiling():
        return backward_op(*args)
    return batch_norm_backward(*args)


class FusedBatchNormFunction(torch.autograd.Function):
    """BatchNorm (+ residual add, + ReLU) forward and backward in Triton.

    Arguments are checked by the caller. For a fused ReLU only a packed one-bit mask is saved, so
    backward keeps no full-size tensor beyond the input that BatchNorm itself needs.
    """

    @staticmethod
    def forward(
        ctx: Any,
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
    ) -> Tensor:
        output, mean, invstd, relu_mask = _forward(
            input, weight, bias, running_mean, running_var, num_batches_tracked,
            use_batch_stats, momentum, eps, residual, relu,
        )
        ctx.save_for_backward(input, weight, mean, invstd, relu_mask if relu else None)
        ctx.use_batch_stats = use_batch_stats
        ctx.weight_dtype = None if weight is None else weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.residual_dtype = None if residual is None else residual.dtype
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, mean, invstd, relu_mask = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        needs_residual = ctx.needs_input_grad[9]
        grad_input, grad_weight, grad_bias, grad_residual = _backward(
            grad_output, input, weight, mean, invstd, ctx.use_batch_stats,
            needs_weight or needs_bias, relu_mask, needs_residual,
        )
        if not needs_input:
            grad_input = None
        grad_weight = grad_weight.to(ctx.weight_dtype) if needs_weight else None
        grad_bias = grad_bias.to(ctx.bias_dtype) if needs_bias else None
        if not needs_residual:
            grad_residual = None
        else:
            # Without a ReLU the residual's gradient is dy itself, and the kernels computed none.
            grad_residual = (grad_output if relu_mask is None else grad_residual).to(
                ctx.residual_dtype
            )
        return (grad_input, grad_weight, grad_bias, None, None, None, None, None, None,
                grad_residual, None)
