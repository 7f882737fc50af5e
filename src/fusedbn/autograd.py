"""The autograd Functions that connect the functional API to the fused BatchNorm launchers."""

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fusedbn.kernels import batch_norm_backward, batch_norm_forward
from fusedbn.kernels.layout import Plan, plan_batch_norm
from fusedbn.ops import backward_op, forward_op


def _forward(
    input: Tensor, *args: Any, relu: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Plan | None]:
    """The launcher's (output, mean, invstd, relu_mask), and the plan its backward reuses.

    While torch.compile traces, the custom operator runs and there is no plan; eager calls skip the
    operator's dispatcher round trip, a noticeable part of the host time of a small BatchNorm.
    """
    if torch.compiler.is_compiling():
        return (*forward_op(input, *args, relu), None)
    folded, plan = plan_batch_norm(input, relu)
    return (*batch_norm_forward(folded, *args, relu, plan=plan), plan)


def _backward(
    plan: Plan | None, grad_output: Tensor, input: Tensor, *args: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The launcher's (grad_input, grad_weight, grad_bias, grad_residual)."""
    if plan is None or torch.compiler.is_compiling():
        return backward_op(grad_output, input, *args)
    return batch_norm_backward(grad_output, input, *args, plan=plan)


def differentiable_batch_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    use_batch_stats: bool,
    eps: float,
) -> Tensor:
    """BatchNorm written with differentiable torch operations, for the gradients of gradients.

    The values are those of the kernels: ``mean`` and ``invstd`` are the statistics the forward
    used, and with batch statistics they carry the derivatives of the batch mean and 1 / std with
    respect to ``input`` (``s + (t - t.detach())`` has s's value and t's derivative). The result is
    in the statistics' dtype.
    """
    x = input.to(mean.dtype)
    shape = [1, -1] + [1] * (input.dim() - 2)
    if use_batch_stats and input.numel() > 0:
        dims = [d for d in range(input.dim()) if d != 1]
        batch_mean = x.mean(dims)
        batch_invstd = torch.rsqrt(x.var(dims, correction=0) + eps)
        mean = mean + (batch_mean - batch_mean.detach())
        invstd = invstd + (batch_invstd - batch_invstd.detach())
    y = (x - mean.view(shape)) * invstd.view(shape)
    if weight is not None:
        y = y * weight.to(mean.dtype).view(shape)
    if bias is not None:
        y = y + bias.to(mean.dtype).view(shape)
    return y


class FusedBatchNormFunction(torch.autograd.Function):
    """BatchNorm (+ residual add, + ReLU) forward and backward in Triton.

    Arguments are checked by the caller. ``forward`` returns (output, mean, invstd, relu_mask, plan);
    only the output is differentiable, and the plan (how the launches run) is reused by the
    backward. For a fused ReLU only a packed one-bit mask is saved, so backward keeps no full-size
    tensor beyond the input that BatchNorm itself needs.

    The kernels compute first derivatives. When a graph of the gradients is being built
    (``create_graph=True``), and for forward-mode AD (ForwardADBatchNormFunction), the derivatives
    come from autograd through :func:`differentiable_batch_norm` instead, with the fused ReLU's
    Jacobian taken from the saved mask.
    """

    @staticmethod
    def forward(
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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Plan | None]:
        return _forward(
            input, weight, bias, running_mean, running_var, num_batches_tracked,
            use_batch_stats, momentum, eps, residual, relu=relu,
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, weight, bias, *_ = inputs
        use_batch_stats, _, eps, residual, relu = inputs[6:]
        _, mean, invstd, relu_mask, ctx.plan = output
        ctx.mark_non_differentiable(mean, invstd, relu_mask)
        # Tensors without a gradient or tangent arrive as None (and running statistics that carry
        # a tangent can be told apart from those that do not).
        ctx.set_materialize_grads(False)
        saved = (input, weight, bias, mean, invstd, relu_mask if relu else None)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.use_batch_stats = use_batch_stats
        ctx.eps = eps
        ctx.residual_dtype = None if residual is None else residual.dtype

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        if grad_output is None:
            return (None,) * 11
        input, weight, bias, mean, invstd, relu_mask = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        needs_residual = ctx.needs_input_grad[9]
        if torch.is_grad_enabled():
            grads = _differentiable_backward(ctx, grad_output, needs_residual)
        else:
            grads = _backward(
                ctx.plan, grad_output, input, weight, mean, invstd, ctx.use_batch_stats,
                needs_weight or needs_bias, relu_mask, needs_residual,
            )
        grad_input, grad_weight, grad_bias, grad_residual = grads
        if not needs_residual:
            grad_residual = None
        else:
            # Without a ReLU the residual's gradient is dy itself, and the kernels computed none.
            grad_residual = (grad_output if relu_mask is None else grad_residual).to(
                ctx.residual_dtype
            )
        return (
            grad_input if needs_input else None,
            grad_weight.to(weight.dtype) if needs_weight else None,
            grad_bias.to(bias.dtype) if needs_bias else None,
            None, None, None, None, None, None, grad_residual, None,
        )


class ForwardADBatchNormFunction(FusedBatchNormFunction):
    """FusedBatchNormFunction with forward-mode AD (torch.autograd.forward_ad, torch.func.jvp).

    A separate class because torch.compile does not trace a custom ``jvp``: compiled code uses
    FusedBatchNormFunction (see :func:`batch_norm_function`).
    """

    @staticmethod
    def jvp(ctx: Any, *tangents: Tensor | None) -> tuple[Tensor | None, ...]:
        input, weight, bias, mean, invstd, relu_mask = ctx.saved_tensors
        t_input, t_weight, t_bias, t_running_mean, t_running_var = tangents[:5]
        t_residual = tangents[9]
        if not ctx.use_batch_stats and (t_running_mean is not None or t_running_var is not None):
            raise RuntimeError(
                "batch_norm is not differentiable wrt running_mean and running_var, they cannot "
                "have forward grad defined"
            )
        primals, primal_tangents, names = [], [], []
        for name, primal, tangent in (
            ("input", input, t_input), ("weight", weight, t_weight), ("bias", bias, t_bias)
        ):
            if primal is not None and tangent is not None:
                names.append(name)
                primals.append(primal)
                primal_tangents.append(tangent.to(primal.dtype))
        affine = {"input": input, "weight": weight, "bias": bias}

        def normalized(*values: Tensor) -> Tensor:
            tensors = {**affine, **dict(zip(names, values, strict=True))}
            return differentiable_batch_norm(
                tensors["input"], tensors["weight"], tensors["bias"], mean, invstd,
                ctx.use_batch_stats, ctx.eps,
            )

        if primals:
            # J t by reverse mode twice (forward mode cannot nest in torch.autograd.forward_ad):
            # vjp(u) = J^T u is linear in u, and its own vjp at the cotangent t is J t.
            output, vjp = torch.func.vjp(normalized, *primals)
            _, vjp_of_vjp = torch.func.vjp(vjp, torch.zeros_like(output))
            t_output = vjp_of_vjp(tuple(primal_tangents))[0]
        else:
            t_output = torch.zeros_like(input, dtype=mean.dtype)
        if t_residual is not None:
            t_output = t_output + t_residual
        if relu_mask is not None:
            t_output = t_output * _relu_jacobian(ctx, t_output)
        return t_output.to(input.dtype), None, None, None, None


def batch_norm_function() -> type[FusedBatchNormFunction]:
    """The autograd Function to apply: with forward-mode AD in eager code, without it when compiling."""
    if torch.compiler.is_compiling():
        return FusedBatchNormFunction
    return ForwardADBatchNormFunction


def _relu_jacobian(ctx: Any, like: Tensor) -> Tensor:
    """The fused ReLU's saved mask as 0/1 values shaped like the input, in ``like``'s dtype.

    The kernels unpack it: the residual's gradient of an upstream gradient of ones is the mask.
    """
    input, _, _, mean, invstd, relu_mask = ctx.saved_tensors
    if torch._C._functorch.is_functorch_wrapped_tensor(input):
        raise NotImplementedError(
            "batch_norm: a fused ReLU (activation='relu') has no torch.func transform; use "
            "torch.autograd.forward_ad, or activation=None followed by torch.relu"
        )
    ones = torch.ones_like(input)
    mask = _backward(
        ctx.plan, ones, input.detach(), None, mean, invstd, False, False, relu_mask, True
    )[3]
    return mask.to(like.dtype)


def _differentiable_backward(
    ctx: Any, grad_output: Tensor, needs_residual: bool
) -> tuple[Tensor | None, ...]:
    """(grad_input, grad_weight, grad_bias, grad_residual) as differentiable functions of the
    inputs and of grad_output, from autograd through :func:`differentiable_batch_norm`."""
    input, weight, bias, mean, invstd, relu_mask = ctx.saved_tensors
    if relu_mask is not None:
        grad_output = grad_output * _relu_jacobian(ctx, grad_output)
    needed = ctx.needs_input_grad[:3]
    wanted = [t if need else None for t, need in zip((input, weight, bias), needed, strict=True)]
    grads = [None, None, None]
    wanted_tensors = [t for t in wanted if t is not None]
    if wanted_tensors:
        y = differentiable_batch_norm(input, weight, bias, mean, invstd, ctx.use_batch_stats, ctx.eps)
        found = iter(
            torch.autograd.grad(
                y, wanted_tensors, grad_output.to(y.dtype), create_graph=True, allow_unused=True
            )
        )
        grads = [None if t is None else next(found) for t in wanted]
    grad_input = None if grads[0] is None else grads[0].to(input.dtype)
    return grad_input, grads[1], grads[2], grad_output if needs_residual else None


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
        if torch.is_grad_enabled():
            raise RuntimeError(
                "synchronized BatchNorm has no gradients of gradients (create_graph=True): its "
                "backward is the kernels' first derivative only"
            )
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
