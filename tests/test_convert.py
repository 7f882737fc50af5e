"""convert_model / revert_model / fuse_batchnorm_relu: what a swap keeps, and the converted models
compared with their unconverted originals."""

import copy

import pytest
import torch
from small_models import (
    CustomBatchNorm2d,
    assert_swapped,
    every_batchnorm_kind,
    module_records,
    small_conv_net,
    small_resnet,
)
from torch import nn

from fusedbn import (
    FusedBatchNorm1d,
    FusedBatchNorm2d,
    FusedBatchNorm3d,
    convert_model,
    fuse_batchnorm_relu,
    revert_model,
)

TORCH_TO_FUSED = {
    nn.BatchNorm1d: FusedBatchNorm1d,
    nn.BatchNorm2d: FusedBatchNorm2d,
    nn.BatchNorm3d: FusedBatchNorm3d,
}


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
    model = small_resnet(device)
    reference = copy.deepcopy(model)
    converted = convert_model(model)
    assert converted is model  # converted in place and returned
    assert batchnorm_types(converted) == [TORCH_TO_FUSED[t] for t in batchnorm_types(reference)]
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


@pytest.mark.parametrize("conversion", ["convert_model", "revert_model"])
def test_swap_keeps_tensors_settings_training_flags_and_qconfig(conversion, device):
    model = every_batchnorm_kind(device)
    if conversion == "revert_model":
        convert_model(model)
        expected = {fused: torch_cls for torch_cls, fused in TORCH_TO_FUSED.items()}
    else:
        expected = TORCH_TO_FUSED
    before = module_records(model)
    state = model.state_dict(keep_vars=True)
    swapped = {"convert_model": convert_model, "revert_model": revert_model}[conversion](model)
    assert swapped is model
    assert_swapped(before, model, expected)
    assert type(model.custom) is CustomBatchNorm2d and type(model.sync) is nn.SyncBatchNorm
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(state)
    assert all(after[key] is tensor for key, tensor in state.items())


def test_revert_model_gives_torch_classes_back(device, assert_close):
    model = small_resnet(device)
    reference = copy.deepcopy(model)
    params = dict(model.named_parameters())
    types_before = batchnorm_types(model)
    reverted = revert_model(convert_model(model))
    assert reverted is model
    assert batchnorm_types(reverted) == types_before
    assert all(t in TORCH_TO_FUSED for t in batchnorm_types(reverted))
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
    model = nn.Sequential(CustomBatchNorm2d(3), nn.BatchNorm2d(3))
    convert_model(model)
    assert type(model[0]) is CustomBatchNorm2d
    assert type(model[1]) is FusedBatchNorm2d


def test_optimizer_built_before_conversion_updates_converted_model(device, assert_close):
    model = small_resnet(device)
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


def _mixed_conv_net(device):
    """small_conv_net with its second BatchNorm already fusedbn's: fusing must take both kinds."""
    net = small_conv_net(device, seed=3)
    net[4] = convert_model(net[4])
    return net


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fuse_batchnorm_relu_keeps_results(training, device, assert_close):
    reference = _mixed_conv_net(device).train(training)
    fused = fuse_batchnorm_relu(copy.deepcopy(reference))
    # Every BatchNorm -> ReLU pair became one fused module and an Identity; the lone BN stayed as it was.
    assert [type(m) for m in fused[:6]] == [
        nn.Conv2d, FusedBatchNorm2d, nn.Identity, nn.Conv2d, FusedBatchNorm2d, nn.Identity
    ]
    assert [type(m) for m in fused[9:]] == [nn.Linear, FusedBatchNorm1d, nn.Identity, nn.Linear]
    assert fused[1].activation == fused[4].activation == fused[10].activation == "relu"
    assert type(fused[6][1]) is nn.BatchNorm2d
    x = torch.randn(4, 3, 5, 5, device=device) + 1.0
    target = torch.randn(4, 7, device=device)
    assert_models_agree(fused, reference, x, target, assert_close, "fused BN+ReLU")


def test_revert_refuses_fused_activations_and_changes_nothing(device):
    fused = fuse_batchnorm_relu(_mixed_conv_net(device))
    fused[6][1] = convert_model(fused[6][1])  # a fused module without activation, before the refused ones
    before = module_records(fused)
    with pytest.raises(ValueError, match="revert_model: module '1' fuses activation='relu'"):
        revert_model(fused)
    assert_swapped(before, fused, {})


@pytest.mark.parametrize("conversion", [convert_model, revert_model], ids=["convert", "revert"])
def test_a_non_module_is_refused(conversion):
    bn = nn.BatchNorm2d(3)
    with pytest.raises(TypeError, match="expected an nn.Module, got list"):
        conversion([bn])
    assert type(bn) is nn.BatchNorm2d
