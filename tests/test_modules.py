"""FusedBatchNorm1d/2d/3d against torch.nn.BatchNorm1d/2d/3d with identical state and inputs."""

import copy
import inspect

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fusedbn import FusedBatchNorm1d, FusedBatchNorm2d, FusedBatchNorm3d

PAIRS = {
    "1d-NC": (FusedBatchNorm1d, nn.BatchNorm1d, (29, 5)),
    "1d-NCL": (FusedBatchNorm1d, nn.BatchNorm1d, (6, 5, 7)),
    "2d": (FusedBatchNorm2d, nn.BatchNorm2d, (3, 5, 6, 5)),
    "3d": (FusedBatchNorm3d, nn.BatchNorm3d, (2, 3, 3, 4, 5)),
}
WRONG_DIMS = {
    FusedBatchNorm1d: [(5,), (2, 5, 3, 3)],
    FusedBatchNorm2d: [(4, 5), (2, 5, 3), (2, 5, 3, 3, 3)],
    FusedBatchNorm3d: [(2, 5, 3), (2, 5, 3, 3)],
}
TORCH_HAS_BIAS_KEYWORD = "bias" in inspect.signature(nn.BatchNorm2d.__init__).parameters


def make_pair(name, device, dtype=torch.float32, seed=0, **kwargs):
    """A torch BatchNorm with non-default parameters and buffers, and a fused one with the same state."""
    fused_cls, torch_cls, shape = PAIRS[name]
    reference = torch_cls(shape[1], device=device, dtype=dtype, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor, low in (
            (reference.weight, 0.5),
            (reference.bias, -1.0),
            (reference.running_mean, -1.0),
            (reference.running_var, 0.5),
        ):
            if tensor is not None:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + low)
    fused = fused_cls(shape[1], device=device, dtype=dtype, **kwargs)
    fused.load_state_dict(reference.state_dict())
    return fused, reference, shape


def random_like_shape(shape, device, seed, dtype=torch.float32, offset=0.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) + offset).to(device=device, dtype=dtype)


def step(module, x, grad_output):
    """Forward and backward on a fresh leaf copy of x; returns output, input grad and param grads."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(grad_output)
    grads = {name: p.grad for name, p in module.named_parameters()}
    return y.detach(), x.grad, grads


def assert_same_state(fused, reference, assert_close, what):
    fused_state, reference_state = fused.state_dict(), reference.state_dict()
    assert list(fused_state) == list(reference_state)
    for key, value in reference_state.items():
        if key == "num_batches_tracked" or key.endswith(".num_batches_tracked"):
            assert torch.equal(fused_state[key], value), f"{what}: {key}"
        else:
            assert_close(fused_state[key], value, msg=f"{what}: {key}")


def run_steps(fused, reference, shape, device, assert_close, steps=3, dtype=torch.float32):
    for i in range(steps):
        x = random_like_shape(shape, device, seed=10 + i, dtype=dtype, offset=i)
        grad_output = random_like_shape(shape, device, seed=20 + i, dtype=dtype)
        ours, theirs = step(fused, x, grad_output), step(reference, x, grad_output)
        what = f"step {i} ({'train' if fused.training else 'eval'})"
        assert ours[0].dtype == theirs[0].dtype and ours[0].stride() == theirs[0].stride()
        assert_close(ours[0], theirs[0], msg=f"{what} output")
        assert_close(ours[1], theirs[1], msg=f"{what} grad_input")
        assert ours[2].keys() == theirs[2].keys()
        for key in theirs[2]:
            assert_close(ours[2][key], theirs[2][key], dtype=dtype, msg=f"{what} grad {key}")
        assert_same_state(fused, reference, assert_close, what)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name", list(PAIRS))
def test_train_then_eval_matches_torch(name, momentum, device, assert_close):
    fused, reference, shape = make_pair(name, device, momentum=momentum)
    run_steps(fused, reference, shape, device, assert_close)
    assert int(fused.num_batches_tracked) == 3
    fused.eval()
    reference.eval()
    run_steps(fused, reference, shape, device, assert_close, steps=2)
    assert int(fused.num_batches_tracked) == 3


def test_train_matches_torch_on_split_path(split_path, device, assert_close):
    fused, reference, shape = make_pair("2d", device, momentum=None)
    run_steps(fused, reference, shape, device, assert_close, steps=2)
    fused.eval()
    reference.eval()
    run_steps(fused, reference, shape, device, assert_close, steps=1)
    split_path.check()


@pytest.mark.parametrize("name", ["1d-NCL", "2d"])
def test_affine_false(name, device, assert_close):
    fused, reference, shape = make_pair(name, device, affine=False)
    assert fused.weight is None and fused.bias is None
    run_steps(fused, reference, shape, device, assert_close, steps=2)
    fused.eval()
    reference.eval()
    run_steps(fused, reference, shape, device, assert_close, steps=1)


@pytest.mark.skipif(not TORCH_HAS_BIAS_KEYWORD, reason="this torch has no bias= keyword")
@pytest.mark.parametrize("name", ["1d-NC", "3d"])
def test_bias_false(name, device, assert_close):
    fused, reference, shape = make_pair(name, device, bias=False)
    assert fused.bias is None and fused.weight is not None
    run_steps(fused, reference, shape, device, assert_close, steps=2)
    fused.eval()
    reference.eval()
    run_steps(fused, reference, shape, device, assert_close, steps=1)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name", ["1d-NC", "2d"])
def test_track_running_stats_false_uses_batch_stats(name, momentum, device, assert_close):
    fused, reference, shape = make_pair(name, device, track_running_stats=False, momentum=momentum)
    assert fused.running_mean is None and fused.running_var is None
    assert fused.num_batches_tracked is None
    run_steps(fused, reference, shape, device, assert_close, steps=2)
    fused.eval()
    reference.eval()
    run_steps(fused, reference, shape, device, assert_close, steps=2)
    # Eval with batch statistics: each channel of the output has mean bias and std |weight|.
    x = random_like_shape(shape, device, seed=5, offset=4.0)
    y = fused(x).double()
    dims = [d for d in range(y.dim()) if d != 1]
    assert_close(y.mean(dim=dims), fused.bias, dtype=torch.float32, msg="per-channel mean")


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float16], ids=["fp32-module", "half-module"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input(dtype, param_dtype, device, assert_close):
    """Half input into an fp32 module (the autocast case) and into an all-half module."""
    if param_dtype == torch.float16 and dtype == torch.bfloat16:
        param_dtype = torch.bfloat16
    fused, reference, shape = make_pair("2d", device, dtype=param_dtype)
    run_steps(fused, reference, shape, device, assert_close, steps=2, dtype=dtype)
    assert fused.running_mean.dtype == param_dtype
    fused.eval()
    reference.eval()
    run_steps(fused, reference, shape, device, assert_close, steps=1, dtype=dtype)


def test_channels_last_module(device, assert_close):
    fused, reference, shape = make_pair("2d", device)
    x = random_like_shape(shape, device, seed=3).to(memory_format=torch.channels_last)
    grad_output = random_like_shape(shape, device, seed=4)
    ours, theirs = step(fused, x, grad_output), step(reference, x, grad_output)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    assert ours[0].stride() == theirs[0].stride()
    assert_close(ours[0], theirs[0])
    assert_close(ours[1], theirs[1])
    assert_same_state(fused, reference, assert_close, "channels_last")


# ----------------------------------------------------------------------------------------------
# Being a torch BatchNorm: isinstance, state_dict, repr, constructor
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["1d-NC", "2d", "3d"])
def test_is_a_torch_batchnorm(name):
    """An instance of torch's own class, so recipes keyed on it (no weight decay on BatchNorm,
    freezing BatchNorm layers, counting them) treat fusedbn's layers as torch's."""
    fused_cls, torch_cls, _ = PAIRS[name]
    model = nn.Sequential(nn.Linear(4, 4, bias=False), fused_cls(4), torch_cls(4))
    assert isinstance(model[1], torch_cls) and isinstance(model[1], _BatchNorm)
    batchnorms = [m for m in model.modules() if isinstance(m, torch_cls)]
    assert batchnorms == [model[1], model[2]]
    no_decay = {id(p) for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
    assert {id(model[1].weight), id(model[1].bias)} <= no_decay
    assert id(model[0].weight) not in no_decay


@pytest.mark.parametrize("name", ["1d-NC", "2d", "3d"])
def test_constructor_takes_torch_arguments_spelled_out(name):
    """torch's constructor arguments by name (bias= included), plus activation and backend, as
    help() and IDEs show them; and a docstring of the class's own."""
    fused_cls, torch_cls, _ = PAIRS[name]
    ours = inspect.signature(fused_cls).parameters
    theirs = inspect.signature(torch_cls).parameters
    added = ["activation", "backend"] if "bias" in theirs else ["bias", "activation", "backend"]
    assert list(ours) == list(theirs) + added
    for name, parameter in theirs.items():
        assert (ours[name].kind, ours[name].default) == (parameter.kind, parameter.default), name
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in added)
    doc = inspect.getdoc(fused_cls)
    assert torch_cls.__name__ in doc and "activation" in doc and "backend" in doc
    assert "residual" in inspect.getdoc(fused_cls.forward)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"affine": False}, {"track_running_stats": False}, {"momentum": None, "eps": 1e-3}],
    ids=["default", "affine-false", "no-running-stats", "momentum-none"],
)
@pytest.mark.parametrize("name", ["1d-NC", "2d", "3d"])
def test_state_dict_and_repr_match_torch(name, kwargs):
    fused_cls, torch_cls, _ = PAIRS[name]
    fused, reference = fused_cls(6, **kwargs), torch_cls(6, **kwargs)
    assert list(fused.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert fused.state_dict()[key].dtype == value.dtype, key
        assert torch.equal(fused.state_dict()[key], value), key
    torch_repr = repr(reference).replace(torch_cls.__name__, fused_cls.__name__)
    assert repr(fused) == torch_repr[:-1] + ", backend='auto')"
    pinned = fused_cls(6, activation="relu", backend="torch", **kwargs)
    assert repr(pinned) == torch_repr[:-1] + ", activation='relu', backend='torch')"


@pytest.mark.parametrize("name", ["1d-NC", "2d", "3d"])
def test_state_dict_round_trips(name, device, assert_close):
    fused, reference, shape = make_pair(name, device, seed=1)
    # Train the torch module so its buffers and counter are non-trivial, then load them into ours.
    for i in range(3):
        reference(random_like_shape(shape, device, seed=40 + i))
    fused.load_state_dict(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value), key
    assert int(fused.num_batches_tracked) == int(reference.num_batches_tracked) == 3
    fused.eval()
    reference.eval()
    x = random_like_shape(shape, device, seed=50)
    assert_close(fused(x), reference(x))

    # And the other way: train ours, load into a fresh torch module.
    fused.train()
    fused(random_like_shape(shape, device, seed=51, offset=2.0))
    fresh = PAIRS[name][1](shape[1], device=device)
    fresh.load_state_dict(fused.state_dict())
    for key, value in fused.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    fresh.eval()
    fused.eval()
    assert_close(fused(x), fresh(x))


@pytest.mark.parametrize("name", ["1d-NC", "2d"])
def test_old_checkpoint_without_num_batches_tracked(name):
    fused_cls, torch_cls, _ = PAIRS[name]
    source = torch_cls(4)
    with torch.no_grad():
        source.running_mean.uniform_(-1, 1)
        source.running_var.uniform_(0.5, 1.5)
    old = source.state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1  # checkpoints from before num_batches_tracked existed
    fused, reference = fused_cls(4), torch_cls(4)
    fused.load_state_dict(copy.deepcopy(old))
    reference.load_state_dict(copy.deepcopy(old))
    assert torch.equal(fused.running_mean, source.running_mean)
    assert torch.equal(fused.running_var, source.running_var)
    assert torch.equal(fused.num_batches_tracked, reference.num_batches_tracked)
    # Without the old version number a missing key is still an error, as in torch.
    new_style = source.state_dict()
    del new_style["num_batches_tracked"]
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        fused_cls(4).load_state_dict(new_style)
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        torch_cls(4).load_state_dict(new_style)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_device_and_dtype_arguments(dtype, device):
    fused = FusedBatchNorm2d(3, device=device, dtype=dtype)
    reference = nn.BatchNorm2d(3, device=device, dtype=dtype)
    for (name, ours), (_, theirs) in zip(
        fused.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert ours.dtype == theirs.dtype, name
        assert ours.device == theirs.device, name
    assert fused.weight.dtype == dtype and fused.weight.device.type == device.type
    assert fused.num_batches_tracked.dtype == torch.long


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused_cls", list(WRONG_DIMS), ids=lambda c: c.__name__)
def test_wrong_number_of_dims(fused_cls):
    torch_cls = {FusedBatchNorm1d: nn.BatchNorm1d, FusedBatchNorm2d: nn.BatchNorm2d}.get(
        fused_cls, nn.BatchNorm3d
    )
    for shape in WRONG_DIMS[fused_cls]:
        fused = fused_cls(5)
        x = torch.randn(shape)
        with pytest.raises(ValueError, match=f"{x.dim()}D"):
            fused(x)
        with pytest.raises(ValueError):
            torch_cls(5)(x)
        assert int(fused.num_batches_tracked) == 0
        assert torch.equal(fused.running_mean, torch.zeros(5))


@pytest.mark.parametrize(
    "shape,error",
    [((2, 4, 3, 3), RuntimeError), ((1, 5, 1, 1), ValueError)],
    ids=["channel-mismatch", "one-value-per-channel"],
)
def test_rejected_call_changes_nothing(shape, error, device):
    """torch increments num_batches_tracked before it fails; fusedbn changes nothing."""
    fused, reference, _ = make_pair("2d", device)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    x = random_like_shape(shape, device, seed=60)
    x_before = x.clone()
    with pytest.raises(error):
        reference(x)
    with pytest.raises(error):
        fused(x)
    for key, value in fused.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(x, x_before)


def test_activation_option_fuses_residual_and_relu(device, assert_close):
    torch.manual_seed(11)
    ours = FusedBatchNorm2d(5, activation="relu").to(device)
    reference = torch.nn.BatchNorm2d(5).to(device)
    with torch.no_grad():
        for module in (ours, reference):
            module.weight.copy_(torch.linspace(0.5, 1.5, 5))
            module.bias.copy_(torch.linspace(-0.5, 0.5, 5))
    assert "activation='relu'" in repr(ours)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for training in (True, False):
        ours.train(training)
        reference.train(training)
        x = torch.randn(4, 5, 3, 7, device=device) + 2.0
        residual = torch.randn_like(x)
        assert_close(ours(x, residual), torch.relu(reference(x) + residual))
        assert_close(ours(x), torch.relu(reference(x)))
    assert_close(ours.running_mean, reference.running_mean)
    assert_close(ours.running_var, reference.running_var)


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        FusedBatchNorm2d(4, activation="tanh")
