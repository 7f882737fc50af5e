"""Bad input: the error torch raises, and a rejected call changes nothing.

On the kernel path fusedbn's own check raises torch's kind of error with a message naming the
problem; on the torch path the error is torch's own. Either way nothing changes.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    KERNELS_ON_CPU,
    SHAPES,
    make_input,
    params_for,
    reference,
)

from fusedbn import fused_batch_norm
from fusedbn.functional import check_batch_norm_args


def _state(device):
    shape = SHAPES[4]
    x, _ = make_input(shape, "contiguous", torch.float32, device, seed=99)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=98)
    num_batches_tracked = torch.tensor(5, dtype=torch.long, device=device)
    return dict(
        input=x,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
        training=True,
        momentum=0.1,
        eps=1e-5,
        num_batches_tracked=num_batches_tracked,
    )


BAD_CALLS = {
    "1d-input": (ValueError, r"dim", lambda s: s.update(input=s["input"][0, 0, 0])),
    "channel-mismatch-weight": (RuntimeError, r"weight", lambda s: s.update(weight=s["weight"][:4])),
    "channel-mismatch-bias": (RuntimeError, r"bias", lambda s: s.update(bias=torch.cat([s["bias"]] * 2))),
    "channel-mismatch-running-mean": (
        RuntimeError, r"running_mean", lambda s: s.update(running_mean=s["running_mean"][:3])
    ),
    "channel-mismatch-running-var": (
        RuntimeError, r"running_var", lambda s: s.update(running_var=s["running_var"][:3])
    ),
    "one-value-per-channel-2d": (
        ValueError, r"more than 1 value per channel", lambda s: s.update(input=s["input"][:1, :, 0, 0])
    ),
    "one-value-per-channel-4d": (
        ValueError, r"more than 1 value per channel", lambda s: s.update(input=s["input"][:1, :, :1, :1])
    ),
    "eps-zero": (ValueError, r"eps", lambda s: s.update(eps=0.0)),
    "eps-negative": (ValueError, r"eps", lambda s: s.update(eps=-1e-5)),
    "integer-input": (TypeError, r"int64|Long|long", lambda s: s.update(input=s["input"].long())),
    "integer-input-int32": (TypeError, r"int32|Int", lambda s: s.update(input=s["input"].int())),
}


def _ours(pattern, device):
    """``pattern`` where fusedbn's own check runs (the kernels' path), else None (torch's error)."""
    return pattern if KERNELS_ON_CPU or device.type == "cuda" else None


def _torch_error(state):
    """The exception type torch's functional batch_norm raises for this state (on copies)."""
    copies = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    copies.pop("num_batches_tracked")
    try:
        F.batch_norm(copies.pop("input"), **copies)
    except Exception as error:  # noqa: BLE001 (any error is the answer)
        return type(error)
    raise AssertionError("torch accepted the call")


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_rejected_call_raises_and_changes_nothing(case, device):
    error, pattern, corrupt = BAD_CALLS[case]
    state = _state(device)
    corrupt(state)
    before = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if _ours(pattern, device) is None:
        error, pattern = _torch_error(state), None
    x = state.pop("input")
    nbt = state.pop("num_batches_tracked")
    with pytest.raises(error, match=pattern):
        fused_batch_norm(x, **state, num_batches_tracked=nbt)
    state.update(input=x, num_batches_tracked=nbt)
    for key, value in before.items():
        assert torch.equal(state[key], value), f"{key} changed by a rejected call"


def test_unknown_activation_and_bad_residual_are_rejected(device):
    state = _state(device)
    x = state.pop("input")
    nbt = state.pop("num_batches_tracked")
    before = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    nbt_before = nbt.clone()
    with pytest.raises(ValueError, match="activation"):
        fused_batch_norm(x, **state, num_batches_tracked=nbt, activation="gelu")
    with pytest.raises(RuntimeError, match="residual"):
        fused_batch_norm(x, **state, num_batches_tracked=nbt, residual=x[:, :2])
    for key, value in before.items():
        assert torch.equal(state[key], value), f"{key} changed by a rejected call"
    assert torch.equal(nbt, nbt_before)


# Bad input: the error torch raises, and nothing changes


def test_eval_accepts_zero_eps_and_single_value(device, assert_close):
    """eps 0 and one value per channel are only errors in training (torch accepts them in eval)."""
    x, _ = make_input((1, 5), "contiguous", torch.float32, device, seed=110)
    weight, bias, running_mean, running_var = params_for(5, torch.float32, device, seed=111)
    y = fused_batch_norm(x, running_mean, running_var, weight, bias, False, 0.1, 0.0)
    expected = reference(x, weight, bias, running_mean, running_var, False, 0.1, 0.0)
    assert_close(y, expected["y"])
    try:
        theirs = F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.1, 0.0)
    except ValueError:
        return  # torch before 2.13 rejects eps <= 0 in eval too
    assert_close(y, theirs)


@pytest.mark.cuda
@pytest.mark.parametrize("which", ["weight", "running_mean", "input"])
def test_tensors_on_different_devices(which):
    state = _state(torch.device("cuda"))
    state[which] = state[which].cpu()
    before = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    x = state.pop("input")
    nbt = state.pop("num_batches_tracked")
    with pytest.raises(RuntimeError, match="device"):
        fused_batch_norm(x, **state, num_batches_tracked=nbt)
    state.update(input=x, num_batches_tracked=nbt)
    for key, value in before.items():
        assert torch.equal(state[key].cpu(), value.cpu()), f"{key} changed by a rejected call"


def _arguments(device, dtype=torch.float32, param_dtypes=(torch.float32,) * 4):
    """(input, running_mean, running_var, weight, bias) with the given dtypes."""
    x, _ = make_input(SHAPES[3], "contiguous", dtype, device, seed=130)
    params = params_for(SHAPES[3][1], torch.float64, device, seed=131)
    weight, bias, running_mean, running_var = (
        t.to(d) for t, d in zip(params, param_dtypes, strict=True)
    )
    return x, running_mean, running_var, weight, bias


# (input dtype, dtypes of weight, bias, running_mean, running_var) that torch's CPU BatchNorm
# refuses: parameters of another dtype than the input's (other than float32 for half input), and
# parameters of mixed dtypes.
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
MIXED_DTYPES = [
    (F64, (F32, F32, F32, F32)),
    (F32, (F64, F64, F64, F64)),
    (F32, (F16, F16, F16, F16)),
    (BF16, (F16, F16, F16, F16)),
    (F16, (F32, F32, F16, F16)),
    (F64, (F64, F64, F32, F64)),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype,param_dtypes", MIXED_DTYPES, ids=str)
def test_mixed_dtypes_rejected_like_torch(dtype, param_dtypes, training, device):
    x, running_mean, running_var, weight, bias = _arguments(device, dtype, param_dtypes)
    before = [t.clone() for t in (x, running_mean, running_var, weight, bias)]
    with pytest.raises(RuntimeError):
        F.batch_norm(x.cpu(), running_mean.cpu(), running_var.cpu(), weight.cpu(), bias.cpu(),
                     training)
    with pytest.raises(RuntimeError, match=_ours("mixed dtypes", device)):
        fused_batch_norm(x, running_mean, running_var, weight, bias, training)
    for t, saved in zip((x, running_mean, running_var, weight, bias), before, strict=True):
        assert torch.equal(t, saved)


def test_negative_eps_in_eval_rejected_like_torch(device):
    x, running_mean, running_var, weight, bias = _arguments(device)
    with pytest.raises(ValueError, match="non-negative"):
        F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.1, -1e-5)
    with pytest.raises(ValueError, match="non-negative"):
        fused_batch_norm(x, running_mean, running_var, weight, bias, False, 0.1, -1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_momentum_none_needs_num_batches_tracked(training, device):
    """torch's functional batch_norm raises TypeError for momentum None; fusedbn's accepts it only
    with num_batches_tracked (the cumulative average), and otherwise changes nothing."""
    x, running_mean, running_var, weight, bias = _arguments(device)
    before = (running_mean.clone(), running_var.clone())
    with pytest.raises(TypeError):
        F.batch_norm(x, running_mean, running_var, weight, bias, training, None)
    with pytest.raises(TypeError, match="num_batches_tracked"):
        fused_batch_norm(x, running_mean, running_var, weight, bias, training, None)
    assert torch.equal(running_mean, before[0]) and torch.equal(running_var, before[1])


# Valid calls at the edges of what the check accepts: it passes them, and the call runs.
VALID_CALLS = {
    "strided-weight": lambda s: s.update(weight=torch.rand(10, device=s["input"].device)[::2]),
    "training-without-running-stats": lambda s: s.update(
        running_mean=None, running_var=None, training=True, num_batches_tracked=None
    ),
    "half-input-float32-parameters": lambda s: s.update(input=s["input"].half()),
    "empty-input": lambda s: s.update(input=s["input"][:0]),
    "empty-channels": lambda s: s.update(
        input=torch.empty(5, 0, 3, device=s["input"].device), weight=None, bias=None,
        running_mean=None, running_var=None,
    ),
    "eval-zero-eps": lambda s: s.update(training=False, eps=0.0),
}


@pytest.mark.kernels
@pytest.mark.parametrize("case", list(VALID_CALLS))
def test_the_check_passes_valid_calls_at_its_edges(case, device, assert_close):
    state = _state(device)
    VALID_CALLS[case](state)
    check_batch_norm_args(
        state["input"], state["running_mean"], state["running_var"], state["weight"],
        state["bias"], state["training"], state["eps"], state["num_batches_tracked"],
    )
    x = state.pop("input")
    nbt = state.pop("num_batches_tracked")
    y = fused_batch_norm(x, **state, num_batches_tracked=nbt)
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.numel():
        expected = reference(
            x, state["weight"], state["bias"], state["running_mean"], state["running_var"],
            state["training"], state["momentum"], state["eps"],
        )
        assert_close(y, expected["y"], dtype=x.dtype)
