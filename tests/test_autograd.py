"""Gradients of gradients and forward-mode AD through fusedbn's autograd Function.

First derivatives come from the kernels; gradients of gradients (``create_graph=True``) and
forward-mode AD come from autograd through a differentiable BatchNorm at the kernels' statistics.
Both are checked numerically (gradgradcheck, forward-mode gradcheck, float64) with each epilogue on
one launch path and with the fullest epilogue on every other (each check costs hundreds of kernel
calls under the interpreter), and against torch's BatchNorm followed by torch's add and ReLU.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from helpers import launch_path_names

import fusedbn
from fusedbn import fused_batch_norm

EPILOGUES = {
    "plain": (False, None),
    "residual": (True, None),
    "relu": (False, "relu"),
    "residual-relu": (True, "relu"),
}


def float64_case(shape, device, seed, with_residual):
    """Leaf tensors (x, weight, bias, residual or None) and running statistics, in float64."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*size, low=None):
        values = torch.randn(size, generator=generator, dtype=torch.float64)
        if low is not None:
            values = values.abs() + low
        return values.to(device)

    x = (draw(*shape) * 2 + 0.5).requires_grad_()
    weight = draw(shape[1], low=0.5).requires_grad_()
    bias = draw(shape[1]).requires_grad_()
    residual = draw(*shape).requires_grad_() if with_residual else None
    running = (draw(shape[1]), draw(shape[1], low=0.5))
    return x, weight, bias, residual, running


def torch_composition(x, weight, bias, residual, running, training, activation, eps=1e-3):
    """torch's BatchNorm, then torch's add and ReLU: what the fused epilogue stands for."""
    running_mean, running_var = (t.clone() for t in running)
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, 0.1, eps)
    if residual is not None:
        y = y + residual
    return F.relu(y) if activation == "relu" else y


def fused(x, weight, bias, residual, running, training, activation, eps=1e-3):
    running_mean, running_var = (t.clone() for t in running)
    return fused_batch_norm(
        x, running_mean, running_var, weight, bias, training, 0.1, eps,
        residual=residual, activation=activation,
    )


def gradcheck_case(epilogue, training, launch_path, device, seed):
    """(fn, inputs) for torch's gradient checks: the fused BatchNorm of float64 leaves.

    The shape is small enough for the checks' many calls; the split path needs more than
    SPLIT_LIMITS' tile.
    """
    with_residual, activation = EPILOGUES[epilogue]
    shape = (5, 3, 3, 2) if launch_path.split else (3, 2, 3, 2)
    x, weight, bias, residual, running = float64_case(shape, device, seed, with_residual)
    inputs = tuple(t for t in (x, weight, bias, residual) if t is not None)

    def fn(x, weight, bias, *residual):
        return fused(x, weight, bias, residual[0] if residual else None, running, training, activation)

    return fn, inputs


# (launch path, epilogue) of the numerical checks: every epilogue on the first path, the residual and
# ReLU together on the others (the paths share the epilogue's code; the conformance tests run every pair).
NUMERICAL_CHECK_CASES = [(launch_path_names()[0], epilogue) for epilogue in EPILOGUES] + [
    (path, "residual-relu") for path in launch_path_names()[1:]
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("launch_path", "epilogue"), NUMERICAL_CHECK_CASES, indirect=["launch_path"])
def test_gradgradcheck(epilogue, training, launch_path, device):
    fn, inputs = gradcheck_case(epilogue, training, launch_path, device, seed=1)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)
    launch_path.check()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("launch_path", "epilogue"), NUMERICAL_CHECK_CASES, indirect=["launch_path"])
def test_forward_mode_gradcheck(epilogue, training, launch_path, device):
    fn, inputs = gradcheck_case(epilogue, training, launch_path, device, seed=2)
    assert torch.autograd.gradcheck(
        fn, inputs, check_forward_ad=True, check_backward_ad=False, fast_mode=True
    )
    launch_path.check()


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_second_order_gradients_match_torch(training, epilogue, device):
    """A gradient penalty: the gradient of a function of the input gradient, as in the issue."""
    with_residual, activation = EPILOGUES[epilogue]
    results = {}
    for name, bn in (("fused", fused), ("torch", torch_composition)):
        x, weight, bias, residual, running = float64_case((6, 3, 4), device, 3, with_residual)
        linear = torch.nn.Linear(4, 4, dtype=torch.float64, device=device)
        with torch.no_grad():
            linear.weight.copy_(torch.eye(4, dtype=torch.float64) + 0.1)
            linear.bias.fill_(0.2)
        y = bn(linear(x), weight, bias, residual, running, training, activation)
        inputs = [x] + ([residual] if residual is not None else [])
        grads = torch.autograd.grad((y**3).sum(), inputs, create_graph=True)
        sum(g.pow(2).sum() for g in grads).backward()
        results[name] = [x.grad, weight.grad, bias.grad, linear.weight.grad, linear.bias.grad]
        if residual is not None:
            results[name].append(residual.grad)
    for ours, theirs in zip(results["fused"], results["torch"], strict=True):
        scale = max(1.0, float(theirs.abs().max()))
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9 * scale)


def test_issue_example_float32(device):
    """Linear(4, 3) then BatchNorm1d(3), gradient of a gradient, in float32: about 2x off before."""
    results = {}
    for name, cls, dtype in (
        ("fused", fusedbn.FusedBatchNorm1d, torch.float32),
        ("float64", torch.nn.BatchNorm1d, torch.float64),
    ):
        torch.manual_seed(0)
        linear, bn = torch.nn.Linear(4, 3).to(device), cls(3).to(device)
        linear, bn = linear.to(dtype), bn.to(dtype)
        x = torch.randn(8, 4, device=device).to(dtype).requires_grad_()
        g, = torch.autograd.grad((bn(linear(x)) ** 3).sum(), x, create_graph=True)
        g.pow(2).sum().backward()
        results[name] = (linear.weight.grad, linear.bias.grad, bn.weight.grad, bn.bias.grad)
    # linear.bias's exact gradient is 0 (BatchNorm removes the mean): the bound is relative to the
    # largest gradient.
    scale = max(float(t.abs().max()) for t in results["float64"])
    for ours, theirs in zip(results["fused"], results["float64"], strict=True):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_jvp_matches_torch(training, epilogue, device):
    """torch.func.jvp and torch.autograd.forward_ad against torch's BatchNorm (+ add, + ReLU)."""
    with_residual, activation = EPILOGUES[epilogue]
    x, weight, bias, residual, running = float64_case((5, 3, 4), device, 4, with_residual)
    primals = tuple(t.detach() for t in (x, weight, bias, residual) if t is not None)
    generator = torch.Generator().manual_seed(5)
    tangents = tuple(
        torch.randn(p.shape, generator=generator, dtype=torch.float64).to(device) for p in primals
    )

    def call(bn):
        def fn(x, weight, bias, *residual):
            return bn(x, weight, bias, residual[0] if residual else None, running, training,
                      activation)
        return fn

    expected_out, expected_tangent = torch.func.jvp(call(torch_composition), primals, tangents)
    out, tangent = torch.func.jvp(call(fused), primals, tangents)
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tangent, expected_tangent, rtol=1e-9, atol=1e-9)

    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents, strict=True)]
        dual_tangent = fwAD.unpack_dual(call(fused)(*duals)).tangent
    torch.testing.assert_close(dual_tangent, expected_tangent, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_running_stats_with_tangents(training, device):
    """As torch: an error in eval (they normalise), ignored in training (they are only updated)."""
    x = torch.randn(6, 3, dtype=torch.float64, device=device)
    x_tangent = torch.randn_like(x)
    outcomes = {}
    for name, fn in (("fused", fused_batch_norm), ("torch", F.batch_norm)):
        running_var = torch.ones(3, dtype=torch.float64, device=device)
        with fwAD.dual_level():
            running_mean = fwAD.make_dual(
                torch.zeros(3, dtype=torch.float64, device=device), torch.ones(3, device=device)
            )
            dual_x = fwAD.make_dual(x, x_tangent)
            try:
                y = fn(dual_x, running_mean, running_var, None, None, training, 0.1, 1e-5)
                outcomes[name] = fwAD.unpack_dual(y).tangent
            except RuntimeError as error:
                outcomes[name] = str(error)
    if training:
        torch.testing.assert_close(outcomes["fused"], outcomes["torch"])
    else:
        assert "running_mean and running_var" in outcomes["torch"]
        assert outcomes["fused"] == outcomes["torch"]


@pytest.mark.parametrize("module", [False, True], ids=["functional", "module"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_running_stats_with_tangents_and_an_input_without(training, module, device):
    """torch raises only when the input (or an affine parameter) carries a tangent too: running
    statistics with tangents and a plain input give an output without a tangent, in training and
    in eval (PyTorch's test_nn does this with BatchNorm's modules). On the kernels' path the
    output's tangent is zero (the autograd Function must give one), which is the same derivative."""
    x = torch.randn(6, 3, 4, dtype=torch.float64, device=device)
    outcomes = {}
    for name, cls in (("fused", fusedbn.FusedBatchNorm1d), ("torch", torch.nn.BatchNorm1d)):
        bn = cls(3, dtype=torch.float64, device=device).train(training)
        with fwAD.dual_level():
            running = [fwAD.make_dual(t.clone(), torch.ones_like(t))
                       for t in (bn.running_mean, bn.running_var)]
            if module:
                bn.running_mean, bn.running_var = running
                y = bn(x)
            else:
                y = (fused_batch_norm if name == "fused" else F.batch_norm)(
                    x, *running, bn.weight, bn.bias, training, 0.1, 1e-5
                )
            outcomes[name] = (fwAD.unpack_dual(y).tangent, y.detach().clone())
    assert outcomes["torch"][0] is None
    fused_tangent = outcomes["fused"][0]
    assert fused_tangent is None or (fused_tangent.shape == x.shape and not fused_tangent.any())
    torch.testing.assert_close(outcomes["fused"][1], outcomes["torch"][1], rtol=1e-10, atol=1e-10)


@pytest.mark.kernels
def test_first_order_backward_still_runs_the_kernels(device, monkeypatch):
    """Without create_graph the backward is the kernels' (the differentiable path is not used)."""
    from fusedbn import autograd

    def refuse(*args):
        raise AssertionError("the differentiable BatchNorm ran in a first-order backward")

    monkeypatch.setattr(autograd, "differentiable_backward", refuse)
    x = torch.randn(4, 3, 5, device=device, requires_grad=True)
    fused_batch_norm(x, None, None, training=True).pow(2).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("shape", [(0, 3, 2), (2, 3, 0, 2)], ids=str)
def test_empty_input_second_order_and_forward_mode(shape, device):
    """Empty inputs through both derivative paths: torch's shapes, zero parameter gradients."""
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.rand(3, dtype=torch.float64, device=device).requires_grad_()
    y = fused_batch_norm(x, None, None, weight, None, True, activation="relu")
    grad_x, grad_weight = torch.autograd.grad(y.sum(), [x, weight], create_graph=True)
    assert grad_x.shape == x.shape and torch.equal(grad_weight, torch.zeros_like(weight))
    with fwAD.dual_level():
        dual = fwAD.make_dual(x.detach(), torch.ones_like(x))
        out = fused_batch_norm(dual, None, None, weight.detach(), None, True)
        assert fwAD.unpack_dual(out).tangent.shape == x.shape


@pytest.mark.kernels
def test_synchronized_batch_norm_refuses_gradients_of_gradients(tmp_path, device):
    """The synchronized Function's backward is first-order only: create_graph is a clear error
    (never silently wrong second derivatives); first-order gradients still work."""
    import torch.distributed as dist

    if device.type != "cpu" or dist.is_initialized():
        pytest.skip("needs a fresh single-process gloo group on the CPU")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(4, 3, 5, requires_grad=True)

        def output():
            return fused_batch_norm(x, None, None, training=True, synchronize=True)

        with pytest.raises(RuntimeError, match="gradients of gradients"):
            torch.autograd.grad(output().pow(2).sum(), x, create_graph=True)
        grad, = torch.autograd.grad(output().pow(2).sum(), x)
        expected, = torch.autograd.grad(F.batch_norm(x, None, None, training=True).pow(2).sum(), x)
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-4)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# The lean call path: what the Function keeps, and what it does not do again
# ----------------------------------------------------------------------------------------------


@pytest.mark.kernels
@pytest.mark.parametrize("layout", ["foldable", "copied"])
def test_the_forwards_plan_and_copy_serve_the_backward(layout, device, monkeypatch):
    """The input is saved as given (its graph serves gradients of gradients); the backward reuses
    the forward's plan and the copy the kernels read when the input does not fold in place."""
    from fusedbn import autograd
    from fusedbn.kernels.layout import Plan

    base = torch.randn(4, 3, 7, 8, device=device)
    x = (base if layout == "foldable" else base[:, :, 1:-1, 1:-1]).requires_grad_()
    weight = torch.rand(3, device=device, requires_grad=True)
    calls = {"plan": 0, "fold": 0}
    plan, fold = autograd.plan_batch_norm, Plan.fold

    def counting_plan(*args, **kwargs):
        calls["plan"] += 1
        return plan(*args, **kwargs)

    def counting_fold(self, x):
        calls["fold"] += 1
        return fold(self, x)

    monkeypatch.setattr(autograd, "plan_batch_norm", counting_plan)
    monkeypatch.setattr(Plan, "fold", counting_fold)
    y = fused_batch_norm(x, None, None, weight, None, True)
    saved = y.grad_fn.saved_tensors
    assert saved[0] is x and saved[1] is weight and saved[2] is None
    assert saved[5] is None and saved[6] is None  # no ReLU: no mask, and the output is not kept
    y.backward(torch.randn_like(y))
    assert calls == {"plan": 1, "fold": 1}, "the backward planned or folded again"
    expected = F.batch_norm(x.detach(), None, None, weight.detach(), None, True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_nothing_to_differentiate_runs_no_function(device):
    x = torch.randn(4, 3, 5, device=device)
    running = (torch.zeros(3, device=device), torch.ones(3, device=device))
    weight = torch.rand(3, device=device, requires_grad=True)
    with torch.no_grad():
        y = fused_batch_norm(x, *running, weight, None, False)
    assert y.grad_fn is None and not y.requires_grad
    torch.testing.assert_close(
        y, F.batch_norm(x, *running, weight.detach(), None, False), rtol=1e-5, atol=1e-5
    )
    assert fused_batch_norm(x, *running, weight, None, False).grad_fn is not None
    assert fused_batch_norm(x, *running, weight.detach(), None, True).grad_fn is None
