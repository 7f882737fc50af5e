"""FusedSyncBatchNorm: several gloo processes on the CPU against one BatchNorm over the whole batch.

The worker processes run fusedbn's kernels under Triton's interpreter (they set TRITON_INTERPRET
before importing fusedbn), so the synchronized path is the kernels' on any machine.
"""

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

CHANNELS = 3
STEPS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _whole_batch(total: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(STEPS, total, CHANNELS, 4, 5, generator=generator) * 2 + 5
    grad = torch.randn(STEPS, total, CHANNELS, 4, 5, generator=generator)
    return x, grad


def _initialised(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        module.weight.copy_(torch.linspace(0.5, 1.5, CHANNELS))
        module.bias.copy_(torch.linspace(-1.0, 1.0, CHANNELS))
    return module


def _worker(rank: int, sizes: list[int], port: int, momentum: float | None, out_dir: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import torch.distributed as dist

    import fusedbn

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(sizes)
    )
    try:
        x_all, grad_all = _whole_batch(sum(sizes))
        start = sum(sizes[:rank])
        bn = _initialised(fusedbn.FusedSyncBatchNorm(CHANNELS, momentum=momentum))
        outputs, input_grads = [], []
        for step in range(STEPS):
            x = x_all[step, start : start + sizes[rank]].clone().requires_grad_()
            y = bn(x)
            y.backward(grad_all[step, start : start + sizes[rank]])
            outputs.append(y.detach())
            input_grads.append(x.grad)
        torch.save(
            {
                "outputs": outputs,
                "input_grads": input_grads,
                "grad_weight": bn.weight.grad,
                "grad_bias": bn.bias.grad,
                "buffers": {k: v.clone() for k, v in bn.named_buffers()},
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("sizes", [[3, 5], [2, 4, 3]], ids=["2-processes", "3-processes-uneven"])
def test_processes_match_one_batchnorm_over_the_whole_batch(sizes, momentum, tmp_path, assert_close):
    mp.spawn(_worker, args=(sizes, _free_port(), momentum, str(tmp_path)), nprocs=len(sizes))
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(sizes))]

    x_all, grad_all = _whole_batch(sum(sizes))
    reference = _initialised(nn.BatchNorm2d(CHANNELS, momentum=momentum)).double()
    ref_outputs, ref_input_grads = [], []
    for step in range(STEPS):
        x = x_all[step].double().requires_grad_()
        y = reference(x)
        y.backward(grad_all[step].double())
        ref_outputs.append(y.detach())
        ref_input_grads.append(x.grad)

    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    for rank, (result, start) in enumerate(zip(results, starts, strict=True)):
        rows = slice(start, start + sizes[rank])
        for step in range(STEPS):
            assert_close(result["outputs"][step], ref_outputs[step][rows], msg=f"rank {rank} y")
            assert_close(
                result["input_grads"][step], ref_input_grads[step][rows], msg=f"rank {rank} dx"
            )
        for name, buffer in reference.named_buffers():
            got = result["buffers"][name]
            if name == "num_batches_tracked":
                assert torch.equal(got, buffer), f"rank {rank} {name}"
            else:
                assert_close(got, buffer, dtype=torch.float32, msg=f"rank {rank} {name}")
    # Each process keeps its own parameter gradients (as torch.nn.SyncBatchNorm does); together they
    # are the gradient of the whole batch.
    grad_weight = sum(result["grad_weight"] for result in results)
    grad_bias = sum(result["grad_bias"] for result in results)
    assert_close(grad_weight, reference.weight.grad, dtype=torch.float32, msg="summed grad_weight")
    assert_close(grad_bias, reference.bias.grad, dtype=torch.float32, msg="summed grad_bias")


def test_convert_sync_batchnorm_keeps_parameters_and_acts_alone_without_a_group(
    device, assert_close
):
    import fusedbn

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), fusedbn.FusedBatchNorm2d(4))
    model = model.to(device)
    reference = copy.deepcopy(model)
    weight = model[1].weight
    synced = fusedbn.FusedSyncBatchNorm.convert_sync_batchnorm(model)
    assert type(synced[1]) is fusedbn.FusedSyncBatchNorm
    assert type(synced[3]) is fusedbn.FusedSyncBatchNorm
    assert synced[1].weight is weight
    x = torch.randn(2, 3, 6, 6, device=device)
    assert_close(synced(x), reference(x))
    assert_close(synced[1].running_mean, reference[1].running_mean)


def test_synchronized_call_with_an_epilogue_is_rejected_before_touching_state(device):
    import fusedbn

    x = torch.randn(4, CHANNELS, 5, device=device)
    running_mean, running_var = torch.zeros(CHANNELS, device=device), torch.ones(CHANNELS, device=device)
    num_batches_tracked = torch.tensor(3, device=device)
    with pytest.raises(ValueError, match="synchronized"):
        fusedbn.fused_batch_norm(
            x, running_mean, running_var, training=True, synchronize=True, activation="relu",
            num_batches_tracked=num_batches_tracked,
        )
    assert int(num_batches_tracked) == 3
    assert torch.equal(running_mean, torch.zeros_like(running_mean))


def test_convert_sync_batchnorm_refuses_fused_activations_and_changes_nothing():
    import fusedbn

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), fusedbn.FusedBatchNorm2d(4, activation="relu")
    )
    with pytest.raises(ValueError, match="activation"):
        fusedbn.FusedSyncBatchNorm.convert_sync_batchnorm(model)
    assert type(model[1]) is nn.BatchNorm2d and type(model[2]) is fusedbn.FusedBatchNorm2d
