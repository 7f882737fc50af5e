"""What one BatchNorm call computes, decided once after its arguments are checked."""

from typing import NamedTuple

from torch import Tensor


class BatchNormCall(NamedTuple):
    """The settings of one BatchNorm call that the launchers follow (the tensors normalised, the
    affine parameters and the residual are passed on their own).

    ``use_batch_stats``: normalise with the batch's statistics (training, or no running statistics),
    else with the running ones. With batch statistics the running statistics, when given, are
    updated in place: ``running = (1 - factor) * running + factor * batch`` with the unbiased batch
    variance, where the factor is ``1 / num_batches_tracked`` when ``num_batches_tracked`` is set
    (the cumulative average of momentum=None; it already counts this batch), else ``momentum``.
    """

    use_batch_stats: bool
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None
    momentum: float
    eps: float
    relu: bool  # a ReLU fused after the normalisation (and the residual add, if any)

    @property
    def update_running(self) -> bool:
        return self.use_batch_stats and self.running_mean is not None

    @property
    def cumulative(self) -> bool:
        return self.num_batches_tracked is not None


def batch_norm_call(
    use_batch_stats: bool,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    momentum: float | None,
    eps: float,
    relu: bool,
) -> BatchNormCall:
    """The call record of a checked call: momentum None with ``num_batches_tracked`` and an update
    is the cumulative average; without an update the factor is unused (0)."""
    update = use_batch_stats and running_mean is not None
    cumulative = momentum is None and num_batches_tracked is not None and update
    return BatchNormCall(
        use_batch_stats,
        running_mean,
        running_var,
        num_batches_tracked if cumulative else None,
        0.0 if momentum is None else momentum,
        eps,
        relu,
    )
