"""fusedbn's kernel launchers as PyTorch custom operators, for compiled and exported code.

``torch.compile(model, fullgraph=True)`` and ``torch.export`` see a fused BatchNorm as one functional
operator, which returns the updated running statistics (:func:`compiled_batch_norm` copies them into
the buffers, a mutation the compiler sees); its derivatives are registered with
``torch.library.register_autograd`` and are those of eager code (:mod:`fusedbn.autograd`): the
backward operator for first derivatives, torch operations for gradients of gradients.

Each operator is registered twice, from one body. Where the kernels are compiled (CUDA), it is a
``torch.library.triton_op`` (``fusedbn::batch_norm_forward_inductor`` and ``..._backward_inductor``):
the compiler traces its body, whose launches go through ``torch.library.wrap_triton``, and the
compiled program launches fusedbn's kernels itself. Under Triton's interpreter, where a traced
launch cannot run, it is a plain ``torch.library.custom_op`` (``fusedbn::batch_norm_forward`` and
``fusedbn::batch_norm_backward``) whose body the compiled program calls.

Registering a ``triton_op`` and marking a constant result import torch's compiler (about a second),
so :func:`fusedbn.functional.batch_norm` imports this module when the compiler first traces it,
not ``import fusedbn``.
"""

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from triton.runtime.jit import JITFunction

import fusedbn.kernels
from fusedbn import backend
from fusedbn.autograd import gradients, save_for_derivatives
from fusedbn.kernels import batch_norm_backward, batch_norm_forward
from fusedbn.kernels.backward import allocate_backward_outputs
from fusedbn.kernels.call import BatchNormOptions
from fusedbn.kernels.forward import allocate_forward_outputs, launch_apply
from fusedbn.kernels.launcher import launches_for_the_compiler
from fusedbn.kernels.layout import fold_input, plan_batch_norm


def tag_compile_caches() -> None:
    """Add a digest of fusedbn's host and kernel sources to torch.compile's cache key tag.

    torch.compile's caches (the FX graph and AOT autograd caches) know a custom operator by its name
    and schema only, so a compiled graph could outlive a change to the operator's implementation or
    derivatives and be reused with them. The tag keys every cached graph to this fusedbn's sources;
    a tag set by the user is kept, with fusedbn's appended.
    """
    folders = (Path(__file__).parent, Path(fusedbn.kernels.__file__).parent)
    sources = [path for folder in folders for path in sorted(folder.glob("*.py"))]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]
    tag = f"fusedbn-{digest}"
    config = torch.compiler.config
    if tag not in config.cache_key_tag:
        config.cache_key_tag = f"{config.cache_key_tag}+{tag}" if config.cache_key_tag else tag


tag_compile_caches()
# Compiled code takes the implementation the cost model chooses for a call as a constant, made when the
# compiler traces the call.
torch.compiler.assume_constant_result(backend._predicted_best)


def _forward(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    residual: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    use_batch_stats: bool,
    momentum: float | None,
    eps: float,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """BatchNorm forward (+ residual, + ReLU): (output, mean, invstd, relu_mask, new running_mean,
    new running_var).

    The arguments are those of BatchNormFunction with the options spelled out. The running
    statistics are read, never written: their updated values are returned (empty when there is no
    update), and relu_mask is empty without a ReLU.
    """
    x, plan = plan_batch_norm(input, relu)
    if use_batch_stats and running_mean is not None:  # the kernels update copies
        running_mean, running_var = running_mean.clone(), running_var.clone()
    outputs = batch_norm_forward(
        x, plan, BatchNormOptions(use_batch_stats, momentum, eps, relu), weight, bias, residual,
        running_mean, running_var, num_batches_tracked,
    )
    return _op_outputs(*outputs, running_mean, running_var, use_batch_stats)


def _op_outputs(
    y: Tensor, mean: Tensor, invstd: Tensor, relu_mask: Tensor | None, running_mean: Tensor | None,
    running_var: Tensor | None, use_batch_stats: bool,
) -> tuple[Tensor, ...]:
    """The forward operator's outputs: the running statistics only when the batch updates them
    (else they are the inputs, which an operator's outputs must not alias)."""
    updated = use_batch_stats and running_mean is not None
    return (
        y, mean, invstd, _or_empty(relu_mask, y, torch.uint8),
        _or_empty(running_mean if updated else None, y), _or_empty(running_var if updated else None, y),
    )


def _or_empty(t: Tensor | None, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``t``, or an empty tensor for None: a custom operator returns tensors, none aliasing another."""
    return like.new_empty(0, dtype=dtype) if t is None else t


def _forward_fake(input, weight, bias, residual, running_mean, running_var, num_batches_tracked,
                  use_batch_stats, momentum, eps, relu):
    outputs = allocate_forward_outputs(*fold_input(input), relu)
    if running_mean is not None:
        running_mean, running_var = torch.empty_like(running_mean), torch.empty_like(running_var)
    return _op_outputs(*outputs, running_mean, running_var, use_batch_stats)


def _backward_launches(
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
    grad_input, grad_weight, grad_bias, grad_residual = batch_norm_backward(
        grad_output, x, plan, weight, mean, invstd, use_batch_stats, need_param_grads,
        relu_mask, need_grad_residual,
    )
    return grad_input, grad_weight, grad_bias, _or_empty(grad_residual, grad_input)


def _backward_fake(grad_output, input, weight, mean, invstd, use_batch_stats, need_param_grads,
                   relu_mask, need_grad_residual):
    grad_input, grad_weight, grad_bias, grad_residual = allocate_backward_outputs(
        *fold_input(input), relu_mask is not None and need_grad_residual
    )
    return grad_input, grad_weight, grad_bias, _or_empty(grad_residual, grad_input)


def _for_the_compiler(body: Callable) -> Callable:
    """``body`` with its launches recorded for torch's compiler (see launches_for_the_compiler)."""

    @functools.wraps(body)
    def traced(*args: Any) -> Any:
        with launches_for_the_compiler():
            return body(*args)

    return traced


forward_op = torch.library.custom_op("fusedbn::batch_norm_forward", _forward, mutates_args=())
forward_op.register_fake(_forward_fake)
backward_op = torch.library.custom_op(
    "fusedbn::batch_norm_backward", _backward_launches, mutates_args=()
)
backward_op.register_fake(_backward_fake)
inductor_forward_op = torch.library.triton_op(
    "fusedbn::batch_norm_forward_inductor", _for_the_compiler(_forward), mutates_args=()
)
inductor_backward_op = torch.library.triton_op(
    "fusedbn::batch_norm_backward_inductor", _for_the_compiler(_backward_launches), mutates_args=()
)


def compiler_launches_kernels() -> bool:
    """Whether torch's compiler can launch fusedbn's kernels itself: they are compiled Triton
    kernels, not run by Triton's interpreter (whose kernels wrap_triton does not take)."""
    return isinstance(launch_apply.kernel, JITFunction)


def _launch_backward(ctx: Any, grad_output: Tensor, *arguments: Any) -> tuple[Tensor, ...]:
    """The backward operator, for :func:`fusedbn.autograd.gradients` (which reads
    grad_residual only where the kernels wrote it)."""
    operator = inductor_backward_op if compiler_launches_kernels() else backward_op
    return operator(grad_output, *arguments)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    input, weight, bias, residual, _, _, _, use_batch_stats, momentum, eps, relu = inputs
    y, mean, invstd, relu_mask, new_mean, new_var = output
    options = BatchNormOptions(use_batch_stats, momentum, eps, relu)
    save_for_derivatives(
        ctx, input, weight, bias, residual, options, y, mean, invstd,
        relu_mask if relu else None, None, constants=(new_mean, new_var),
    )


def _backward(ctx: Any, grad_output: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
    return (*gradients(ctx, grad_output, _launch_backward), *(None,) * 7)


for _operator in (forward_op, inductor_forward_op):
    _operator.register_autograd(_backward, setup_context=_setup_context)


def compiled_batch_norm(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
    running_mean: Tensor | None, running_var: Tensor | None, num_batches_tracked: Tensor | None,
    options: BatchNormOptions,
) -> Tensor:
    """The fused BatchNorm's output through the forward operator (what compiled code calls); the
    running statistics, when the batch updates them, take the operator's new values."""
    operator = inductor_forward_op if compiler_launches_kernels() else forward_op
    y, _, _, _, new_mean, new_var = operator(
        input, weight, bias, residual, running_mean, running_var, num_batches_tracked,
        options.use_batch_stats, options.momentum, options.eps, options.relu,
    )
    if options.use_batch_stats and running_mean is not None:
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)
    return y
