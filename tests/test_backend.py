"""Which implementation runs: the backend setting, use_backend, backend_for, and torch's BatchNorm
behind fusedbn's API keeping fusedbn's semantics."""

import pytest
import torch
import torch.nn.functional as F
from helpers import KERNELS_ON_CPU
from torch import nn

import fusedbn
from fusedbn import FusedBatchNorm2d, backend_for, fused_batch_norm, use_backend
from fusedbn.kernels.launcher import KernelLauncher

CPU = torch.device("cpu")


@pytest.fixture
def no_kernels(monkeypatch):
    """The Triton launchers must not be reached."""

    def refuse(*args, **kwargs):
        raise AssertionError("the Triton kernels ran where torch's BatchNorm should")

    monkeypatch.setattr(KernelLauncher, "__call__", refuse)


def test_backend_for_names_this_runs_cpu_path():
    if torch.cuda.is_available():
        assert backend_for("cuda") == "triton"
    if KERNELS_ON_CPU:
        assert backend_for("cpu") == backend_for(CPU) == "triton-interpreter"
    else:
        assert backend_for("cpu") == "torch"
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            backend_for("cpu", "triton")
    assert backend_for("cpu", "torch") == "torch"
    assert backend_for("meta") == "torch"
    with use_backend("torch"):
        assert backend_for("cpu") == "torch"
    assert fusedbn.backend_for is backend_for


def _inputs(seed, shape=(4, 3, 5, 6), dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator) * 2 + 1).to(dtype)
    weight = torch.rand(shape[1], generator=generator) + 0.5
    bias = torch.randn(shape[1], generator=generator)
    return x, weight, bias


@pytest.mark.parametrize("how", ["argument", "use_backend"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_backend_matches_torch_exactly(training, how, no_kernels):
    x, weight, bias = _inputs(0)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    states = []
    for fn in (fused_batch_norm, F.batch_norm):
        xi, w, b = (t.clone().requires_grad_() for t in (x, weight, bias))
        rm, rv = torch.zeros(3) + 0.2, torch.ones(3) * 1.5
        if fn is F.batch_norm:
            y = fn(xi, rm, rv, w, b, training, 0.3, 1e-4)
        elif how == "argument":
            y = fn(xi, rm, rv, w, b, training, 0.3, 1e-4, backend="torch")
        else:
            with use_backend("torch"):
                y = fn(xi, rm, rv, w, b, training, 0.3, 1e-4)
        y.backward(dy)
        states.append((y, xi.grad, w.grad, b.grad, rm, rv))
    for ours, theirs in zip(*states, strict=True):
        assert torch.equal(ours, theirs)


def test_torch_backend_module_momentum_none_matches_torch(no_kernels):
    """num_batches_tracked and the cumulative average behave as in torch.nn.BatchNorm2d."""
    fused = FusedBatchNorm2d(3, momentum=None, backend="torch")
    reference = nn.BatchNorm2d(3, momentum=None)
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


def test_torch_backend_functional_cumulative_average(no_kernels):
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    num_batches_tracked = torch.tensor(0)
    batch_means = []
    for step in range(3):
        x, _, _ = _inputs(30 + step)
        fused_batch_norm(
            x, running_mean, running_var, None, None, True, None, 1e-5,
            num_batches_tracked=num_batches_tracked, backend="torch",
        )
        batch_means.append(x.double().mean(dim=(0, 2, 3)))
    assert int(num_batches_tracked) == 3
    torch.testing.assert_close(running_mean.double(), torch.stack(batch_means).mean(0))


def test_torch_backend_half_input_fp32_params(no_kernels):
    x, weight, bias = _inputs(40, dtype=torch.bfloat16)
    ours = fused_batch_norm(x, None, None, weight, bias, True, backend="torch")
    theirs = F.batch_norm(x, None, None, weight, bias, True)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)


def test_torch_backend_epilogue_is_torchs_add_and_relu(no_kernels):
    x, weight, bias = _inputs(45)
    residual = torch.randn(x.shape, generator=torch.Generator().manual_seed(46))
    ours = fused_batch_norm(
        x, None, None, weight, bias, True, residual=residual, activation="relu", backend="torch"
    )
    assert torch.equal(ours, F.relu(F.batch_norm(x, None, None, weight, bias, True) + residual))


@pytest.mark.parametrize(
    "shape,error",
    [((1, 3, 1, 1), ValueError), ((2, 4, 3, 3), RuntimeError)],
    ids=["one-value-per-channel", "channel-mismatch"],
)
def test_torch_backend_rejects_like_torch_and_changes_nothing(shape, error, no_kernels):
    """torch raises these itself; fusedbn counts the batch only after it, so nothing changes."""
    fused = FusedBatchNorm2d(3, momentum=None, backend="torch")
    with pytest.raises(error):
        nn.BatchNorm2d(3)(torch.randn(shape))
    with pytest.raises(error):
        fused(torch.randn(shape))
    assert int(fused.num_batches_tracked) == 0
    assert torch.equal(fused.running_mean, torch.zeros(3))
    assert torch.equal(fused.running_var, torch.ones(3))


def test_a_pinned_module_keeps_its_backend_inside_use_backend(monkeypatch):
    """use_backend decides for "auto" calls only; a module set to "triton" keeps the kernels."""
    if not KERNELS_ON_CPU:
        pytest.skip("the kernels do not run on this CPU path")
    launched = []
    original = KernelLauncher.__call__

    def recording(self, *args, **kwargs):
        launched.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(KernelLauncher, "__call__", recording)
    x, _, _ = _inputs(50)
    with use_backend("torch"):
        FusedBatchNorm2d(3)(x)
        assert launched == []
        FusedBatchNorm2d(3, backend="triton")(x)
    assert launched


@pytest.mark.parametrize("backend", ["cuda", "Triton", None])
def test_unknown_backend_is_refused_and_changes_nothing(backend):
    with pytest.raises(ValueError, match="backend must be one of"):
        FusedBatchNorm2d(3, backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"), use_backend(backend):
        pass
    running_mean, count = torch.zeros(3), torch.tensor(0)
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_batch_norm(
            _inputs(60)[0], running_mean, torch.ones(3), training=True, backend=backend,
            num_batches_tracked=count,
        )
    assert torch.equal(running_mean, torch.zeros(3)) and int(count) == 0
    assert backend_for("cpu") in ("torch", "triton-interpreter")  # the default is left alone


def test_triton_where_the_kernels_cannot_run_says_so():
    if KERNELS_ON_CPU:
        pytest.skip("the kernels run on this CPU path")
    module = FusedBatchNorm2d(3, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' cannot run on cpu tensors"):
        module(_inputs(70)[0])
    assert int(module.num_batches_tracked) == 0
