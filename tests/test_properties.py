"""Property-based comparison of fused_batch_norm with torch's BatchNorm run in float64.

Hypothesis draws shapes (empty, size-1 and odd sizes included), dtypes, memory layouts (contiguous,
channels_last, permuted, sliced with steps, expanded), affine and running-statistics options,
momentum, eps, train/eval, the residual and ReLU epilogues, NaN and infinity, and bad arguments.
The reference is torch's own BatchNorm (+ add, + ReLU) in float64 on the same values; outputs, all
gradients, running statistics and num_batches_tracked are compared with tolerances scaled to each
quantity's magnitude. A rejected call must leave parameters, buffers and input unchanged.

The number of examples comes from the Hypothesis profile (tests/conftest.py): "ci" by default,
FUSEDBN_HYPOTHESIS_PROFILE=long for a longer run by hand.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import KERNELS_ON_CPU, TOLERANCES

from fusedbn import fused_batch_norm

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given, settings, HealthCheck = hypothesis.given, hypothesis.settings, hypothesis.HealthCheck
assume = hypothesis.assume

# Function-scoped fixtures (the launch path) are set once for all examples of a test, as intended.
SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last", "permuted", "sliced", "expanded")


@st.composite
def shapes(draw, allow_empty=True):
    """(N, C, ...) of rank 2 to 5; small sizes, size 1 and odd sizes are common."""
    rank = draw(st.integers(2, 5))
    low = 0 if allow_empty and draw(st.integers(0, 9)) == 0 else 1
    size = st.integers(low, 5)
    shape = [draw(size), draw(st.integers(max(low, 1), 4))] + [draw(size) for _ in range(rank - 2)]
    while math.prod(shape) > 240:  # keep the interpreter fast
        shape[shape.index(max(shape))] -= 1
    return tuple(shape)


def lay_out(values, layout, draw):
    """A tensor holding ``values`` whose memory is laid out as ``layout``."""
    shape = values.shape
    if layout == "channels_last" and values.dim() in (4, 5):
        memory_format = torch.channels_last if values.dim() == 4 else torch.channels_last_3d
        return values.contiguous(memory_format=memory_format)
    if layout == "permuted":
        order = draw(st.permutations(range(values.dim())))
        inverse = [order.index(d) for d in range(values.dim())]
        return values.permute(order).contiguous().permute(inverse)
    if layout == "sliced":
        steps = [draw(st.integers(1, 3)) for _ in shape]
        big = torch.full([s * k for s, k in zip(shape, steps, strict=True)], float("nan"),
                         dtype=values.dtype)
        view = big[tuple(slice(None, None, k) for k in steps)]
        view.copy_(values)
        return view
    if layout == "expanded" and shape[0] > 0:
        # The batch dim has stride 0: every batch entry is the same memory.
        return values[:1].clone().expand(shape)
    return values.clone()


@st.composite
def cases(draw):
    """Everything one call to fused_batch_norm takes, with valid arguments."""
    shape = draw(shapes())
    dtype = draw(st.sampled_from(DTYPES))
    half = dtype in (torch.float16, torch.bfloat16)
    param_dtype = torch.float32 if half and draw(st.booleans()) else dtype
    layout = draw(st.sampled_from(LAYOUTS))
    training = draw(st.booleans())
    with_running = not training or draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, offset=0.0, scale=1.0):
        return torch.randn(size, generator=generator, dtype=torch.float64) * scale + offset

    values = randn(*shape, offset=draw(st.sampled_from([0.0, 3.0, -50.0])),
                   scale=draw(st.sampled_from([1.0, 0.1, 10.0])))
    if layout == "expanded" and shape[0] > 0:
        values = values[:1].expand(shape)
    special = draw(st.sampled_from([None, None, None, float("nan"), float("inf"), float("-inf")]))
    if special is not None and values.numel() > 0:
        values = values.clone()
        values.view(-1)[draw(st.integers(0, values.numel() - 1))] = special
    x = lay_out(values.to(dtype), layout, draw)
    channels = shape[1]
    case = {
        "x": x,
        "weight": (randn(channels).abs() + 0.5).to(param_dtype) if draw(st.booleans()) else None,
        "bias": randn(channels).to(param_dtype) if draw(st.booleans()) else None,
        "running_mean": randn(channels).to(param_dtype) if with_running else None,
        "running_var": (randn(channels).abs() + 0.5).to(param_dtype) if with_running else None,
        "training": training,
        "momentum": draw(st.sampled_from([0.1, 0.0, 1.0, 0.37, None])),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1, 0.0 if not training else 1e-5])),
        "residual": randn(*shape).to(dtype) if draw(st.booleans()) else None,
        "activation": draw(st.sampled_from([None, "relu"])),
        "grad_output": randn(*shape).to(dtype),
        "num_batches_tracked": None,
    }
    if case["momentum"] is None or (training and with_running and draw(st.booleans())):
        case["num_batches_tracked"] = torch.tensor(draw(st.integers(0, 5)))
    return case


def leaves(case, device, dtype=None):
    """Fresh copies of a case's tensors on ``device`` (cast to ``dtype`` if given); differentiable
    ones are leaves that require grad."""
    copied = {}
    for key, value in case.items():
        if not isinstance(value, torch.Tensor):
            copied[key] = value
            continue
        if dtype is None:
            # The same memory and layout: the fused call reads the tensors in place.
            t = value.detach().to(device) if key == "x" else value.detach().clone().to(device)
        else:
            # Contiguous: torch's CPU backward is wrong for some channels_last views (see issue 10).
            t = value.detach().to(device).contiguous()
            t = t.to(dtype) if t.is_floating_point() else t
        if key in ("x", "weight", "bias", "residual") and t.is_floating_point():
            t.requires_grad_()
        copied[key] = t
    return copied


def run_fused(args):
    y = fused_batch_norm(
        args["x"], args["running_mean"], args["running_var"], args["weight"], args["bias"],
        args["training"], args["momentum"], args["eps"],
        num_batches_tracked=args["num_batches_tracked"], residual=args["residual"],
        activation=args["activation"],
    )
    return y


def run_reference(args):
    """torch's BatchNorm in float64, with num_batches_tracked handled as torch's modules do."""
    nbt, momentum = args["num_batches_tracked"], args["momentum"]
    update = args["training"] and args["running_mean"] is not None
    if update and nbt is not None:
        nbt.add_(1)
    factor = 1.0 / float(nbt) if momentum is None and update else (momentum or 0.0)
    y = F.batch_norm(
        args["x"], args["running_mean"], args["running_var"], args["weight"], args["bias"],
        args["training"], factor, args["eps"],
    )
    if args["residual"] is not None:
        y = y + args["residual"]
    return F.relu(y) if args["activation"] == "relu" else y


def outcome(run, args):
    """Everything a call produces: outputs, gradients and state (or the error it raised)."""
    try:
        y = run(args)
    except (ValueError, RuntimeError, TypeError) as error:
        return type(error)
    if y.numel():
        y.backward(args["grad_output"].to(y.dtype))
    result = {"y": y.detach()}
    for key in ("x", "weight", "bias", "residual"):
        if args[key] is not None:
            result[f"grad_{key}"] = args[key].grad
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        if args[key] is not None:
            result[key] = args[key]
    return result


def assert_matches(actual, expected, dtype, what):
    """Non-finite where the float64 reference is (NaN where it is NaN; where it is infinite fusedbn
    may give NaN), and within the dtype's tolerance, scaled to the quantity's size, elsewhere."""
    assert actual.shape == expected.shape, what
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    finite = expected.isfinite()
    assert torch.equal(actual.isfinite(), finite), f"{what}: non-finite in other places"
    assert not (expected.isnan() & ~actual.isnan()).any(), f"{what}: NaN lost"
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, float(expected[finite].abs().max())) if finite.any() else 1.0
    torch.testing.assert_close(actual[finite], expected[finite], rtol=rtol, atol=atol * scale,
                               msg=what)


@SETTINGS
@given(case=cases())
def test_matches_torch_in_float64(case, launch_path, device):
    """The kernels against torch in float64; the torch path against torch in the case's dtype,
    exactly (it is torch's BatchNorm, add and ReLU)."""
    fused = outcome(run_fused, leaves(case, device))
    exact = launch_path.name == "torch"
    expected = outcome(run_reference, leaves(case, "cpu", None if exact else torch.float64))
    if not isinstance(expected, dict):
        # torch refuses the call (one value per channel in training): so must fusedbn.
        assert fused is expected
        return
    assert isinstance(fused, dict), fused
    dtype = case["x"].dtype
    assert fused["y"].dtype == dtype and fused.keys() == expected.keys()
    for key, value in expected.items():
        if key == "num_batches_tracked":
            assert torch.equal(fused[key].cpu(), value), key
        elif key.startswith("grad_") and value is None:
            assert fused[key] is None or not fused[key].any(), key
        elif exact:
            torch.testing.assert_close(fused[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
        else:
            assert_matches(fused[key], value, dtype, key)


def _set(key, value):
    return lambda case: case.update({key: value})


# Corruptions of a valid case that torch rejects, or that fusedbn rejects on purpose.
BAD_ARGUMENTS = {
    "weight-channels": lambda case: case.update(weight=torch.ones(case["x"].shape[1] + 1)),
    "running-var-channels": lambda case: case.update(
        running_mean=torch.zeros(case["x"].shape[1] + 2), running_var=torch.ones(case["x"].shape[1] + 2)
    ),
    "negative-eps": _set("eps", -1e-3),
    "zero-eps-training": lambda case: case.update(eps=0.0, training=True),
    "integer-input": lambda case: case.update(x=case["x"].detach().to(torch.int32)),
    "momentum-none": lambda case: case.update(momentum=None, num_batches_tracked=None),
    "mixed-dtypes": lambda case: case.update(
        running_mean=torch.zeros(case["x"].shape[1], dtype=torch.float64),
        running_var=torch.ones(case["x"].shape[1], dtype=torch.float16),
    ),
    "activation": _set("activation", "gelu"),
    "residual-shape": lambda case: case.update(residual=torch.zeros(case["x"].shape[1])),
    "eval-without-running": lambda case: case.update(
        training=False, running_mean=None, running_var=None
    ),
}


# The arguments fusedbn's API adds to torch's, which it checks on every path.
OWN_CHECKS = {"momentum-none", "activation", "residual-shape"}


@SETTINGS
@given(case=cases(), bad=st.sampled_from(list(BAD_ARGUMENTS)))
def test_rejected_calls_change_nothing(case, bad, device):
    BAD_ARGUMENTS[bad](case)
    args = leaves(case, device)
    if args["running_mean"] is not None and args["num_batches_tracked"] is None and bad != "momentum-none":
        args["num_batches_tracked"] = torch.tensor(0, device=device)
    before = {k: v.detach().clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    if not (KERNELS_ON_CPU or device.type == "cuda") and bad not in OWN_CHECKS:
        # The torch path gives torch's verdict, which accepts some of these (an empty input).
        torch_rejects = not isinstance(outcome(run_reference, leaves(case, device)), dict)
        assume(torch_rejects)
    with pytest.raises((ValueError, RuntimeError, TypeError)):
        run_fused(args)
    for key, value in before.items():
        assert torch.equal(args[key].detach().nan_to_num(), value.nan_to_num()), key
        assert torch.equal(args[key].detach().isnan(), value.isnan()), key
