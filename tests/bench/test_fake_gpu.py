"""The fake GPU: fusedbn's host path on the CPU through Triton's binder and cache, put back after."""

import pytest
import torch
import triton

import fusedbn
from fusedbn.backend import backend_for
from fusedbn.bench.fake_gpu import TARGET, FakeDriver, fake_driver, fake_gpu, kernel_launchers
from fusedbn.kernels import backward, forward


def test_fake_driver_is_active_inside_and_put_back():
    before = triton.runtime.driver._active
    with fake_driver() as driver:
        assert isinstance(driver, FakeDriver)
        assert triton.runtime.driver.active is driver
        assert driver.get_current_target() == TARGET
    assert triton.runtime.driver._active is before


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_call_goes_through_tritons_binder_once_then_launches_directly(training):
    x = torch.randn(3, 4, 5, requires_grad=True)
    weight = torch.rand(4, requires_grad=True)
    running = (torch.zeros(4), torch.ones(4))
    before_backend = backend_for("cpu")
    launchers = kernel_launchers(forward, backward)
    kernels_before = [launcher.kernel for launcher in launchers]
    with fake_gpu() as gpu:
        assert backend_for("cpu") == "triton"
        for _ in range(3):
            y = fusedbn.fused_batch_norm(x, *running, weight, None, training, 0.1, 1e-5)
            y.backward(torch.randn_like(y))
        used = [kernel for kernel in gpu.kernels.values() if kernel.compiled]
        # Each kernel used was bound once (one specialisation, one launch through Triton) and
        # launched directly after that.
        assert used and all(len(kernel.compiled) == 1 for kernel in used)
        assert all(kernel.triton_launches == 1 for kernel in used)
        assert gpu.launch_count() == 3 * 2  # one launch each way (eval: the elementwise kernels)
        # Nothing ran: the running statistics are as they were.
        assert torch.equal(running[0], torch.zeros(4)) and torch.equal(running[1], torch.ones(4))
    assert backend_for("cpu") == before_backend
    assert [launcher.kernel for launcher in launchers] == kernels_before
