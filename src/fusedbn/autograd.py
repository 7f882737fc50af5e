"""The autograd Function that runs fusedbn's kernels in eager code, with every kind of derivative.

:class:`BatchNormFunction` launches the kernels forward and backward. First derivatives come from
the kernels. Gradients of gradients (``create_graph=True``, and every torch.func transform, which
differentiates with a graph) come from :func:`differentiable_backward`, forward-mode derivatives
from :func:`output_tangent`, both BatchNorm's derivative formulas in torch operations at the
kernels' statistics; ``vmap`` runs the kernels once over the samples' channels side by side.
Compiled code uses the custom operators of :mod:`fusedbn.ops` instead.
"""

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from fusedbn.kernels import batch_norm_backward, batch_norm_forward
from fusedbn.kernels.call import BatchNormOptions
from fusedbn.kernels.layout import Plan, plan_batch_norm


def reduction_dims(x: Tensor) -> list[int]:
    """Every dim of ``x`` but the channel dim: the dims BatchNorm reduces over."""
    return [d for d in range(x.dim()) if d != 1]


def channel_shape(x: Tensor) -> list[int]:
    """The shape that broadcasts a per-channel vector against ``x``: [1, C, 1, ...]."""
    return [1, -1] + [1] * (x.dim() - 2)


def relu_passes(y: Tensor) -> Tensor:
    """Where a fused ReLU let the gradient through: "not y <= 0", as torch's ReLU (NaN passes)."""
    return torch.logical_not(y <= 0)


def statistics_with_derivatives(
    input: Tensor, mean: Tensor, invstd: Tensor, use_batch_stats: bool, eps: float
) -> tuple[Tensor, Tensor]:
    """``mean`` and ``invstd``, the statistics the kernels used, carrying with batch statistics the
    derivatives of the batch mean and 1 / std with respect to ``input`` (``s + (t - t.detach())``
    has s's value and t's derivatives), so that formulas written with them differentiate right."""
    if not use_batch_stats or input.numel() == 0:
        return mean, invstd
    x = input.to(mean.dtype)
    dims = reduction_dims(input)
    batch_mean = x.mean(dims)
    batch_invstd = torch.rsqrt(x.var(dims, correction=0) + eps)
    return mean + (batch_mean - batch_mean.detach()), invstd + (batch_invstd - batch_invstd.detach())


def through_normalisation(
    t: Tensor, xhat: Tensor, weight: Tensor | None, invstd: Tensor, use_batch_stats: bool
) -> Tensor:
    """``t`` (the output's gradient, or the input's tangent) carried through the normalisation:
    ``weight * invstd * t`` in eval and, with batch statistics, the batch statistics' share
    removed: ``weight * invstd * (t - mean(t) - xhat * mean(xhat * t))``."""
    if use_batch_stats:
        dims = reduction_dims(xhat)
        t = t - t.mean(dims, keepdim=True) - xhat * (xhat * t).mean(dims, keepdim=True)
    scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
    return t * scale.view(channel_shape(xhat))


def output_tangent(
    input: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor, output: Tensor | None,
    options: BatchNormOptions, t_input: Tensor | None, t_weight: Tensor | None,
    t_bias: Tensor | None, t_residual: Tensor | None,
) -> Tensor:
    """The output's tangent for the inputs' tangents (None where they have none).

    With xhat = (x - mean) * invstd: t_y = (t_x through the normalisation) + xhat * t_weight
    + t_bias (+ t_residual), zero where a fused ReLU is off. ``output`` is the forward's (only read
    with a fused ReLU). Without any tangent it is zero (the running statistics' tangents, which
    torch ignores, are what asked for it).
    """
    shape = channel_shape(input)
    xhat = (input.to(mean.dtype) - mean.view(shape)) * invstd.view(shape)
    tangent = torch.zeros_like(xhat)
    if t_input is not None:
        tangent = tangent + through_normalisation(
            t_input.to(mean.dtype), xhat, weight, invstd, options.use_batch_stats
        )
    if t_weight is not None:
        tangent = tangent + xhat * t_weight.to(mean.dtype).view(shape)
    if t_bias is not None:
        tangent = tangent + t_bias.to(mean.dtype).view(shape)
    if t_residual is not None:
        tangent = tangent + t_residual.to(mean.dtype)
    if options.relu:
        tangent = tangent * relu_passes(output)
    return tangent.to(input.dtype)


class Launched(NamedTuple):
    """What a forward's launches leave its backward besides tensors: the plan, the copy of the
    input the kernels read when the input does not fold in place (else None) and, synchronized,
    how to combine the backward's sums over the processes (else None)."""

    plan: Plan
    folded: Tensor | None
    combine_sums: Callable[[Tensor], Tensor] | None


def _synchronized_forward(
    x: Tensor, plan: Plan, options: BatchNormOptions, weight: Tensor | None, bias: Tensor | None,
    running_mean: Tensor | None, running_var: Tensor | None, num_batches_tracked: Tensor | None,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor | None], Callable[[Tensor], Tensor]]:
    """The forward launches of synchronized BatchNorm, and how its backward combines its sums.

    Each process merges its partials into one (count, mean, M2) summary per channel; the summaries
    are all-gathered (one per process, whatever its batch size) and merged in rank order, so every
    process gets the same statistics and running statistics, and nothing is read on the host. The
    backward all-reduces the sums of dy and dy * xhat and divides them by the gathered count.

    A process with an empty batch takes part in both collectives with zero counts and sums (else the
    others would wait for it forever) and, as in torch's SyncBatchNorm, gets the whole batch's
    statistics and running statistics, merged here with torch operations.
    """
    group = options.process_group
    gathered = []

    def combine_moments(summary: Tensor) -> Tensor:
        summaries = [torch.empty_like(summary) for _ in range(dist.get_world_size(group))]
        dist.all_gather(summaries, summary, group=group)
        gathered.append(torch.cat(summaries, dim=1))
        return gathered[0]

    outputs = batch_norm_forward(
        x, plan, options, weight, bias, None, running_mean, running_var, num_batches_tracked,
        combine_moments=combine_moments,
    )
    if plan.empty:  # batch_norm_forward returned before its all-gather
        mean, invstd = outputs[1:3]
        summaries = combine_moments(mean.new_zeros(4, 1, mean.numel()))
        _merge_into(mean, invstd, summaries, options, running_mean, running_var, num_batches_tracked)
    count = gathered[0][0].sum(dim=0)

    def combine_sums(sums: Tensor) -> Tensor:
        total = sums.clone()
        dist.all_reduce(total, group=group)
        return total / count

    return outputs, combine_sums


def _merge_into(
    mean: Tensor, invstd: Tensor, summaries: Tensor, options: BatchNormOptions,
    running_mean: Tensor | None, running_var: Tensor | None, num_batches_tracked: Tensor | None,
) -> None:
    """Write into ``mean`` and ``invstd`` the statistics of the batches that ``summaries`` (the
    gathered [4, processes, C] rows of count, mean, 0 and M2, the sum of squared deviations)
    describe, and fold them into the running statistics as the kernels do (unbiased variance)."""
    counts, means, _, m2s = summaries
    count = counts.sum(0)
    mean.copy_((counts * means).sum(0) / count.clamp_min(1))
    m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
    invstd.copy_(torch.rsqrt(m2 / count.clamp_min(1) + options.eps))
    if running_mean is None:
        return
    factor = options.momentum
    if factor is None:  # the cumulative average, on the device
        factor = 1.0 / (num_batches_tracked.to(mean.dtype) + 1.0)
    running_mean.copy_(running_mean * (1 - factor) + mean * factor)
    running_var.copy_(running_var * (1 - factor) + m2 / (count - 1).clamp_min(1) * factor)


class BatchNormFunction(torch.autograd.Function):
    """BatchNorm (+ residual add, + ReLU) forward and backward in Triton.

    Inputs: (input, weight, bias, residual, running_mean, running_var, num_batches_tracked, options),
    checked by the caller; ``options`` (BatchNormOptions) says what to compute. Outputs: (y, mean,
    invstd, relu_mask, launched): the output, the statistics the backward uses, the fused ReLU's
    packed one-bit mask (None without a ReLU) and what the launches leave the backward (Launched).
    Only y is differentiable.

    The backward keeps the input, the statistics and the mask; with a fused ReLU it also keeps y,
    whose sign gives the ReLU's Jacobian to the differentiable paths (as torch's ReLU keeps its
    output). With ``options.process_group`` the statistics are those of every process's batch.
    """

    @staticmethod
    def forward(
        input: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
        running_mean: Tensor | None, running_var: Tensor | None,
        num_batches_tracked: Tensor | None, options: BatchNormOptions,
    ) -> tuple[Any, ...]:
        x, plan = plan_batch_norm(input, options.relu)
        if options.process_group is None:
            outputs = batch_norm_forward(
                x, plan, options, weight, bias, residual, running_mean, running_var,
                num_batches_tracked,
            )
            combine_sums = None
        else:
            outputs, combine_sums = _synchronized_forward(
                x, plan, options, weight, bias, running_mean, running_var, num_batches_tracked
            )
        return (*outputs, Launched(plan, None if x is input else x, combine_sums))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        input, weight, bias, residual, *_, options = inputs
        save_for_derivatives(ctx, input, weight, bias, residual, options, *output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        return (*gradients(ctx, grad_output, _launch_with_plan), None, None, None, None)

    @staticmethod
    def jvp(ctx: Any, t_input: Tensor | None, t_weight: Tensor | None, t_bias: Tensor | None,
            t_residual: Tensor | None, t_running_mean: Tensor | None,
            t_running_var: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        input, weight, _, mean, invstd, _, y = ctx.saved_tensors
        options = ctx.options
        if options.process_group is not None:
            raise RuntimeError("synchronized BatchNorm has no forward-mode derivatives")
        # torch's rule, and its message: running statistics that normalise (eval) may carry
        # tangents only when the input, weight and bias carry none (the output then has none either).
        running_tangents = t_running_mean is not None or t_running_var is not None
        input_tangents = any(t is not None for t in (t_input, t_weight, t_bias))
        if running_tangents and input_tangents and not options.use_batch_stats:
            raise RuntimeError(
                "batch_norm is not differentiable wrt running_mean and running_var, they cannot have "
                "forward grad defined"
            )
        tangent = output_tangent(
            input, weight, mean, invstd, y, options, t_input, t_weight, t_bias, t_residual
        )
        return tangent, None, None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], input: Tensor, weight: Tensor | None,
             bias: Tensor | None, residual: Tensor | None, running_mean: Tensor | None,
             running_var: Tensor | None, num_batches_tracked: Tensor | None,
             options: BatchNormOptions) -> tuple[tuple[Any, ...], tuple[int | None, ...]]:
        """The vmap rule: ``batch`` (info.batch_size) BatchNorms of (N, C, ...) samples as one
        BatchNorm of an (N, batch * C, ...) input whose channel b * C + c is sample b's channel c.

        Per-channel tensors and the residual without a batch dim are shared by every sample. Running
        statistics updated in training must be batched (one set per sample), as torch.func asks of
        torch's BatchNorm (``torch.func.replace_all_batch_norm_modules_`` turns them off).
        """
        input_dim, weight_dim, bias_dim, residual_dim, mean_dim, var_dim, count_dim, _ = in_dims
        if options.process_group is not None:
            raise RuntimeError("synchronized BatchNorm cannot run under torch.func.vmap")
        if count_dim is not None:
            raise RuntimeError(
                "fusedbn: vmap over num_batches_tracked is not supported; share one count"
            )
        updates = options.use_batch_stats and running_mean is not None
        if updates and (mean_dim is None or var_dim is None) and input_dim is not None:
            raise RuntimeError(
                "fusedbn: vmap over a BatchNorm in training whose running statistics are not "
                "batched: each sample would update the same running_mean and running_var. Use "
                "torch.func.replace_all_batch_norm_modules_(model) to stop tracking them, or "
                "batch them"
            )
        sample = input if input_dim is None else input.select(input_dim, 0)
        batch, num_channels = info.batch_size, sample.shape[1]

        def fold_samples(t: Tensor | None, dim: int | None) -> Tensor | None:
            if t is None:
                return None
            expanded = t.unsqueeze(1) if dim is None else t.movedim(dim, 1)
            expanded = expanded.expand(sample.shape[0], batch, *sample.shape[1:])
            return expanded.reshape(sample.shape[0], batch * num_channels, *sample.shape[2:])

        def fold_channels(t: Tensor | None, dim: int | None) -> Tensor | None:
            if t is None:
                return None
            return t.repeat(batch) if dim is None else t.movedim(dim, 0).contiguous().view(-1)

        folded_running = [fold_channels(running_mean, mean_dim), fold_channels(running_var, var_dim)]
        outputs = BatchNormFunction.apply(
            fold_samples(input, input_dim), fold_channels(weight, weight_dim),
            fold_channels(bias, bias_dim), fold_samples(residual, residual_dim), *folded_running,
            num_batches_tracked, options,
        )
        if updates:  # copy the updated statistics back where the folding copied them
            for running, dim, folded in zip(
                (running_mean, running_var), (mean_dim, var_dim), folded_running, strict=True
            ):
                target = running.movedim(dim, 0)
                if folded.data_ptr() != target.data_ptr():
                    target.copy_(folded.view(target.shape))
        y, mean, invstd = outputs[:3]
        per_sample = (
            y.unflatten(1, (batch, num_channels)), mean.view(batch, num_channels),
            invstd.view(batch, num_channels), None, outputs[4],
        )
        return per_sample, (1, 0, 0, None, None)


# Function.apply binds its arguments through inspect.signature(forward) on every call when the
# Function defines setup_context: about 25 us for these eight arguments, a sixth of a small layer's
# host time. They are always passed positionally, so a signature of *args binds them alike at a
# tenth of the cost.
BatchNormFunction.forward.__signature__ = inspect.Signature(
    [inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL)]
)


def save_for_derivatives(
    ctx: Any, input: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
    options: BatchNormOptions, y: Tensor, mean: Tensor, invstd: Tensor, relu_mask: Tensor | None,
    launched: Launched | None, constants: tuple[Tensor, ...] = (),
) -> None:
    """Keep what the backward and jvp use (for BatchNormFunction and the custom operator alike).

    The input is kept as given (its graph serves gradients of gradients). Every output but y is
    non-differentiable: the statistics, the mask and any other ``constants``.
    """
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(mean, invstd, *constants, *(() if relu_mask is None else (relu_mask,)))
    saved = (input, weight, bias, mean, invstd, relu_mask, y if options.relu else None)
    ctx.save_for_backward(*saved)
    ctx.save_for_forward(*saved)
    ctx.options, ctx.launched = options, launched
    ctx.residual_dtype = None if residual is None else residual.dtype


def _launch_with_plan(
    ctx: Any, grad_output: Tensor, input: Tensor, *arguments: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The backward launches of an eager call: with its forward's plan, on the copy of the input
    that the forward read, and combining the sums over the processes when synchronized."""
    launched = ctx.launched
    x = input if launched.folded is None else launched.folded
    grads = batch_norm_backward(
        grad_output, x, launched.plan, *arguments, combine_sums=launched.combine_sums
    )
    if launched.plan.empty and launched.combine_sums is not None:  # the others' all-reduce waits for it
        launched.combine_sums(grads[1].new_zeros(2, grads[1].numel()))
    return grads


def gradients(ctx: Any, grad_output: Tensor | None, launch: Callable) -> tuple[Tensor | None, ...]:
    """(grad_input, grad_weight, grad_bias, grad_residual) for BatchNormFunction and the custom
    operator alike: from :func:`differentiable_backward` when the backward builds a graph, else
    from the kernels, run by ``launch(ctx, grad_output, input, weight, mean, invstd,
    use_batch_stats, need_param_grads, relu_mask, write_grad_residual)``."""
    if grad_output is None:
        return (None,) * 4
    if torch.is_grad_enabled():
        return differentiable_backward(ctx, grad_output)
    input, weight, bias, mean, invstd, relu_mask, _ = ctx.saved_tensors
    needs_input, needs_weight, needs_bias, needs_residual = ctx.needs_input_grad[:4]
    grad_input, grad_weight, grad_bias, grad_residual = launch(
        ctx, grad_output, input, weight, mean, invstd, ctx.options.use_batch_stats,
        needs_weight or needs_bias, relu_mask, needs_residual,
    )
    if needs_residual:
        # Without a ReLU the residual's gradient is dy itself, and the kernels computed none.
        grad_residual = _as(grad_output if relu_mask is None else grad_residual, ctx.residual_dtype)
    return (
        grad_input if needs_input else None,
        _as(grad_weight, weight.dtype) if needs_weight else None,
        _as(grad_bias, bias.dtype) if needs_bias else None,
        grad_residual if needs_residual else None,
    )


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (``Tensor.to`` costs a microsecond even when nothing changes)."""
    return t if t.dtype == dtype else t.to(dtype)


def differentiable_backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
    """(grad_input, grad_weight, grad_bias, grad_residual) written with torch operations, so that
    they are differentiable functions of the inputs and of grad_output (gradients of gradients, and
    torch.func's transforms, which run a backward under their own tensors).

    With dy masked by a fused ReLU and xhat = (x - mean) * invstd: grad_bias = sum(dy),
    grad_weight = sum(dy * xhat), grad_input = dy through the normalisation.
    """
    options = ctx.options
    if options.process_group is not None:
        raise RuntimeError(
            "synchronized BatchNorm has no gradients of gradients (create_graph=True) and no "
            "torch.func transforms: its backward is the kernels' first derivative only"
        )
    input, weight, bias, mean, invstd, _, y = ctx.saved_tensors
    needs_input, needs_weight, needs_bias, needs_residual = ctx.needs_input_grad[:4]
    if y is not None:
        grad_output = grad_output * relu_passes(y)
    mean, invstd = statistics_with_derivatives(
        input, mean, invstd, options.use_batch_stats, options.eps
    )
    dims, shape = reduction_dims(input), channel_shape(input)
    dy = grad_output.to(mean.dtype)
    xhat = (input.to(mean.dtype) - mean.view(shape)) * invstd.view(shape)
    grad_input = grad_weight = grad_bias = grad_residual = None
    if needs_input:
        grad_input = through_normalisation(dy, xhat, weight, invstd, options.use_batch_stats).to(input.dtype)
    if needs_weight:
        grad_weight = (dy * xhat).sum(dims).to(weight.dtype)
    if needs_bias:
        grad_bias = dy.sum(dims).to(bias.dtype)
    if needs_residual:
        grad_residual = grad_output.to(ctx.residual_dtype)
    return grad_input, grad_weight, grad_bias, grad_residual
