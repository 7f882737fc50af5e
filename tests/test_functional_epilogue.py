"""The fused epilogue relu(batch_norm(x) + residual) against torch's ops, one after the other."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    ALL_KEYS,
    SHAPES,
    clone_or_none,
    compare,
    leaf,
    make_input,
    params_for,
)

from fusedbn import fused_batch_norm

EPILOGUES = {"residual": (True, None), "relu": (False, "relu"), "residual-relu": (True, "relu")}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize(
    "dtype,layout",
    [(torch.float32, "contiguous"), (torch.bfloat16, "channels_last"), (torch.float16, "sliced")],
)
def test_fused_epilogue_matches_torch_ops(
    dtype, layout, epilogue, training, launch_path, device, assert_close
):
    """Outputs, the gradients of input, weight, bias and residual, and the running statistics.

    The kernels round once, to the output dtype: torch runs in float32 on the same (upcast) values,
    so a half-precision result differs from it only by that rounding, and the ReLU masks agree. On
    the torch path the epilogue is torch's add and ReLU in the input's dtype, which torch runs the
    same way here.
    """
    reference_dtype = torch.float32 if launch_path.name != "torch" else dtype
    shape = SHAPES[4]
    with_residual, activation = EPILOGUES[epilogue]
    x, _ = make_input(shape, layout, dtype, device, seed=200)
    residual = make_input(shape, "contiguous", dtype, device, seed=201)[0] if with_residual else None
    grad_output, _ = make_input(shape, "contiguous", dtype, device, seed=202)
    weight, bias, running_mean, running_var = params_for(shape[1], torch.float32, device, seed=203)

    results = {}
    for name in ("fused", "torch"):
        # detach() keeps x's memory and strides for the fused call; torch gets float32 copies.
        xi = x.detach() if name == "fused" else x.detach().to(reference_dtype)
        ri = None if residual is None else residual.detach().clone()
        if name == "torch" and ri is not None:
            ri = ri.to(reference_dtype)
        xi.requires_grad_()
        if ri is not None:
            ri.requires_grad_()
        w, b = leaf(weight), leaf(bias)
        rm, rv = clone_or_none(running_mean), clone_or_none(running_var)
        if name == "fused":
            y = fused_batch_norm(
                xi, rm, rv, w, b, training, 0.1, 1e-5, residual=ri, activation=activation
            )
            y.backward(grad_output)
        else:
            y = F.batch_norm(xi, rm, rv, w, b, training, 0.1, 1e-5)
            if ri is not None:
                y = y + ri
            if activation == "relu":
                y = F.relu(y)
            y.backward(grad_output.to(reference_dtype))
        results[name] = {
            "y": y.detach(),
            "grad_input": xi.grad,
            "grad_weight": w.grad,
            "grad_bias": b.grad,
            "grad_residual": None if ri is None else ri.grad,
            "running_mean": rm,
            "running_var": rv,
        }
    fused = results["fused"]
    assert fused["y"].dtype == dtype
    if layout != "sliced":  # a non-dense input gets a contiguous output, as in torch
        assert fused["y"].stride() == x.stride()
    if activation == "relu":
        assert (fused["y"] >= 0).all()
    compare(fused, results["torch"], torch.float32, assert_close, ALL_KEYS + ("grad_residual",),
            f"{epilogue} vs torch")
    launch_path.check()
