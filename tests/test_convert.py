"""convert_model / revert_model on a small ResNet-style model, compared with the unconverted original."""

import copy

import pytest
import torch
from torch import nn

from fusedbn import (
    FusedBatchNorm1d,
    FusedBatchNorm2d,
    FusedBatchNorm3d,
    convert_model,
    fuse_batchnorm_relu,
    revert_model,
)

TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@pytest.fixture(autouse=True)
def no_tf32():
    """On CUDA, convolutions may run in TF32 (10-bit mantissa), which would swamp the comparison.

    Set and restored by hand: these flags are properties, which monkeypatch cannot always undo.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

FUSED_BN = (FusedBatchNorm1d, FusedBatchNorm2d, FusedBatchNorm3d)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (conv-BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
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

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.layer1 = BasicBlock(6, 6)
        self.layer2 = BasicBlock(6, 10, stride=2)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(10, 12, bias=False),
            nn.BatchNorm1d(12),
            nn.ReLU(),
            nn.Linear(12, 7),
        )

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def make_model(device, seed=0):
    torch.manual_seed(seed)
    model = SmallResNet()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.3)
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.to(device)


def batch(device, seed, memory_format=torch.contiguous_format):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 7, 9, generator=generator).to(device)
    target = torch.randn(5, 7, generator=generator).to(device)
    return x.to(memory_format=memory_format), target


def batchnorm_types(model):
    return [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def train_step(model, x, target):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = model(x)
    loss = ((out - target) ** 2).mean()
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return out.detach(), x.grad, grads


def assert_models_agree(ours, reference, x, target, assert_close, what):
    out, grad_x, grads = train_step(ours, x, target)
    ref_out, ref_grad_x, ref_grads = train_step(reference, x, target)
    assert_close(out, ref_out, msg=f"{what}: output")
    assert_close(grad_x, ref_grad_x, msg=f"{what}: input gradient")
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], msg=f"{what}: grad of {name}")
    state, ref_state = ours.state_dict(), reference.state_dict()
    assert list(state) == list(ref_state)
    for key in ref_state:
        if key.endswith("num_batches_tracked"):
            assert torch.equal(state[key], ref_state[key]), key
        else:
            assert_close(state[key], ref_state[key], msg=f"{what}: {key}")


@pytest.mark.parametrize(
    "memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
def test_converted_model_matches_original(memory_format, device, assert_close):
    model = make_model(device)
    reference = copy.deepcopy(model)
    converted = convert_model(model)
    assert converted is model  # converted in place and returned
    assert batchnorm_types(converted) == [
        {nn.BatchNorm1d: FusedBatchNorm1d, nn.BatchNorm2d: FusedBatchNorm2d}[t]
        for t in batchnorm_types(reference)
    ]
    if memory_format == torch.channels_last:
        converted.to(memory_format=memory_format)
        reference.to(memory_format=memory_format)
    for step in range(2):
        x, target = batch(device, seed=step, memory_format=memory_format)
        assert_models_agree(converted, reference, x, target, assert_close, f"train step {step}")
    converted.eval()
    reference.eval()
    x, target = batch(device, seed=10, memory_format=memory_format)
    assert_models_agree(converted, reference, x, target, assert_close, "eval")


def test_parameters_buffers_flags_and_modes_are_kept(device):
    model = make_model(device)
    model.layer1.bn1.weight.requires_grad_(False)
    model.layer2.eval()  # a frozen sub-block inside a training model
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in params.items()}

    convert_model(model)
    assert all(t in FUSED_BN for t in batchnorm_types(model))
    for name, p in model.named_parameters():
        assert p is params[name], name
        assert p.requires_grad == flags[name], name
    assert dict(model.named_parameters()).keys() == params.keys()
    for name, b in model.named_buffers():
        assert b is buffers[name], name
    assert dict(model.named_buffers()).keys() == buffers.keys()
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert not model.layer2.bn1.training and model.layer1.bn1.training


def test_revert_model_gives_torch_classes_back(device, assert_close):
    model = make_model(device)
    reference = copy.deepcopy(model)
    params = dict(model.named_parameters())
    types_before = batchnorm_types(model)
    reverted = revert_model(convert_model(model))
    assert reverted is model
    assert batchnorm_types(reverted) == types_before
    assert all(t in TORCH_BN for t in batchnorm_types(reverted))
    for name, p in reverted.named_parameters():
        assert p is params[name], name
    x, target = batch(device, seed=3)
    assert_models_agree(reverted, reference, x, target, assert_close, "reverted")


@pytest.mark.parametrize(
    "torch_cls,fused_cls,shape",
    [
        (nn.BatchNorm1d, FusedBatchNorm1d, (6, 4)),
        (nn.BatchNorm2d, FusedBatchNorm2d, (3, 4, 3, 5)),
        (nn.BatchNorm3d, FusedBatchNorm3d, (2, 4, 3, 2, 3)),
    ],
)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"affine": False, "eps": 1e-3}, {"track_running_stats": False, "momentum": 0.3}],
    ids=["default", "affine-false", "no-running-stats"],
)
def test_bare_batchnorm_converts(torch_cls, fused_cls, shape, kwargs, device, assert_close):
    bn = torch_cls(4, device=device, **kwargs)
    reference = copy.deepcopy(bn)
    tensors = {**dict(bn.named_parameters()), **dict(bn.named_buffers())}
    fused = convert_model(bn)
    assert type(fused) is fused_cls
    for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
        assert getattr(fused, attr) == getattr(reference, attr), attr
    for name, t in {**dict(fused.named_parameters()), **dict(fused.named_buffers())}.items():
        assert t is tensors[name], name
    assert fused.running_mean is bn.running_mean  # None when not tracked, the same tensor otherwise
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4)).to(device)
    assert_close(fused(x), reference(x))
    for name, t in reference.state_dict().items():
        assert_close(fused.state_dict()[name], t, dtype=torch.float32, msg=name)


def test_batchnorm_subclasses_are_left_alone():
    class CustomBN(nn.BatchNorm2d):
        pass

    model = nn.Sequential(CustomBN(3), nn.BatchNorm2d(3))
    convert_model(model)
    assert type(model[0]) is CustomBN
    assert type(model[1]) is FusedBatchNorm2d


def test_optimizer_built_before_conversion_updates_converted_model(device, assert_close):
    model = make_model(device)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    convert_model(model)
    bn_weight_before = model.layer1.bn1.weight.detach().clone()
    for step in range(2):
        x, target = batch(device, seed=20 + step)
        for m, opt in ((model, optimizer), (reference, ref_optimizer)):
            opt.zero_grad()
            ((m(x) - target) ** 2).mean().backward()
            opt.step()
    assert not torch.equal(model.layer1.bn1.weight, bn_weight_before)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert_close(p, q, msg=name)


def _sequential_net(device):
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3, padding=1, bias=False),
        FusedBatchNorm2d(6),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4)),  # BN without a ReLU
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 7, bias=False),
        nn.BatchNorm1d(7),
        nn.ReLU(),
    )
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return net.to(device)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fuse_batchnorm_relu_keeps_results(training, device, assert_close):
    reference = _sequential_net(device).train(training)
    fused = fuse_batchnorm_relu(copy.deepcopy(reference))
    # Every BatchNorm -> ReLU pair became one fused module and an Identity; the lone BN stayed as it was.
    assert [type(m) for m in fused[:6]] == [
        nn.Conv2d, FusedBatchNorm2d, nn.Identity, nn.Conv2d, FusedBatchNorm2d, nn.Identity
    ]
    assert fused[1].activation == fused[4].activation == fused[9].activation == "relu"
    assert type(fused[6][1]) is nn.BatchNorm2d and type(fused[10]) is nn.Identity
    x = torch.randn(4, 3, 5, 5, device=device) + 1.0
    target = torch.randn(4, 7, device=device)
    assert_models_agree(fused, reference, x, target, assert_close, "fused BN+ReLU")


def test_revert_refuses_fused_activations_and_changes_nothing(device):
    fused = fuse_batchnorm_relu(_sequential_net(device))
    before = [type(m) for m in fused.modules()]
    with pytest.raises(ValueError, match="activation"):
        revert_model(fused)
    assert [type(m) for m in fused.modules()] == before
