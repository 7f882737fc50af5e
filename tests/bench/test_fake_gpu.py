"""The fake GPU: fusedbn's host path on the CPU through Triton's binder and cache, put back after; and
the launch recorder, on the fake GPU and on any device."""

import pytest
import torch
import triton

import fusedbn
from fusedbn.backend import backend_for
from fusedbn.bench.core import LAUNCHERS
from fusedbn.bench.fake_gpu import TARGET, FakeDriver, fake_driver, fake_gpu, recording_launches


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
    kernels_before = [launcher.kernel for launcher in LAUNCHERS]
    with fake_gpu() as kernels:
        assert backend_for("cpu", "triton") == "triton"
        for _ in range(3):
            y = fusedbn.fused_batch_norm(x, *running, weight, None, training, 0.1, 1e-5, backend="triton")
            y.backward(torch.randn_like(y))
        used = [kernel for kernel in kernels.values() if kernel.compiled]
        # Each kernel used was bound once (one specialisation, one launch through Triton) and
        # launched directly after that.
        assert used and all(len(kernel.compiled) == 1 for kernel in used)
        assert all(kernel.triton_launches == 1 for kernel in used)
        # one launch each way (eval: the elementwise kernels)
        assert sum(kernel.launch_count() for kernel in kernels.values()) == 3 * 2
        # Nothing ran: the running statistics are as they were.
        assert torch.equal(running[0], torch.zeros(4)) and torch.equal(running[1], torch.ones(4))
    assert backend_for("cpu") == before_backend
    assert [launcher.kernel for launcher in LAUNCHERS] == kernels_before


def _train_step(x: torch.Tensor) -> torch.Tensor:
    y = fusedbn.fused_batch_norm(x, torch.zeros(4), torch.ones(4), None, None, True, 0.1, 1e-5,
                                 backend="triton")
    y.backward(torch.ones_like(y))
    return y


@pytest.mark.parametrize("launch", [True, False], ids=["made", "not-made"])
def test_the_recorder_keeps_every_launch_and_makes_it_or_not(launch):
    x = torch.randn(3, 4, 5, requires_grad=True)
    with fake_gpu() as kernels, recording_launches(launch=launch) as calls:
        _train_step(x)
    names = [call.kernel.__name__ for call in calls]
    assert names == ["whole_channel_forward_kernel", "whole_channel_backward_kernel"]
    assert all(call.args and call.grid for call in calls)
    assert x.data_ptr() in {arg.data_ptr() for arg in calls[0].args if isinstance(arg, torch.Tensor)}
    made = sum(kernel.launch_count() for kernel in kernels.values())
    assert made == (2 if launch else 0)


def test_the_recorder_counts_real_launches_and_puts_the_launcher_back():
    """Under Triton's interpreter the recorded launches run: the result is torch's."""
    if backend_for("cpu") == "torch":
        pytest.skip("CPU tensors take torch's BatchNorm here, no launcher")
    call = fusedbn.kernels.launcher.KernelLauncher.__call__
    x = torch.randn(3, 4, 5, requires_grad=True)
    with recording_launches() as calls:
        y = _train_step(x)
    assert len(calls) == 2 and fusedbn.kernels.launcher.KernelLauncher.__call__ is call
    torch.testing.assert_close(y, torch.nn.functional.batch_norm(x.detach(), None, None, training=True))
