"""The autograd Function that connects the functional API to the fused BatchNorm operators."""

from typing import Any

import torch
from torch import Tensor

from fusedbn.ops import backward_op, forward_op


class FusedBatchNormFunction(torch.autograd.Function):
    """BatchNorm forward and backward in Triton; arguments are checked by the caller."""

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
    ) -> Tensor:
        output, mean, invstd = forward_op(
            input,
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            use_batch_stats,
            momentum,
            eps,
        )
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.use_batch_stats = use_batch_stats
        ctx.weight_dtype = None if weight is None else weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, mean, invstd = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_input, grad_weight, grad_bias = backward_op(
            grad_output,
            input,
            weight,
            mean,
            invstd,
            ctx.use_batch_stats,
            need_param_grads=needs_weight or needs_bias,
        )
        if not needs_input:
            grad_input = None
        grad_weight = grad_weight.to(ctx.weight_dtype) if needs_weight else None
        grad_bias = grad_bias.to(ctx.bias_dtype) if needs_bias else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None
