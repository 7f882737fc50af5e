"""The implementations compared (BatchNorm modules with equal parameters) and the call each mode times.

Parameters, biases and running statistics are float32 whatever the input dtype, as under autocast
(AMP), the common way half-precision BatchNorm is run.
"""

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fusedbn.bench.cases import BWD, COMPILE, EAGER, EVAL, FUSEDBN, FWD, FWDBWD, Shape
from fusedbn.convert import convert_model

TORCH_CLASSES: dict[int, type[nn.Module]] = {
    2: nn.BatchNorm1d,
    3: nn.BatchNorm1d,
    4: nn.BatchNorm2d,
    5: nn.BatchNorm3d,
}


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


def provider_module(provider: str, reference: nn.Module, compile_mode: str = "default") -> nn.Module:
    """The module ``provider`` runs: ``reference`` itself for eager, else a copy converted or compiled."""
    if provider == EAGER:
        return reference
    if provider == FUSEDBN:
        return convert_model(copy.deepcopy(reference))
    if provider == COMPILE:
        # Compiled in place, so parameter and buffer names stay those of the reference. dynamic=False:
        # every shape gets kernels specialised to it, as in a model whose shapes never change.
        compiled = copy.deepcopy(reference)
        compiled.compile(dynamic=False, mode=compile_mode)
        return compiled
    raise ValueError(f"unknown provider {provider!r}")


def load_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put ``state`` (parameters and buffers, as from ``state_dict``) back into ``module`` in place."""
    targets = dict(module.named_parameters()) | dict(module.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            targets[name].copy_(value)


def mode_call(module: nn.Module, mode: str, x: torch.Tensor, grad_output: torch.Tensor) -> Callable[[], Any]:
    """The call that ``mode`` times on ``module``; it returns the outputs that mode produces.

    fwd returns y; bwd and fwdbwd return the gradients of x, weight and bias for the upstream
    gradient ``grad_output``; eval returns y computed under ``torch.no_grad``. For bwd the forward
    runs once here and its graph is kept for every timed backward.
    """
    module.train(mode != EVAL)
    inputs = [x.detach().requires_grad_(True), *module.parameters()]
    if mode == FWD:
        return lambda: module(inputs[0])
    if mode == FWDBWD:
        return lambda: torch.autograd.grad(module(inputs[0]), inputs, grad_output)
    if mode == BWD:
        output = module(inputs[0])
        return lambda: torch.autograd.grad(output, inputs, grad_output, retain_graph=True)
    if mode == EVAL:
        data = x.detach()

        def evaluate() -> torch.Tensor:
            with torch.no_grad():
                return module(data)

        return evaluate
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
