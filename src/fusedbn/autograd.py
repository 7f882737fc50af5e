"""The autograd Functions that connect the functional API to the fused BatchNorm launchers."""

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fusedbn.kernels import batch_norm_backward, batch_norm_forward
from fusedbn.kernels.layout import Plan, plan_batch_norm
from fusedbn.ops import backward_op, forward_op


def _forward(plan: Plan | None, *args: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # torch.compile and torch.export must see the custom operator; eager calls skip its
    # dispatcher round trip, a noticeable part of the host time of a small BatchNorm, and pass
    # the plan that the backward reuses.
    if plan is None:
        return forward_op(*args)
    return batch_norm_forward(*args, plan=plan)


def _backward(plan: Plan | None, *args: Any) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    if plan is None or torch.compiler.is_compiling():
        return backward_op(*args)
    return batch_norm_backward(*args, plan=plan)


def _plan(input: Tensor, relu: bool) -> tuple[Tensor, Plan | None]:
    """The folded input and the plan of an eager call, kept for its backward; no plan while
    torch.compile traces."""
    return (input, None) if torch.compiler.is_compiling() else plan_batch_norm(input, relu)


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
        folded, ctx.plan = _plan(input, relu)
        output, mean, invstd, relu_mask = _forward(
            ctx.plan, folded, weight, bias, running_mean, running_var, num_batches_tracked,
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
            ctx.plan, grad_output, input, weight, mean, invstd, ctx.use_batch_stats,
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


class SyncBatchNormFunction(torch.autograd.Function):
    """Training BatchNorm whose statistics cover the batches of every process in a group.

    Each process computes its per-split (count, shift, mean - shift, M2) partials with the kernels; the
    partials
    are all-gathered (padded to the largest split count with empty splits) and combined in a fixed
    order, so every process gets the same statistics and running statistics. Backward all-reduces
    the per-channel sums of dy and dy * xhat. grad_weight and grad_bias are each process's own, as
    in torch.nn.SyncBatchNorm (data-parallel training then averages them).
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
        momentum: float,
        eps: float,
        process_group: Any,
    ) -> Tensor:
        def combine_moments(partial: Tensor) -> tuple[Tensor, int]:
            world = dist.get_world_size(process_group)
            sizes = torch.tensor(
                [partial.shape[1], input.numel() // input.shape[1]], device=partial.device
            )
            all_sizes = [torch.empty_like(sizes) for _ in range(world)]
            dist.all_gather(all_sizes, sizes, group=process_group)
            all_sizes = torch.stack(all_sizes).tolist()
            padded = partial.new_zeros(
                (partial.shape[0], max(s for s, _ in all_sizes), partial.shape[2])
            )
            padded[:, : partial.shape[1]] = partial
            gathered = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(gathered, padded, group=process_group)
            ctx.n_total = sum(n for _, n in all_sizes)
            return torch.cat(gathered, dim=1), ctx.n_total

        folded, ctx.plan = plan_batch_norm(input)
        output, mean, invstd, _ = batch_norm_forward(
            folded, weight, bias, running_mean, running_var, num_batches_tracked, True,
            momentum, eps, combine_moments=combine_moments, plan=ctx.plan,
        )
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.process_group = process_group
        ctx.weight_dtype = None if weight is None else weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, mean, invstd = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]

        def combine_sums(sums: Tensor) -> tuple[Tensor, int]:
            total = sums.clone()
            dist.all_reduce(total, group=ctx.process_group)
            return total, ctx.n_total

        grad_input, grad_weight, grad_bias, _ = batch_norm_backward(
            grad_output, input, weight, mean, invstd, True, True, combine_sums=combine_sums,
            plan=ctx.plan,
        )
        return (
            grad_input if needs_input else None,
            grad_weight.to(ctx.weight_dtype) if needs_weight else None,
            grad_bias.to(ctx.bias_dtype) if needs_bias else None,
            None, None, None, None, None, None,
        )
