"""The implementations compared (BatchNorm modules with equal parameters) and the call each mode times.

Parameters, biases and running statistics are float32 whatever the input dtype, as under autocast
(AMP), the common way half-precision BatchNorm is run.
"""

import copy
import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fusedbn.bench.cases import (
    AUTO,
    BWD,
    COMPILE,
    EAGER,
    EVAL,
    FLAG_GEMS,
    FUSEDBN,
    FWD,
    FWDBWD,
    Shape,
    random_tensor,
)
from fusedbn.bench.core import backend_for, convert_model, kernels_run_on

# torch's BatchNorm class by the input's number of dims.
TORCH_CLASSES: dict[int, type[nn.Module]] = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d,
                                             5: nn.BatchNorm3d}  # fmt: skip


def reference_module(shape: Shape, device: torch.device, seed: int) -> nn.Module:
    """torch's BatchNorm for ``shape`` with random affine parameters and running statistics."""
    module = TORCH_CLASSES[len(shape.dims)](shape.num_channels, device=device)
    generator = torch.Generator().manual_seed(seed)
    channels = shape.num_channels
    with torch.no_grad():
        module.weight.copy_(1.0 + 0.2 * torch.randn(channels, generator=generator))
        module.bias.copy_(0.2 * torch.randn(channels, generator=generator))
        module.running_mean.copy_(torch.randn(channels, generator=generator))
        module.running_var.copy_(0.5 + 4.0 * torch.rand(channels, generator=generator))
    return module


X_SEED, GRAD_SEED, MODULE_SEED, RESIDUAL_SEED = 1, 2, 3, 11
# The input's mean is kept away from zero, so that subtracting it is part of what is checked.
X_OFFSET = 1.0


def case_inputs(
    shape: Shape, dtype: str, layout: str, device: torch.device
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """What every benchmark of one case starts from: torch's module (:func:`reference_module`), the
    input (offset from zero) and an upstream gradient, all seeded."""
    return (reference_module(shape, device, MODULE_SEED),
            random_tensor(shape, dtype, layout, device, X_SEED, X_OFFSET),
            random_tensor(shape, dtype, layout, device, GRAD_SEED))  # fmt: skip


def provider_module(provider: str, reference: nn.Module, compile_mode: str = "default") -> nn.Module:
    """The module ``provider`` runs: ``reference`` itself for eager, else a copy converted or compiled."""
    if provider == EAGER:
        return reference
    if provider in (FUSEDBN, AUTO):
        device = reference.weight.device
        return convert_model(copy.deepcopy(reference), backend=fusedbn_backend(provider == FUSEDBN, device))
    if provider == FLAG_GEMS:
        return FlagGemsBatchNorm(reference, flag_gems_ops())
    if provider == COMPILE:
        # Compiled in place, so parameter and buffer names stay those of the reference. dynamic=False:
        # every shape gets kernels specialised to it, as in a model whose shapes never change.
        compiled = copy.deepcopy(reference)
        compiled.compile(dynamic=False, mode=compile_mode)
        return compiled
    raise ValueError(f"unknown provider {provider!r}")


def flag_gems_ops() -> Any:
    """FlagGems' operator module, ``flag_gems.ops``; raises what importing it raises."""
    return importlib.import_module("flag_gems.ops")


@functools.cache
def unavailable_reason(provider: str) -> str | None:
    """Why ``provider`` cannot run here (FlagGems not installed, or failing to import), or None."""
    if provider != FLAG_GEMS:
        return None
    try:
        ops = flag_gems_ops()
    except Exception as error:  # FlagGems raises RuntimeError, not ImportError, without a GPU
        first_line = (str(error).strip().splitlines() or [""])[0]
        return f"flag_gems does not import: {type(error).__name__}: {first_line}"[:200]
    missing = [name for name in ("batch_norm", "batch_norm_backward") if not hasattr(ops, name)]
    return f"flag_gems.ops has no {' or '.join(missing)}" if missing else None


def fusedbn_backend(kernels: bool, device: torch.device) -> str:
    """The backend setting of fusedbn's modules on ``device``: with ``kernels``, its kernels ("triton")
    wherever they run, else "auto" (torch's BatchNorm, as the backend column then says); without, "auto"."""
    return "triton" if kernels and kernels_run_on(device.type) else "auto"


def backend_name(provider: str, device: torch.device) -> str:
    """What runs ``provider``'s BatchNorm on ``device``, for the results' backend column."""
    if provider in (FUSEDBN, AUTO):
        return backend_for(device, fusedbn_backend(provider == FUSEDBN, device))
    if provider == FLAG_GEMS:
        module = importlib.import_module("flag_gems") if unavailable_reason(FLAG_GEMS) is None else None
        return f"flag_gems {getattr(module, '__version__', '?')}" if module else "flag_gems"
    return {EAGER: "torch", COMPILE: "inductor"}[provider]


class _FlagGemsFunction(torch.autograd.Function):
    """Training or eval BatchNorm through FlagGems' operators, which have the signatures of aten's
    ``native_batch_norm`` and ``native_batch_norm_backward``."""

    @staticmethod
    def forward(ctx: Any, input, weight, bias, running_mean, running_var, training, momentum, eps, ops):
        output, mean, invstd = ops.batch_norm(
            input, weight, bias, running_mean, running_var, training, momentum, eps
        )
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.training, ctx.eps, ctx.ops = training, eps, ops
        return output

    @staticmethod
    def backward(ctx: Any, grad_output):
        input, weight, mean, invstd = ctx.saved_tensors
        # FlagGems always computes the input's gradient; the mask selects the weight's and bias'.
        mask = [True, *ctx.needs_input_grad[1:3]]
        grad_input, grad_weight, grad_bias = ctx.ops.batch_norm_backward(
            grad_output, input, weight, None, None, mean, invstd, ctx.training, ctx.eps, mask
        )
        grad_weight, grad_bias = (None if g is None else g.to(weight.dtype) for g in (grad_weight, grad_bias))
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


class FlagGemsBatchNorm(_BatchNorm):
    """A copy of torch's BatchNorm ``reference`` (same parameter and buffer names and values) that
    normalises with FlagGems' Triton ``batch_norm`` from ``ops`` (normally ``flag_gems.ops``)."""

    def __init__(self, reference: _BatchNorm, ops: Any):
        super().__init__(
            reference.num_features, reference.eps, reference.momentum, device=reference.weight.device
        )
        self.load_state_dict(reference.state_dict())
        self.ops = ops

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() < 2:
            raise ValueError(f"expected input of 2 or more dims, got {input.dim()}D")
        return _FlagGemsFunction.apply(
            input, self.weight, self.bias, self.running_mean, self.running_var, self.training,
            self.momentum, self.eps, self.ops,
        )  # fmt: skip


def load_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put ``state`` (parameters and buffers, as from ``state_dict``) back into ``module`` in place."""
    targets = dict(module.named_parameters()) | dict(module.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            targets[name].copy_(value)


def mode_call(
    module: nn.Module, mode: str, x: torch.Tensor, grad_output: torch.Tensor,
    residual: torch.Tensor | None = None, forward: Callable[..., torch.Tensor] | None = None,
) -> Callable[[], Any]:
    """The call that ``mode`` times on ``module``; it returns the outputs that mode produces.

    fwd returns y; bwd and fwdbwd return the gradients of x, weight, bias (and ``residual``, when
    given) for the upstream gradient ``grad_output``; eval returns y computed under ``torch.no_grad``.
    For bwd the forward runs once here and its graph is kept for every timed backward. ``forward(module,
    x, residual)`` replaces the plain ``module(x)`` (an epilogue after it, say).
    """
    module.train(mode != EVAL)
    forward = forward or (lambda m, data, _: m(data))
    if mode == EVAL:
        data = x.detach()
        return torch.no_grad()(lambda: forward(module, data, residual))
    extra = None if residual is None else residual.detach().requires_grad_(True)
    inputs = [x.detach().requires_grad_(True), *module.parameters(), *([extra] if extra is not None else [])]
    if mode == FWD:
        return lambda: forward(module, inputs[0], extra)
    if mode == FWDBWD:
        return lambda: torch.autograd.grad(forward(module, inputs[0], extra), inputs, grad_output)
    if mode == BWD:
        output = forward(module, inputs[0], extra)
        return lambda: torch.autograd.grad(output, inputs, grad_output, retain_graph=True)
    raise ValueError(f"unknown mode {mode!r}")


def relative_difference(actual: Any, expected: Any) -> float:
    """Largest |actual - expected| over the largest |expected|, across the tensors of two outputs."""
    if isinstance(expected, torch.Tensor):
        actual, expected = (actual,), (expected,)
    ratios = []
    for got, want in zip(actual, expected, strict=True):
        want = want.detach().float()
        difference = (got.detach().float() - want).abs().max()
        ratios.append(difference / want.abs().max().clamp_min(1e-30))
    # torch's max keeps a NaN, so a NaN anywhere in the output shows up.
    return float(torch.stack(ratios).max())
