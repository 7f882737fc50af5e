"""The autograd Functions that connect the functional API to the fused BatchNorm launchers."""

from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.distributed as dist
from torch import Tensor

from fusedbn.kernels import batch_norm_backward, batch_norm_forward
from fusedbn.kernels.call import BatchNormCall
from fusedbn.kernels.layout import Plan, plan_batch_norm
from fusedbn.ops import backward_op, forward_op


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


def _launch_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
    call: BatchNormCall,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Plan | None]:
    """(y, mean, invstd, relu_mask, folded, plan): the launcher's outputs, the input as the kernels
    read it when that is a copy (else None) and the plan the backward reuses.

    While torch.compile traces, the custom operator runs and there is no plan; eager calls skip the
    operator's dispatcher round trip, a noticeable part of the host time of a small BatchNorm.
    """
    if torch.compiler.is_compiling():
        y, mean, invstd, relu_mask = forward_op(
            input, weight, bias, call.running_mean, call.running_var, call.num_batches_tracked,
            call.use_batch_stats, call.momentum, call.eps, residual, call.relu,
        )
        return y, mean, invstd, relu_mask if call.relu else None, None, None
    x, plan = plan_batch_norm(input, call.relu)
    y, mean, invstd, relu_mask = batch_norm_forward(x, plan, call, weight, bias, residual)
    return y, mean, invstd, relu_mask, None if x is input else x, plan


def _save(
    ctx: Any, input: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
    call: BatchNormCall, mean: Tensor, invstd: Tensor, relu_mask: Tensor | None,
    folded: Tensor | None, plan: Plan | None, for_forward: bool,
) -> None:
    """Keep what backward (and, with ``for_forward``, jvp) uses.

    The input is saved as given (its graph serves the gradients of gradients) and, when the kernels
    read a copy of it, that copy too, so the backward does not fold it again.
    """
    # Tensors without a gradient or tangent arrive as None.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, weight, bias, mean, invstd, relu_mask, folded)
    if for_forward:
        ctx.save_for_forward(input, weight, bias, mean, invstd, relu_mask, folded)
    ctx.plan = plan
    ctx.call = call
    ctx.residual_dtype = None if residual is None else residual.dtype


class FusedBatchNormFunction(torch.autograd.Function):
    """BatchNorm (+ residual add, + ReLU) forward and backward in Triton.

    Inputs: (input, weight, bias, residual, call); arguments are checked by the caller and ``call``
    (a BatchNormCall) says what to compute; the output is y. The plan (how the launches run) is
    reused by the backward. For a fused ReLU only a packed one-bit mask is saved, so backward keeps
    no full-size tensor beyond the input that BatchNorm itself needs.

    The kernels compute first derivatives. When a graph of the gradients is being built
    (``create_graph=True``), and for forward-mode AD (ForwardADBatchNormFunction), the derivatives
    come from autograd through :func:`differentiable_batch_norm` instead, with the fused ReLU's
    Jacobian taken from the saved mask. torch.compile applies this class (it traces no ``jvp``).
    """

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, weight: Tensor | None, bias: Tensor | None,
        residual: Tensor | None, call: BatchNormCall,
    ) -> Tensor:
        y, *saved = _launch_forward(input, weight, bias, residual, call)
        # A dual level is open exactly when forward-mode AD can ask for a jvp.
        _save(ctx, input, weight, bias, residual, call, *saved, fwAD._current_level >= 0)
        return y

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        if grad_output is None:
            return None, None, None, None, None
        input, weight, bias, mean, invstd, relu_mask, folded = ctx.saved_tensors
        needs_input, needs_weight, needs_bias, needs_residual, _ = ctx.needs_input_grad
        if torch.is_grad_enabled():
            grads = _differentiable_backward(ctx, grad_output, needs_residual)
        else:
            grads = _backward(
                ctx, grad_output, input if folded is None else folded, weight, mean, invstd,
                ctx.call.use_batch_stats, needs_weight or needs_bias, relu_mask, needs_residual,
            )
        grad_input, grad_weight, grad_bias, grad_residual = grads
        if needs_residual:
            # Without a ReLU the residual's gradient is dy itself, and the kernels computed none.
            grad_residual = _as(grad_output if relu_mask is None else grad_residual, ctx.residual_dtype)
        return (
            grad_input if needs_input else None,
            _as(grad_weight, weight.dtype) if needs_weight else None,
            _as(grad_bias, bias.dtype) if needs_bias else None,
            grad_residual if needs_residual else None,
            None,
        )


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (``Tensor.to`` costs a microsecond even when nothing changes)."""
    return t if t.dtype == dtype else t.to(dtype)


def _backward(
    ctx: Any, grad_output: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
    use_batch_stats: bool, need_param_grads: bool, relu_mask: Tensor | None, need_grad_residual: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The launcher's (grad_input, grad_weight, grad_bias, grad_residual): eagerly with the
    forward's plan, through the custom operator when there is none (torch.compile)."""
    if ctx.plan is None or torch.compiler.is_compiling():
        grads = backward_op(
            grad_output, x, weight, mean, invstd, use_batch_stats, need_param_grads, relu_mask,
            need_grad_residual,
        )
        return (*grads[:3], grads[3] if relu_mask is not None and need_grad_residual else None)
    return batch_norm_backward(
        grad_output, x, ctx.plan, weight, mean, invstd, use_batch_stats, need_param_grads,
        relu_mask, need_grad_residual,
    )


def _tangent(ctx: Any, t_input: Tensor | None, t_weight: Tensor | None, t_bias: Tensor | None,
             t_residual: Tensor | None) -> Tensor:
    """The output's tangent for the inputs' tangents (None: no tangent)."""
    input, weight, bias, mean, invstd, relu_mask, _ = ctx.saved_tensors
    call = ctx.call
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
            call.use_batch_stats, call.eps,
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
    return t_output.to(input.dtype)


def _has_tangent(*tensors: Tensor | None) -> bool:
    """Whether one of ``tensors`` carries a forward-mode tangent (a dual level is open)."""
    return any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors)


def _check_running_tangents(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, call: BatchNormCall
) -> None:
    """torch's rule: running statistics that normalise (eval) may carry tangents only when the
    input, weight and bias carry none (the output then has no tangent either)."""
    if (
        not call.use_batch_stats
        and _has_tangent(call.running_mean, call.running_var)
        and _has_tangent(input, weight, bias)
    ):
        raise RuntimeError(
            "batch_norm is not differentiable wrt running_mean and running_var, they cannot "
            "have forward grad defined"
        )


class ForwardADBatchNormFunction(FusedBatchNormFunction):
    """FusedBatchNormFunction with forward-mode AD (torch.autograd.forward_ad).

    A separate class because torch.compile does not trace a custom ``jvp``: compiled code uses
    FusedBatchNormFunction (see :func:`apply_batch_norm`).
    """

    @staticmethod
    def jvp(ctx: Any, t_input: Tensor | None, t_weight: Tensor | None, t_bias: Tensor | None,
            t_residual: Tensor | None, _: Any) -> Tensor:
        return _tangent(ctx, t_input, t_weight, t_bias, t_residual)


class FuncTransformBatchNormFunction(torch.autograd.Function):
    """FusedBatchNormFunction for torch.func's transforms (jvp, grad, vjp), which need the forward
    and ``setup_context`` apart (so every output the backward keeps is an output); slower, and used
    only while a transform is active. The ReLU's mask cannot be read under a transform."""

    @staticmethod
    def forward(
        input: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
        call: BatchNormCall,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Plan]:
        y, mean, invstd, relu_mask, _, plan = _launch_forward(input, weight, bias, residual, call)
        return y, mean, invstd, relu_mask, plan

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        input, weight, bias, residual, call = inputs
        _, mean, invstd, relu_mask, plan = output
        ctx.mark_non_differentiable(*(t for t in (mean, invstd, relu_mask) if t is not None))
        _save(ctx, input, weight, bias, residual, call, mean, invstd, relu_mask, None, plan, True)

    backward = staticmethod(FusedBatchNormFunction.backward)

    @staticmethod
    def jvp(ctx: Any, t_input: Tensor | None, t_weight: Tensor | None, t_bias: Tensor | None,
            t_residual: Tensor | None, _: Any) -> tuple[Tensor | None, ...]:
        return _tangent(ctx, t_input, t_weight, t_bias, t_residual), None, None, None, None


def apply_batch_norm(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
    call: BatchNormCall,
) -> Tensor:
    """The fused BatchNorm of checked arguments through the autograd Function that fits: the lean
    one in eager code, the compiled one under torch.compile, the one for torch.func's transforms
    while one is active; and no Function when nothing asks for a derivative."""
    if torch.compiler.is_compiling():
        return FusedBatchNormFunction.apply(input, weight, bias, residual, call)
    if torch._C._are_functorch_transforms_active():
        return FuncTransformBatchNormFunction.apply(input, weight, bias, residual, call)[0]
    if fwAD._current_level >= 0:
        _check_running_tangents(input, weight, bias, call)
        return ForwardADBatchNormFunction.apply(input, weight, bias, residual, call)
    if (
        torch.is_grad_enabled()
        and (
            input.requires_grad
            or (weight is not None and weight.requires_grad)
            or (bias is not None and bias.requires_grad)
            or (residual is not None and residual.requires_grad)
        )
    ):
        return ForwardADBatchNormFunction.apply(input, weight, bias, residual, call)
    x, plan = plan_batch_norm(input, call.relu)
    return batch_norm_forward(x, plan, call, weight, bias, residual, statistics=False)[0]


def _relu_jacobian(ctx: Any, like: Tensor) -> Tensor:
    """The fused ReLU's saved mask as 0/1 values shaped like the input, in ``like``'s dtype.

    The kernels unpack it: the residual's gradient of an upstream gradient of ones is the mask.
    """
    input, _, _, mean, invstd, relu_mask, folded = ctx.saved_tensors
    if torch._C._functorch.is_functorch_wrapped_tensor(input):
        raise NotImplementedError(
            "batch_norm: a fused ReLU (activation='relu') has no torch.func transform; use "
            "torch.autograd.forward_ad, or activation=None followed by torch.relu"
        )
    x = (input if folded is None else folded).detach()
    mask = _backward(ctx, torch.ones_like(x), x, None, mean, invstd, False, False, relu_mask, True)[3]
    return mask.to(like.dtype)


def _differentiable_backward(
    ctx: Any, grad_output: Tensor, needs_residual: bool
) -> tuple[Tensor | None, ...]:
    """(grad_input, grad_weight, grad_bias, grad_residual) as differentiable functions of the
    inputs and of grad_output, from autograd through :func:`differentiable_batch_norm`."""
    input, weight, bias, mean, invstd, relu_mask, _ = ctx.saved_tensors
    if relu_mask is not None:
        grad_output = grad_output * _relu_jacobian(ctx, grad_output)
    needed = ctx.needs_input_grad[:3]
    wanted = [t if need else None for t, need in zip((input, weight, bias), needed, strict=True)]
    grads = [None, None, None]
    wanted_tensors = [t for t in wanted if t is not None]
    if wanted_tensors:
        call = ctx.call
        y = differentiable_batch_norm(
            input, weight, bias, mean, invstd, call.use_batch_stats, call.eps
        )
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

    Each process computes its per-split (count, shift, mean - shift, M2) partials with the kernels;
    the partials are all-gathered (padded to the largest split count with empty splits) and
    combined in a fixed order, so every process gets the same statistics and running statistics.
    Backward all-reduces the per-channel sums of dy and dy * xhat. grad_weight and grad_bias are
    each process's own, as in torch.nn.SyncBatchNorm (data-parallel training then averages them).
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        call: BatchNormCall,
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
            folded, ctx.plan, call, weight, bias, combine_moments=combine_moments
        )
        ctx.save_for_backward(folded, weight, mean, invstd)
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
        folded, weight, mean, invstd = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]

        def combine_sums(sums: Tensor) -> tuple[Tensor, int]:
            total = sums.clone()
            dist.all_reduce(total, group=ctx.process_group)
            return total, ctx.n_total

        grad_input, grad_weight, grad_bias, _ = batch_norm_backward(
            grad_output, folded, ctx.plan, weight, mean, invstd, True, True,
            combine_sums=combine_sums,
        )
        return (
            grad_input if needs_input else None,
            _as(grad_weight, ctx.weight_dtype) if needs_weight else None,
            _as(grad_bias, ctx.bias_dtype) if needs_bias else None,
            None, None,
        )
