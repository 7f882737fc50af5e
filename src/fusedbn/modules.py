"""Drop-in replacements for torch.nn.BatchNorm1d/2d/3d that run fusedbn's kernels."""

from typing import Any

from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from fusedbn.functional import ACTIVATIONS, batch_norm


class _FusedBatchNorm(_BatchNorm):
    """torch's _BatchNorm with the forward run by fusedbn's kernels, as :func:`fusedbn.fused_batch_norm`.

    Takes torch's constructor arguments, plus ``activation=None`` or ``"relu"`` to fuse a ReLU
    after the normalisation; ``forward(input, residual=None)`` adds ``residual`` before it.
    Parameters, buffers, state_dict keys and old-checkpoint loading are torch's own.
    """

    _expected_dims: tuple[int, ...] = ()

    def __init__(self, *args: Any, activation: str | None = None, **kwargs: Any) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}: activation must be one of {ACTIVATIONS}, got {activation!r}"
            )
        super().__init__(*args, **kwargs)
        self.activation = activation

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.activation is None else f"{text}, activation={self.activation!r}"

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._expected_dims:
            expected = " or ".join(f"{d}D" for d in self._expected_dims)
            raise ValueError(
                f"{type(self).__name__}: expected {expected} input (got {input.dim()}D input)"
            )

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        self._check_input_dim(input)
        training = self.training
        running_mean, running_var = self.running_mean, self.running_var
        # As in torch: batch statistics in training or without running statistics; the running
        # statistics are passed when they normalise (eval) or are updated (training, tracked), and
        # num_batches_tracked is counted in tracked training.
        use_batch_stats = training or (running_mean is None and running_var is None)
        tracked = training and self.track_running_stats
        if training and not tracked:
            running_mean = running_var = None
        return batch_norm(
            input, running_mean, running_var, self.weight, self.bias, use_batch_stats,
            self.momentum, self.eps, self.num_batches_tracked if tracked else None, residual,
            self.activation, *self._synchronization(),
        )

    def _synchronization(self) -> tuple[bool, Any]:
        """Whether to synchronize the statistics across processes, and over which group (no)."""
        return False, None


class FusedBatchNorm1d(_FusedBatchNorm):
    """Drop-in for ``torch.nn.BatchNorm1d``: input (N, C) or (N, C, L)."""

    _expected_dims = (2, 3)


class FusedBatchNorm2d(_FusedBatchNorm):
    """Drop-in for ``torch.nn.BatchNorm2d``: input (N, C, H, W)."""

    _expected_dims = (4,)


class FusedBatchNorm3d(_FusedBatchNorm):
    """Drop-in for ``torch.nn.BatchNorm3d``: input (N, C, D, H, W)."""

    _expected_dims = (5,)
