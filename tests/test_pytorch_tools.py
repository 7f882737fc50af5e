"""PyTorch's tools on models built with fusedbn's modules: the same numbers as with torch's own.

FX (symbolic_trace, fusion, quantization), torch.func (vjp, jacrev, jacfwd, grad, vmap), TorchScript
(script and trace, saved and loaded), ONNX (both exporters, run in onnxruntime) and eager
quantization. Each model is compared with the same model built from torch's BatchNorm followed by
torch's add and ReLU. compile and export: tests/test_ops.py. The suite runs this file on both CPU
paths (FUSEDBN_TEST_CPU_PATH).
"""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import fusedbn
from fusedbn.functional import module_batch_norm

# Quantization's and TorchScript's deprecation notices say nothing about fusedbn.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


class Block(nn.Module):
    """conv -> BatchNorm -> (+ input) -> ReLU; fused in one fusedbn module, or torch's three ops."""

    def __init__(self, channels: int, fused: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.fused = fused
        if fused:
            self.bn = fusedbn.FusedBatchNorm2d(channels, activation="relu")
        else:
            self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.bn(self.conv(x), x)
        return torch.relu(self.bn(self.conv(x)) + x)


def build(fused: bool, seed: int = 0) -> nn.Sequential:
    """Conv-BN2d-ReLU, a residual block, pooling, Linear-BN1d: fusedbn's modules or torch's."""
    bn2d = fusedbn.FusedBatchNorm2d if fused else nn.BatchNorm2d
    bn1d = fusedbn.FusedBatchNorm1d if fused else nn.BatchNorm1d
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), bn2d(4), nn.ReLU(), Block(4, fused),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5, bias=False), bn1d(5),
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for tensor, low in ((module.weight, 0.5), (module.bias, -0.5),
                                    (module.running_mean, -0.5), (module.running_var, 0.5)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + low)
    return model


def pair(training: bool = True) -> tuple[nn.Module, nn.Module]:
    return build(True).train(training), build(False).train(training)


def inputs(seed: int, batch: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 6, 6, generator=generator) * 2 + 1


def assert_same(ours, theirs, what, tolerance=1e-4):
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance, msg=lambda m: f"{what}: {m}")


def assert_same_buffers(ours: nn.Module, theirs: nn.Module) -> None:
    for (name, a), b in zip(ours.named_buffers(), theirs.buffers(), strict=True):
        assert_same(a.to(b.dtype), b, f"buffer {name}", 1e-5)


TRAINING = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


# ----------------------------------------------------------------------------------------------
# FX
# ----------------------------------------------------------------------------------------------


def test_fx_traces_each_batchnorm_as_one_node_that_follows_the_training_flag():
    ours, theirs = pair()
    traced = torch.fx.symbolic_trace(ours)
    nodes = [n for n in traced.graph.nodes if n.target is module_batch_norm]
    assert len(nodes) == 3  # one per BatchNorm, its residual add and ReLU inside
    assert not any(n.target in (torch.relu, torch.add) for n in traced.graph.nodes)
    for step in range(2):
        x = inputs(step)
        assert_same(traced(x), theirs(x), f"train step {step}")
    assert_same_buffers(ours, theirs)  # the traced module shares ours' buffers
    traced.eval()
    theirs.eval()
    assert_same(traced(inputs(5)), theirs(inputs(5)), "after .eval()")


def test_fx_traces_the_functional_api_as_one_node():
    def normalise(x, weight, bias):
        return fusedbn.fused_batch_norm(x, None, None, weight, bias, True, activation="relu")

    traced = torch.fx.symbolic_trace(normalise)
    assert [n.target for n in traced.graph.nodes if n.op == "call_function"] == [
        fusedbn.fused_batch_norm
    ]
    x, weight, bias = inputs(6), torch.rand(3) + 0.5, torch.randn(3)
    expected = torch.relu(nn.functional.batch_norm(x, None, None, weight, bias, True))
    assert_same(traced(x, weight, bias), expected, "traced functional")


def test_fx_fusion_runs_on_a_model_in_eval():
    from torch.fx.experimental.optimization import fuse

    ours, theirs = pair(training=False)
    fused = fuse(ours)
    assert_same(fused(inputs(7)), theirs(inputs(7)), "fx fuse")


@TRAINING
def test_fx_quantization_prepares_and_converts(training):
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

    ours, theirs = pair(training)
    x = inputs(8)
    if training:
        prepared = prepare_qat_fx(ours, get_default_qat_qconfig_mapping(), (x,))
    else:
        prepared = prepare_fx(ours, get_default_qconfig_mapping(), (x,))
        # Observers only watch: the prepared model still computes the float model's numbers.
        assert_same(prepared(x), theirs(x), "prepared model")
    for seed in range(3):
        prepared(inputs(9 + seed))
    prepared.eval()
    x = inputs(12)
    expected = prepared(x)  # with the observed ranges, in float (fake quantization for QAT)
    quantized = convert_fx(prepared)
    error = (quantized(x) - expected).abs().max() / expected.abs().max()
    assert error < 0.1, f"quantized model off by {float(error):.3f} of the output's scale"


# ----------------------------------------------------------------------------------------------
# torch.func
# ----------------------------------------------------------------------------------------------


def test_func_vjp_of_an_eval_batchnorm_is_torchs():
    """The gradient that came out as zeros before (vjp never called the Function's backward)."""
    ours, theirs = fusedbn.FusedBatchNorm2d(3).eval(), nn.BatchNorm2d(3).eval()
    x = inputs(10)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
    ours_grad = torch.func.vjp(ours, x)[1](grad)[0]
    theirs_grad = torch.func.vjp(theirs, x)[1](grad)[0]
    assert ours_grad.abs().max() > 0.1
    assert_same(ours_grad, theirs_grad, "vjp")


@pytest.mark.parametrize("transform", ["vjp", "jacrev", "jacfwd", "grad"])
@pytest.mark.parametrize("tracked", [True, False], ids=["eval", "train-untracked"])
def test_func_transforms_match_torch(transform, tracked):
    """torch.func transforms of a whole model: in eval, and in training without running
    statistics (a transformed function may not update captured buffers, for torch's modules too)."""
    models = [build(fused, seed=1) for fused in (True, False)]
    if tracked:
        models = [m.eval() for m in models]
    else:
        for model in models:
            torch.func.replace_all_batch_norm_modules_(model)
    x = inputs(12, batch=3)
    results = []
    for model in models:
        def loss(x, model=model):
            return model(x).pow(2).sum()

        if transform == "vjp":
            out, vjp_fn = torch.func.vjp(model, x)
            grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(13))
            results.append(vjp_fn(grad)[0])
        elif transform == "grad":
            results.append(torch.func.grad(loss)(x))
        else:
            jacobian = getattr(torch.func, transform)(lambda x, model=model: model(x)[:, :2])
            results.append(jacobian(x))
    assert results[0].abs().max() > 1e-3
    assert_same(results[0], results[1], transform, 2e-4)


def test_func_vmap_over_samples_and_per_sample_gradients():
    models = [build(fused, seed=2) for fused in (True, False)]
    for model in models:
        torch.func.replace_all_batch_norm_modules_(model)
    samples = torch.stack([inputs(20 + i, batch=3) for i in range(4)])
    outputs = [torch.func.vmap(model)(samples) for model in models]
    assert_same(outputs[0], outputs[1], "vmap over samples")
    per_sample = torch.stack([models[1](s) for s in samples])
    assert_same(outputs[0], per_sample, "vmap against a loop")

    grads = []
    for model in models:
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(params, x, model=model):
            return torch.func.functional_call(model, params, (x,)).pow(2).sum()

        grads.append(torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, samples))
    for name in grads[1]:
        assert_same(grads[0][name], grads[1][name], f"per-sample gradient of {name}", 1e-3)


def test_func_vmap_over_an_ensemble_with_batched_running_statistics():
    """Stacked parameters and buffers (one set per model) in training: each model's running
    statistics are updated as that model alone would update them."""
    members = [fusedbn.FusedBatchNorm2d(3, momentum=0.2, activation="relu") for _ in range(3)]
    references = [nn.BatchNorm2d(3, momentum=0.2) for _ in range(3)]
    for i, (ours, theirs) in enumerate(zip(members, references, strict=True)):
        with torch.no_grad():
            for tensor in (ours.weight, ours.bias, ours.running_mean):
                tensor.copy_(torch.randn(3, generator=torch.Generator().manual_seed(30 + i)))
        theirs.load_state_dict(ours.state_dict())
    params, buffers = torch.func.stack_module_state(members)
    buffers.pop("num_batches_tracked")
    base = copy.deepcopy(members[0])
    x = inputs(31)
    residual = torch.randn_like(x)

    def run(params, buffers, x, residual):
        return torch.func.functional_call(base, (params, buffers), (x, residual))

    y = torch.func.vmap(run, in_dims=(0, 0, None, None))(params, buffers, x, residual)
    for i, theirs in enumerate(references):
        assert_same(y[i], torch.relu(theirs(x) + residual), f"member {i}")
        assert_same(buffers["running_mean"][i], theirs.running_mean, f"running_mean {i}", 1e-5)
        assert_same(buffers["running_var"][i], theirs.running_var, f"running_var {i}", 1e-5)


def test_func_vmap_refuses_shared_running_statistics_in_training():
    model = fusedbn.FusedBatchNorm2d(3)
    running_mean = model.running_mean.clone()
    with pytest.raises(RuntimeError, match="replace_all_batch_norm_modules_|running"):
        torch.func.vmap(model)(torch.stack([inputs(40), inputs(41)]))
    assert torch.equal(model.running_mean, running_mean)


# ----------------------------------------------------------------------------------------------
# TorchScript and ONNX: they record torch's BatchNorm
# ----------------------------------------------------------------------------------------------


def _round_trip(scripted: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("how", ["script", "trace"])
@TRAINING
def test_torchscript_runs_like_torch_after_save_and_load(how, training):
    """Scripted or traced, saved and loaded: torch's numbers and running statistics (a trace
    records the training flag it was traced with)."""
    ours, theirs = pair(training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.jit.script(ours) if how == "script" else torch.jit.trace(ours, (inputs(49),))
    loaded = _round_trip(compiled)
    loaded.load_state_dict(theirs.state_dict())  # tracing ran one training step
    for step in range(2):
        x = inputs(50 + step)
        assert_same(loaded(x), theirs(x), f"{how}: step {step}")
    assert_same_buffers(loaded, theirs)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_onnx_export_runs_in_onnxruntime_with_torchs_numbers(dynamo):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    ours, theirs = pair(training=False)
    x = inputs(60)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The dynamo exporter's optimiser would fold BatchNorm into the convolution.
        torch.onnx.export(ours, (x,), buffer, dynamo=dynamo, **({"optimize": False} if dynamo else {}))
    graph = onnx.load_from_string(buffer.getvalue()).graph
    op_types = {node.op_type for node in graph.node}
    assert {"BatchNormalization", "Add", "Relu"} <= op_types, op_types
    session = onnxruntime.InferenceSession(buffer.getvalue())
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert_same(torch.from_numpy(y), theirs(x), "onnxruntime")


def test_eager_quantization_recipe_reverts_first():
    """The documented recipe: torch's eager quantization keys its fusions on torch's exact classes,
    so revert_model gives it torch's modules (a fused epilogue must be unfused first)."""
    from torch.ao.quantization import (
        DeQuantStub,
        QuantStub,
        convert,
        fuse_modules,
        get_default_qconfig,
        prepare,
    )

    torch.manual_seed(70)
    fused = nn.Sequential(
        QuantStub(), nn.Conv2d(3, 4, 3, bias=False), fusedbn.FusedBatchNorm2d(4), nn.ReLU(),
        DeQuantStub(),
    )
    float_model = copy.deepcopy(fused).eval()
    model = fusedbn.revert_model(fused).eval()
    assert type(model[2]) is nn.BatchNorm2d
    model = fuse_modules(model, [["1", "2", "3"]])
    model.qconfig = get_default_qconfig("x86")
    prepared = prepare(model)
    for seed in range(3):
        prepared(inputs(71 + seed))
    quantized = convert(prepared)
    x = inputs(75)
    expected = float_model(x)
    error = (quantized(x) - expected).abs().max() / expected.abs().max()
    assert error < 0.05, f"quantized model off by {float(error):.3f} of the output's scale"
