"""backend_for names the implementation that runs, and the torch fallback keeps fusedbn's semantics."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedbn
from fusedbn import FusedBatchNorm2d, backend_for, fused_batch_norm
from fusedbn import backend as backend_module
from fusedbn import functional as functional_module

CPU = torch.device("cpu")


def test_backend_reports_the_path_this_suite_runs():
    if torch.cuda.is_available():
        # On a GPU the suite runs the compiled kernels; CPU tensors fall back to torch.
        assert not backend_module.INTERPRETER_ENABLED
        assert backend_for("cuda") == "triton"
        assert backend_for(torch.device("cuda", 0)) == "triton"
        assert backend_for("cpu") == "torch"
    else:
        # conftest enables the interpreter before fusedbn is imported.
        assert backend_module.INTERPRETER_ENABLED
        assert backend_for("cpu") == "triton-interpreter"
        assert backend_for(CPU) == "triton-interpreter"
    assert backend_for("meta") == "torch"
    assert fusedbn.backend_for is backend_for


def test_cuda_runs_compiled_triton_without_interpreter(monkeypatch):
    monkeypatch.setattr(backend_module, "INTERPRETER_ENABLED", False)
    assert backend_for("cuda") == "triton"
    assert backend_for("cpu") == "torch"
    monkeypatch.setattr(backend_module, "INTERPRETER_ENABLED", True)
    assert backend_for("cuda") == "triton-interpreter"
    assert backend_for("cpu") == "triton-interpreter"


@pytest.fixture
def torch_backend(monkeypatch):
    """CPU calls go to PyTorch's BatchNorm; the Triton launchers must not be reached."""
    monkeypatch.setattr(backend_module, "INTERPRETER_ENABLED", False)

    def no_kernels(*args, **kwargs):
        raise AssertionError("the Triton kernels ran on the torch backend")

    monkeypatch.setattr(functional_module, "apply_batch_norm", no_kernels)
    assert backend_for("cpu") == "torch"


def _inputs(seed, shape=(4, 3, 5, 6), dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator) * 2 + 1).to(dtype)
    weight = torch.rand(shape[1], generator=generator) + 0.5
    bias = torch.randn(shape[1], generator=generator)
    return x, weight, bias


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_backend_matches_torch_exactly(training, torch_backend):
    x, weight, bias = _inputs(0)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    states = []
    for fn in (fused_batch_norm, F.batch_norm):
        xi, w, b = (t.clone().requires_grad_() for t in (x, weight, bias))
        rm, rv = torch.zeros(3) + 0.2, torch.ones(3) * 1.5
        y = fn(xi, rm, rv, w, b, training, 0.3, 1e-4)
        y.backward(dy)
        states.append((y, xi.grad, w.grad, b.grad, rm, rv))
    for ours, theirs in zip(*states, strict=True):
        assert torch.equal(ours, theirs)


def test_torch_backend_module_momentum_none_matches_torch(torch_backend):
    """num_batches_tracked and the cumulative average behave as in torch.nn.BatchNorm2d."""
    fused, reference = FusedBatchNorm2d(3, momentum=None), nn.BatchNorm2d(3, momentum=None)
    for step in range(3):
        x, _, _ = _inputs(10 + step)
        assert torch.equal(fused(x), reference(x))
        for key, value in reference.state_dict().items():
            assert torch.equal(fused.state_dict()[key], value), (step, key)
    assert int(fused.num_batches_tracked) == 3
    fused.eval()
    reference.eval()
    x, _, _ = _inputs(20)
    assert torch.equal(fused(x), reference(x))


def test_torch_backend_functional_cumulative_average(torch_backend):
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    num_batches_tracked = torch.tensor(0)
    batch_means = []
    for step in range(3):
        x, _, _ = _inputs(30 + step)
        fused_batch_norm(
            x, running_mean, running_var, None, None, True, None, 1e-5,
            num_batches_tracked=num_batches_tracked,
        )
        batch_means.append(x.double().mean(dim=(0, 2, 3)))
    assert int(num_batches_tracked) == 3
    torch.testing.assert_close(running_mean.double(), torch.stack(batch_means).mean(0))


def test_torch_backend_half_input_fp32_params(torch_backend):
    x, weight, bias = _inputs(40, dtype=torch.bfloat16)
    ours = fused_batch_norm(x, None, None, weight, bias, True)
    theirs = F.batch_norm(x, None, None, weight, bias, True)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)


def test_torch_backend_rejects_like_the_kernels(torch_backend):
    """Argument checks run before the backend is chosen, so a rejected call changes nothing."""
    fused = FusedBatchNorm2d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused(torch.randn(1, 3, 1, 1))
    with pytest.raises(RuntimeError):
        fused(torch.randn(2, 4, 3, 3))
    assert int(fused.num_batches_tracked) == 0
    assert torch.equal(fused.running_mean, torch.zeros(3))
    assert torch.equal(fused.running_var, torch.ones(3))
