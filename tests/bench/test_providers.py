"""The providers' modules and the call each mode times, checked against torch's own BatchNorm."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedbn
from fusedbn.bench import cases, providers

SHAPE = cases.Shape((3, 5, 4, 4), cases.CUSTOM)


def _x_and_grad():
    x = cases.random_tensor(SHAPE, "float32", cases.NCHW, "cpu", seed=1, offset=1.0)
    grad_output = cases.random_tensor(SHAPE, "float32", cases.NCHW, "cpu", seed=2)
    return x, grad_output


def test_reference_module_has_random_float32_parameters_and_statistics():
    module = providers.reference_module(SHAPE, torch.device("cpu"), seed=3)
    assert type(module) is nn.BatchNorm2d and module.num_features == 5
    for tensor in (module.weight, module.bias, module.running_mean, module.running_var):
        assert tensor.dtype == torch.float32
        assert len(set(tensor.tolist())) == 5  # no constant defaults such as ones or zeros
    assert (module.running_var > 0).all()
    assert (
        type(providers.reference_module(cases.Shape((8, 5), cases.CUSTOM), torch.device("cpu"), 3))
        is nn.BatchNorm1d
    )
    assert (
        type(providers.reference_module(cases.Shape((2, 5, 2, 2, 2), cases.CUSTOM), "cpu", 3))
        is nn.BatchNorm3d
    )


def test_provider_modules_share_values_not_tensors():
    reference = providers.reference_module(SHAPE, torch.device("cpu"), seed=3)
    assert providers.provider_module(cases.EAGER, reference) is reference
    fused = providers.provider_module(cases.FUSEDBN, reference)
    assert isinstance(fused, fusedbn.FusedBatchNorm2d)
    for name, value in reference.state_dict().items():
        assert torch.equal(fused.state_dict()[name], value)
    assert fused.weight.data_ptr() != reference.weight.data_ptr()
    with pytest.raises(ValueError, match="unknown provider 'cudnn'"):
        providers.provider_module("cudnn", reference)


def test_fwd_call_is_a_training_forward():
    reference = providers.reference_module(SHAPE, torch.device("cpu"), seed=3)
    x, grad_output = _x_and_grad()
    expected = F.batch_norm(x, None, None, reference.weight, reference.bias, training=True)
    call = providers.mode_call(reference, cases.FWD, x, grad_output)
    assert reference.training
    torch.testing.assert_close(call(), expected)


def test_fwdbwd_and_bwd_return_the_gradients_of_x_weight_and_bias():
    reference = providers.reference_module(SHAPE, torch.device("cpu"), seed=3)
    x, grad_output = _x_and_grad()
    leaf = x.clone().requires_grad_(True)
    weight = reference.weight.detach().clone().requires_grad_(True)
    bias = reference.bias.detach().clone().requires_grad_(True)
    F.batch_norm(leaf, None, None, weight, bias, training=True).backward(grad_output)
    for mode in (cases.FWDBWD, cases.BWD):
        call = providers.mode_call(reference, mode, x, grad_output)
        for _ in range(2):  # bwd keeps its graph, so it can be called again
            grads = call()
            assert len(grads) == 3
            torch.testing.assert_close(grads[0], leaf.grad)
            torch.testing.assert_close(grads[1], weight.grad)
            torch.testing.assert_close(grads[2], bias.grad)
    assert reference.weight.grad is None  # gradients are returned, not accumulated


def test_a_residual_and_a_forward_of_its_own_get_their_gradient():
    """relu(bn(x) + residual), written as the call's forward: the residual's gradient comes last."""
    reference = providers.reference_module(SHAPE, torch.device("cpu"), seed=3)
    x, grad_output = _x_and_grad()
    residual = cases.random_tensor(SHAPE, "float32", cases.NCHW, "cpu", seed=5)
    leaf, extra = x.clone().requires_grad_(True), residual.clone().requires_grad_(True)
    F.relu(F.batch_norm(leaf, None, None, reference.weight, reference.bias, training=True) + extra).backward(
        grad_output
    )
    call = providers.mode_call(reference, cases.FWDBWD, x, grad_output, residual,
                               lambda module, data, more: F.relu(module(data) + more))  # fmt: skip
    grads = call()
    assert len(grads) == 4
    torch.testing.assert_close(grads[0], leaf.grad)
    torch.testing.assert_close(grads[3], extra.grad)
    assert residual.grad is None and not residual.requires_grad  # the caller's tensor is left alone


def test_case_inputs_are_seeded_and_the_input_is_offset():
    cpu = torch.device("cpu")
    first, second = (providers.case_inputs(SHAPE, "float32", cases.NCHW, cpu) for _ in range(2))
    for a, b in zip(first[1:], second[1:], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first[0].running_var, second[0].running_var)
    assert first[1].mean().item() == pytest.approx(providers.X_OFFSET, abs=0.2)
    assert abs(first[2].mean().item()) < 0.2


def test_eval_call_uses_running_statistics_without_autograd():
    reference = providers.reference_module(SHAPE, torch.device("cpu"), seed=3)
    x, grad_output = _x_and_grad()
    expected = F.batch_norm(
        x, reference.running_mean, reference.running_var, reference.weight, reference.bias, training=False
    )
    output = providers.mode_call(reference, cases.EVAL, x, grad_output)()
    assert not reference.training and not output.requires_grad
    torch.testing.assert_close(output, expected)
    with pytest.raises(ValueError, match="unknown mode"):
        providers.mode_call(reference, "forward", x, grad_output)


def test_load_state_restores_running_statistics_in_place():
    reference = providers.reference_module(SHAPE, torch.device("cpu"), seed=3)
    state = {name: value.clone() for name, value in reference.state_dict().items()}
    running_mean = reference.running_mean
    x, grad_output = _x_and_grad()
    providers.mode_call(reference, cases.FWD, x, grad_output)()
    assert not torch.equal(reference.running_mean, state["running_mean"])
    providers.load_state(reference, state)
    assert reference.running_mean is running_mean
    for name, value in reference.state_dict().items():
        assert torch.equal(value, state[name])


def test_relative_difference_is_the_largest_error_over_the_largest_value():
    expected = torch.tensor([1.0, -4.0, 2.0])
    assert providers.relative_difference(expected.clone(), expected) == 0.0
    assert providers.relative_difference(torch.tensor([1.0, -4.0, 3.0]), expected) == pytest.approx(0.25)
    pair = (torch.tensor([1.0, -4.0, 2.0]), torch.tensor([10.0, 0.0]))
    wanted = (expected, torch.tensor([10.0, -1.0]))
    assert providers.relative_difference(pair, wanted) == pytest.approx(0.1)
    with_nan = (torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([10.0, -1.0]))
    assert math.isnan(providers.relative_difference(with_nan, wanted))


class _TorchOpsWithFlagGemsSignatures:
    """Stands in for flag_gems.ops: aten's operators have the same signatures as FlagGems' ones."""

    batch_norm = staticmethod(torch.ops.aten.native_batch_norm)
    batch_norm_backward = staticmethod(torch.ops.aten.native_batch_norm_backward)


@pytest.mark.parametrize("mode", [cases.FWD, cases.FWDBWD, cases.EVAL])
def test_flag_gems_adapter_matches_torch(mode, assert_close):
    # The adapter passes arguments to FlagGems' operators in their order: checked through operators
    # with the same signatures, against torch's module (outputs, gradients, running statistics).
    reference = providers.reference_module(SHAPE, torch.device("cpu"), seed=3)
    adapter = providers.FlagGemsBatchNorm(reference, _TorchOpsWithFlagGemsSignatures())
    assert adapter.state_dict().keys() == reference.state_dict().keys()
    x = cases.random_tensor(SHAPE, "float32", cases.NCHW, "cpu", seed=1, offset=1.0)
    grad = cases.random_tensor(SHAPE, "float32", cases.NCHW, "cpu", seed=2)
    expected = providers.mode_call(reference, mode, x, grad)()
    actual = providers.mode_call(adapter, mode, x, grad)()
    for got, want in zip(
        actual if isinstance(actual, tuple) else (actual,),
        expected if isinstance(expected, tuple) else (expected,),
        strict=True,
    ):
        assert_close(got, want)
    assert_close(adapter.running_mean, reference.running_mean)
    assert_close(adapter.running_var, reference.running_var)


def test_flag_gems_is_skipped_with_a_reason_when_it_does_not_import(monkeypatch):
    def no_flag_gems():
        raise RuntimeError("No device were detected on your machine !\nPlease check")

    monkeypatch.setattr(providers, "flag_gems_ops", no_flag_gems)
    providers.unavailable_reason.cache_clear()
    try:
        reason = providers.unavailable_reason(cases.FLAG_GEMS)
    finally:
        providers.unavailable_reason.cache_clear()
    assert reason == "flag_gems does not import: RuntimeError: No device were detected on your machine !"
    assert providers.unavailable_reason(cases.EAGER) is None
