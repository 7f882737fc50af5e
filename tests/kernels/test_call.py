"""The call record: momentum, num_batches_tracked and the use of batch statistics decide once how
the running statistics are averaged, as torch's BatchNorm does."""

import pytest
import torch

from fusedbn.kernels.call import BatchNormCall, batch_norm_call


def running():
    return torch.zeros(3), torch.ones(3)


def test_momentum_none_with_a_count_is_the_cumulative_average():
    count = torch.tensor(4)
    call = batch_norm_call(True, *running(), count, None, 1e-5, False)
    assert call.update_running and call.cumulative
    assert call.num_batches_tracked is count


@pytest.mark.parametrize(
    "use_batch_stats, has_running, momentum",
    [(False, True, None), (True, False, None), (True, True, 0.3), (False, True, 0.3)],
    ids=["eval", "no-running-stats", "momentum", "eval-momentum"],
)
def test_without_an_update_or_with_a_momentum_the_count_is_not_used(
    use_batch_stats, has_running, momentum
):
    """A count is only the averaging factor when momentum is None and running statistics are
    updated; otherwise the factor is the momentum (0 when None: nothing is updated)."""
    running_mean, running_var = running() if has_running else (None, None)
    call = batch_norm_call(
        use_batch_stats, running_mean, running_var, torch.tensor(4), momentum, 1e-3, True
    )
    assert not call.cumulative and call.num_batches_tracked is None
    assert call.momentum == (0.0 if momentum is None else momentum)
    assert call.update_running == (use_batch_stats and has_running)
    assert (call.eps, call.relu, call.use_batch_stats) == (1e-3, True, use_batch_stats)


def test_a_call_is_a_typed_record():
    call = batch_norm_call(True, None, None, None, 0.1, 1e-5, False)
    assert isinstance(call, BatchNormCall) and call._fields == (
        "use_batch_stats", "running_mean", "running_var", "num_batches_tracked", "momentum",
        "eps", "relu",
    )
