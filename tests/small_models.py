"""Small networks shared by the tests, and the check that a BatchNorm swap kept everything else.

The networks are built from torch's BatchNorm classes (convert a module, or the whole network, to
get fusedbn's) with random affine parameters and running statistics, so that a parameter or buffer
lost or mixed up in a conversion changes the results.
"""

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BATCHNORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
BATCHNORM_SETTINGS = ("num_features", "eps", "momentum", "affine", "track_running_stats")


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm in ``model`` weights in [0.5, 1.5), biases and running means around 0
    and running variances in [0.5, 1.5), drawn from ``seed``; returns ``model``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, _BatchNorm):
                continue
            for name, positive in (("weight", True), ("bias", False), ("running_mean", False),
                                   ("running_var", True)):
                tensor = getattr(module, name)
                if tensor is None:
                    continue
                shape = tensor.shape
                values = torch.rand(shape, generator=generator) + 0.5 if positive else (
                    torch.randn(shape, generator=generator) * 0.3
                )
                tensor.copy_(values)
    return model


def small_conv_net(device: torch.device | str = "cpu", seed: int = 0) -> nn.Sequential:
    """Input (N, 3, H, W), output (N, 7): Conv-BN2d-ReLU twice, a Conv-BN2d without a ReLU inside a
    nested Sequential, global average pooling, then Linear-BN1d-ReLU and a Linear head."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 8, bias=False),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 7),
    )
    return randomize_batchnorms(net, seed).to(device)


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU-conv-BN plus a shortcut (conv-BN when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=None)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class SmallResNet(nn.Module):
    """Input (N, 3, H, W), output (N, 7): a stem, two basic blocks (the second downsamples) and a
    Linear-BN1d-ReLU-Linear head; BatchNorms called from custom forwards, not only in Sequentials."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.layer1 = BasicBlock(6, 6)
        self.layer2 = BasicBlock(6, 10, stride=2)
        self.head = nn.Sequential(
            nn.Linear(10, 12, bias=False), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 7)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def small_resnet(device: torch.device | str = "cpu", seed: int = 0) -> SmallResNet:
    """A :class:`SmallResNet` with seeded weights and random BatchNorm parameters and statistics."""
    torch.manual_seed(seed)
    return randomize_batchnorms(SmallResNet(), seed).to(device)


class CustomBatchNorm2d(nn.BatchNorm2d):
    """A user's subclass of torch's BatchNorm2d, which conversions must leave alone."""


def every_batchnorm_kind(device: torch.device | str = "cpu") -> nn.Module:
    """A model holding one BatchNorm of each kind a conversion must carry over as it is: 1d/2d/3d,
    affine=False, track_running_stats=False with momentum=None, a frozen weight, one in eval mode
    inside a training model, one with a ``qconfig``, one used in two places, a subclass, a
    torch SyncBatchNorm (and, where torch has the argument, one with bias=False)."""
    model = nn.Module()
    model.plain = nn.BatchNorm1d(3)
    model.no_affine = nn.BatchNorm2d(4, affine=False, eps=1e-3)
    model.untracked = nn.BatchNorm3d(2, track_running_stats=False, momentum=None)
    model.frozen = nn.BatchNorm2d(4)
    model.frozen.weight.requires_grad_(False)
    model.in_eval = nn.BatchNorm2d(4).eval()
    model.quantized = nn.BatchNorm2d(4)
    model.quantized.qconfig = torch.ao.quantization.default_qconfig
    shared = nn.BatchNorm2d(5, momentum=0.3)
    model.blocks = nn.Sequential(nn.Conv2d(5, 5, 1), shared, nn.ReLU(), nn.Sequential(shared))
    model.custom = CustomBatchNorm2d(4)
    model.sync = nn.SyncBatchNorm(4)
    if "bias" in inspect.signature(nn.BatchNorm2d).parameters:
        model.no_bias = nn.BatchNorm2d(4, bias=False)
    for step in range(3):  # some history in the running statistics and num_batches_tracked
        model.plain(torch.randn(6, 3, generator=torch.Generator().manual_seed(step)))
    return randomize_batchnorms(model).to(device)


def module_records(model: nn.Module) -> dict[str, dict[str, Any]]:
    """For every module of ``model`` under every name it has: the module, its training flag and
    ``qconfig``, and for BatchNorms their settings, tensors and requires_grad flags."""
    records = {}
    for name, module in model.named_modules(remove_duplicate=False):
        record = {"module": module, "training": module.training, "qconfig": getattr(module, "qconfig", None)}
        if isinstance(module, _BatchNorm):
            record["settings"] = {key: getattr(module, key) for key in BATCHNORM_SETTINGS}
            record["tensors"] = {key: getattr(module, key) for key in BATCHNORM_TENSORS}
            record["requires_grad"] = {key: p.requires_grad for key, p in module.named_parameters()}
            record["state_keys"] = list(module.state_dict(keep_vars=True))
        records[name] = record
    return records


def assert_swapped(
    before: dict[str, dict[str, Any]], model: nn.Module, mapping: Mapping[type, type]
) -> None:
    """Assert that ``model`` is the model recorded in ``before`` with every module whose exact class is
    a key of ``mapping`` replaced by the value's class holding the same tensors, settings, training
    flag and qconfig, one replacement per replaced module, and every other module untouched."""
    after = dict(model.named_modules(remove_duplicate=False))
    assert after.keys() == before.keys()
    replacements: dict[nn.Module, nn.Module] = {}
    for name, record in before.items():
        old, new = record["module"], after[name]
        if type(old) not in mapping:
            assert new is old, f"{name}: a {type(old).__name__} must stay the same object"
            assert new.training == record["training"], name
            continue
        assert type(new) is mapping[type(old)], f"{name}: {type(new).__name__}"
        assert replacements.setdefault(old, new) is new, f"{name}: a shared module got two replacements"
        assert {key: getattr(new, key) for key in BATCHNORM_SETTINGS} == record["settings"], name
        for key, tensor in record["tensors"].items():
            assert getattr(new, key) is tensor, f"{name}.{key} is not the same object"
        assert {key: p.requires_grad for key, p in new.named_parameters()} == record["requires_grad"], name
        assert list(new.state_dict(keep_vars=True)) == record["state_keys"], f"{name}: state_dict keys"
        assert new.training == record["training"], f"{name}: training flag"
        assert getattr(new, "qconfig", None) is record["qconfig"], f"{name}: qconfig"
