"""The benchmark's ResNets: ResNet-50's BatchNorm inputs, and the rewrite that fuses the epilogues."""

import collections
import copy

import pytest
import torch
from torch import nn

from fusedbn.bench.cases import RESNET50, SHAPES
from fusedbn.bench.resnet import FusedEpilogueBottleneck, ResNet, fuse_epilogues, tiny_resnet


def _batchnorm_inputs(model: nn.Module, x: torch.Tensor) -> collections.Counter:
    seen: collections.Counter = collections.Counter()
    hooks = [
        m.register_forward_pre_hook(lambda _, args: seen.update([tuple(args[0].shape)]))
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


def test_resnet50_definition_sees_the_benchmark_shapes():
    # Two independent descriptions of ResNet-50 (this definition and the shape table of the per-op
    # suite) must agree on every BatchNorm input and on how many layers see it.
    model = ResNet((3, 4, 6, 3)).to("meta")
    seen = _batchnorm_inputs(model, torch.empty(64, 3, 224, 224, device="meta"))
    expected = {s.dims: s.layers for s in SHAPES if s.group == RESNET50}
    assert dict(seen) == expected
    assert sum(seen.values()) == 53


def _relative_error(actual: torch.Tensor, exact: torch.Tensor) -> float:
    exact = exact.double()
    return float((actual.detach().double() - exact.detach()).abs().max() / exact.abs().max().clamp_min(1e-30))


def test_fused_epilogues_train_like_torch():
    # The rewritten network (float32) must be as close to a float64 torch copy of the same network
    # as torch's own float32 network is: outputs, every parameter's gradient, running statistics.
    torch.manual_seed(0)
    reference, _ = tiny_resnet()
    with torch.no_grad():  # non-trivial affine parameters, so a misplaced epilogue shows
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    fused = fuse_epilogues(copy.deepcopy(reference))
    exact = copy.deepcopy(reference).double()
    assert sum(isinstance(m, FusedEpilogueBottleneck) for m in fused.modules()) == 4
    assert not any(isinstance(m, nn.ReLU) for m in fused.modules())
    assert list(fused.state_dict()) == list(reference.state_dict())

    x = (torch.randn(3, 3, 16, 16) + 0.5).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 10)
    seen = {}
    for name, model in (("torch", reference), ("fused", fused), ("exact", exact)):
        model.train()
        y = model(x.to(next(model.parameters()).dtype))
        y.backward(grad.to(y.dtype))
        seen[name] = {"output": y} | {n: p.grad for n, p in model.named_parameters()}
        seen[name] |= {n: b for n, b in model.state_dict().items() if n.endswith(("_mean", "_var"))}
    for name, exact_value in seen["exact"].items():
        fused_error = _relative_error(seen["fused"][name], exact_value)
        torch_error = _relative_error(seen["torch"][name], exact_value)
        assert fused_error <= 2 * torch_error + 1e-6, (name, fused_error, torch_error)


def test_fuse_epilogues_refuses_other_models_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(TypeError, match="expected a ResNet"):
        fuse_epilogues(model)
    assert type(model[1]) is nn.BatchNorm2d and type(model[2]) is nn.ReLU
