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
from small_models import (
    CustomBatchNorm2d,
    assert_swapped,
    every_batchnorm_kind,
    module_records,
    small_conv_net,
)
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


# The averaging rule and the merge of the processes' batches are independent: each case varies both.
@pytest.mark.parametrize(
    ("sizes", "momentum"), [([0, 5], 0.1), ([2, 0, 5], None)],
    ids=["2-processes-first-empty-momentum", "3-processes-uneven-one-empty-cumulative"],
)
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


@pytest.mark.parametrize("source", ["torch", "fusedbn"])
def test_convert_sync_batchnorm_keeps_tensors_settings_training_flags_and_qconfig(source, device):
    import fusedbn

    model = every_batchnorm_kind(device)
    if source == "fusedbn":
        fusedbn.convert_model(model)
    sources = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, fusedbn.FusedBatchNorm1d,
               fusedbn.FusedBatchNorm2d, fusedbn.FusedBatchNorm3d)
    group = object()  # stored, not used, outside training across processes
    before = module_records(model)
    synced = fusedbn.FusedSyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    assert synced is model
    assert_swapped(before, model, dict.fromkeys(sources, fusedbn.FusedSyncBatchNorm))
    assert type(model.custom) is CustomBatchNorm2d
    converted = [m for m in model.modules() if type(m) is fusedbn.FusedSyncBatchNorm]
    assert converted and all(m.process_group is group for m in converted)


def test_convert_sync_batchnorm_keeps_what_torch_s_own_keeps():
    """On the modules both convert, torch.nn.SyncBatchNorm.convert_sync_batchnorm keeps the same
    tensor objects, training flag and qconfig as fusedbn's does (torch also converts subclasses,
    which fusedbn leaves alone, and gives a module used in two places two replacements, where
    fusedbn gives it one)."""
    import fusedbn

    theirs_model = every_batchnorm_kind()
    ours_model = copy.deepcopy(theirs_model)
    theirs_before, ours_before = module_records(theirs_model), module_records(ours_model)
    nn.SyncBatchNorm.convert_sync_batchnorm(theirs_model)
    fusedbn.FusedSyncBatchNorm.convert_sync_batchnorm(ours_model)
    theirs_after = dict(theirs_model.named_modules(remove_duplicate=False))
    ours_after = dict(ours_model.named_modules(remove_duplicate=False))
    compared = 0
    for name, mine in ours_after.items():
        if type(mine) is not fusedbn.FusedSyncBatchNorm:
            continue
        theirs = theirs_after[name]
        assert type(theirs) is nn.SyncBatchNorm, name
        kept_by_torch = {key: getattr(theirs, key) is tensor
                         for key, tensor in theirs_before[name]["tensors"].items()}
        kept_by_fusedbn = {key: getattr(mine, key) is tensor
                           for key, tensor in ours_before[name]["tensors"].items()}
        assert kept_by_fusedbn == kept_by_torch, name
        assert (mine.training, mine.state_dict().keys()) == (theirs.training, theirs.state_dict().keys())
        assert (getattr(mine, "qconfig", None) is ours_before[name]["qconfig"]) == (
            getattr(theirs, "qconfig", None) is theirs_before[name]["qconfig"]
        ), name
        compared += 1
    assert compared >= 9


def test_converted_model_acts_alone_without_a_group(device, assert_close):
    import fusedbn

    model = small_conv_net(device, seed=5)
    model[4] = fusedbn.convert_model(model[4])  # fusedbn's BatchNorms are converted too
    reference = copy.deepcopy(model)
    synced = fusedbn.FusedSyncBatchNorm.convert_sync_batchnorm(model)
    assert [type(synced[i]) for i in (1, 4)] == [fusedbn.FusedSyncBatchNorm] * 2
    for step in range(2):
        x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(step)).to(device) + 1.5
        assert_close(synced(x), reference(x), msg=f"step {step}")
    for name, buffer in reference.named_buffers():
        assert_close(dict(synced.named_buffers())[name], buffer, dtype=torch.float32, msg=name)


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
    before = module_records(model)
    with pytest.raises(ValueError, match="convert_sync_batchnorm: module '2' fuses activation='relu'"):
        fusedbn.FusedSyncBatchNorm.convert_sync_batchnorm(model)
    assert_swapped(before, model, {})


def test_convert_sync_batchnorm_refuses_a_non_module():
    import fusedbn

    with pytest.raises(TypeError, match="convert_sync_batchnorm: expected an nn.Module, got list"):
        fusedbn.FusedSyncBatchNorm.convert_sync_batchnorm([nn.BatchNorm2d(3)])
