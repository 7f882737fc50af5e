"""CUDA graph capture: no fusedbn call reads a device value on the host.

A captured call must not synchronise with the device (``Tensor.item``, ``bool(t)``, ``float(t)``,
``tolist``, ``cpu``, ``numpy``). On the fake GPU (fusedbn's host path with the launches stubbed) every
kind of call runs with those made to raise. On a GPU, a training step is captured with
``torch.cuda.graphs`` and replayed against eager.
"""

import contextlib
import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
from helpers import PATH_LIMITS

import fusedbn
from fusedbn.bench.fake_gpu import fake_gpu
from fusedbn.kernels.layout import launch_limits

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def host_reads_raise(monkeypatch):
    def refuse(name):
        def read(*args, **kwargs):
            raise AssertionError(f"a device value was read on the host (Tensor.{name})")

        return read

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, refuse(name))
        yield


def test_a_host_read_is_caught(monkeypatch):
    """The check itself: a call that reads a value fails it."""
    with host_reads_raise(monkeypatch), pytest.raises(AssertionError, match="Tensor.item"):
        torch.ones(1).item()


def _call(kind: str, momentum, training: bool, synchronize: bool = False) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 6, generator=generator, requires_grad=True)
    weight = torch.rand(3, generator=generator).requires_grad_()
    bias = torch.randn(3, generator=generator).requires_grad_()
    residual = torch.randn(x.shape, generator=generator) if kind == "residual-relu" else None
    y = fusedbn.fused_batch_norm(
        x, torch.zeros(3), torch.ones(3), weight, bias, training, momentum,
        num_batches_tracked=torch.tensor(2), residual=residual,
        activation=None if kind == "plain" else "relu", backend="triton", synchronize=synchronize,
    )
    y.backward(torch.randn(x.shape, generator=generator))


@pytest.mark.parametrize("path", ["single", "whole", "split"])
@pytest.mark.parametrize("kind", ["plain", "relu", "residual-relu"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_no_call_reads_a_device_value(path, kind, momentum, training, monkeypatch):
    with fake_gpu(), launch_limits(PATH_LIMITS[path]):
        _call(kind, momentum, training)  # the first call of a kind may bind and plan
        with host_reads_raise(monkeypatch):
            _call(kind, momentum, training)


def test_a_module_call_reads_no_device_value(monkeypatch):
    for momentum in (0.1, None):
        module = fusedbn.FusedBatchNorm2d(3, momentum=momentum, backend="triton")
        x = torch.randn(4, 3, 5, 6, requires_grad=True)
        with fake_gpu():
            module(x).sum().backward()
            with host_reads_raise(monkeypatch):
                module(x).sum().backward()
                module.eval()
                module(x)


def test_a_synchronized_call_reads_no_device_value(monkeypatch, tmp_path):
    if dist.is_initialized():
        pytest.skip("needs a fresh process group")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        with fake_gpu():
            _call("plain", 0.1, True, synchronize=True)
            with host_reads_raise(monkeypatch):
                _call("plain", 0.1, True, synchronize=True)
                _call("plain", None, True, synchronize=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_a_captured_training_step_replays_like_eager(layout):
    """Capture forward, backward and an SGD step of a small network; replay it on new data and
    compare outputs, gradients, parameters and running statistics with eager after each replay."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), fusedbn.FusedBatchNorm2d(16, activation="relu"),
        torch.nn.Conv2d(16, 16, 3, padding=1, bias=False), fusedbn.FusedBatchNorm2d(16, momentum=None),
    ).cuda().to(memory_format=memory_format)
    eager = copy.deepcopy(model)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, capturable=True) for m in (model, eager)]
    static_x = torch.randn(8, 3, 16, 16, device="cuda").to(memory_format=memory_format)

    def step(net, optimizer, x):
        optimizer.zero_grad(set_to_none=False)
        loss = net(x).square().mean()
        loss.backward()
        optimizer.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up: compile the kernels, fill the launch caches
        for _ in range(2):
            step(model, optimizers[0], static_x)
            step(eager, optimizers[1], static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(model, optimizers[0], static_x)
    for replay in range(3):
        x = torch.randn(8, 3, 16, 16, device="cuda").to(memory_format=memory_format)
        static_x.copy_(x)
        graph.replay()
        expected = step(eager, optimizers[1], x)
        torch.testing.assert_close(static_loss, expected, rtol=1e-4, atol=1e-5)
        for (name, a), b in zip(model.state_dict().items(), eager.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"replay {replay}: {name}")
    assert os.environ.get("TRITON_INTERPRET") != "1"
