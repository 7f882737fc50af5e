"""What one BatchNorm call computes, besides its tensors."""

from typing import Any, NamedTuple


class BatchNormOptions(NamedTuple):
    """The settings of one BatchNorm call that the launchers follow; the tensors come on their own.

    ``use_batch_stats``: normalise with the batch's statistics (training, or no running statistics),
    else with the running ones. With batch statistics, running statistics that are given are updated
    in place: ``running = (1 - factor) * running + factor * batch``, with the unbiased batch variance.
    The factor is ``momentum``, or for ``momentum=None`` the cumulative average's
    ``1 / (num_batches_tracked + 1)``: the count of earlier batches, which the caller increments
    after the call (:func:`fusedbn.functional.averaging_factor` is the same rule on the host).

    ``process_group``: synchronized BatchNorm's group (None: this process's batch alone).
    """

    use_batch_stats: bool
    momentum: float | None
    eps: float
    relu: bool  # a ReLU fused after the normalisation (and the residual add, if any)
    process_group: Any = None
