"""The ResNets of the training-step benchmark, and the rewrite that fuses their BatchNorm epilogues.

:func:`resnet50` is torchvision's where it imports, else :class:`ResNet`, the same network (v1.5, same module
names and initialisation); :func:`tiny_resnet` is a narrow one for the CPU smoke run.
"""

import contextlib

import torch
from torch import Tensor, nn

from fusedbn.convert import convert_model


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (with the stride) -> 1x1 convolutions, each with a BatchNorm, plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """A bottleneck ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global average pool, linear."""

    def __init__(self, layers: tuple[int, ...], num_classes: int = 1000, base_width: int = 64):
        super().__init__()
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(base_width, layers[0], 1)
        self.layer2 = self._make_layer(base_width * 2, layers[1], 2)
        self.layer3 = self._make_layer(base_width * 4, layers[2], 2)
        self.layer4 = self._make_layer(base_width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(base_width * 8 * Bottleneck.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        outplanes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != outplanes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, outplanes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(outplanes))  # fmt: skip
        stage = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = outplanes
        stage += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000) -> tuple[nn.Module, str]:
    """ResNet-50 with random weights and the name of where it came from (torchvision or this module)."""
    try:
        from torchvision.models import resnet50 as torchvision_resnet50
    except ImportError:
        return ResNet((3, 4, 6, 3), num_classes), "fusedbn.bench.resnet"
    return torchvision_resnet50(weights=None, num_classes=num_classes), "torchvision"


def tiny_resnet(num_classes: int = 10) -> tuple[nn.Module, str]:
    """A one-block-per-stage ResNet of width 4 (BatchNorms of 4 to 128 channels), for the smoke run."""
    return ResNet((1, 1, 1, 1), num_classes, base_width=4), "fusedbn.bench.resnet (tiny)"


class FusedEpilogueBottleneck(nn.Module):
    """A bottleneck whose BatchNorms apply the ReLUs, and bn3 the shortcut add too, in their kernels; its
    modules and state_dict keys are the original block's."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1, self.bn1 = block.conv1, _with_relu(block.bn1)
        self.conv2, self.bn2 = block.conv2, _with_relu(block.bn2)
        self.conv3, self.bn3 = block.conv3, _with_relu(block.bn3)
        self.downsample = block.downsample
        self.train(block.training)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        return self.bn3(self.conv3(out), identity)


def _with_relu(bn: nn.Module) -> nn.Module:
    fused = convert_model(bn)
    fused.activation = "relu"
    return fused


def fuse_epilogues(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Convert a ResNet's BatchNorms to fusedbn's (with ``backend``) in place, fusing the stem's ReLU (its
    ``relu`` becomes an ``nn.Identity``) and each bottleneck's ReLUs and residual add into them; returns the
    model. Raises TypeError for a model without that stem or with other blocks."""
    if not all(isinstance(getattr(model, name, None), nn.Module) for name in ("bn1", "relu", "layer1")):
        raise TypeError(
            f"fuse_epilogues: expected a ResNet (bn1, relu, layer1...), got {type(model).__name__}"
        )
    bottlenecks: tuple[type[nn.Module], ...] = (Bottleneck,)
    with contextlib.suppress(ImportError):
        from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck
        bottlenecks += (TorchvisionBottleneck,)
    convert_model(model, backend=backend)
    model.bn1 = _with_relu(model.bn1)
    model.relu = nn.Identity()
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for index, block in enumerate(stage):
            if not isinstance(block, bottlenecks):
                raise TypeError(f"fuse_epilogues: expected bottleneck blocks, got {type(block).__name__}")
            stage[index] = FusedEpilogueBottleneck(block)
    return model
