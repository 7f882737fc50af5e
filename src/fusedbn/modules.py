"""Drop-in replacements for torch.nn.BatchNorm1d/2d/3d that run fusedbn's kernels.

Each class is a subclass of torch's own (``FusedBatchNorm2d`` is an ``nn.BatchNorm2d``), so
parameters, buffers, state_dict keys, old-checkpoint loading, ``isinstance`` checks and tools keyed
on torch's classes treat it as torch's. The forward is :func:`fusedbn.functional.module_batch_norm`;
under TorchScript it is torch's BatchNorm (see :mod:`fusedbn.backend`).
"""

from typing import Any, Optional

import torch
from torch import Tensor, nn

from fusedbn.backend import AUTO, check_backend
from fusedbn.functional import (
    ACTIVATIONS,
    module_batch_norm,
    statistics_arguments,
    torch_batch_norm,
)


class FusedBatchNormMixin:
    """What fusedbn adds to a torch BatchNorm module: the fused epilogue, the backend setting and a
    forward that runs :func:`fusedbn.functional.module_batch_norm`. Comes first among the bases."""

    # TorchScript reads the attributes' types from here.
    activation: Optional[str]  # noqa: UP045 (TorchScript needs typing.Optional)
    backend: str

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
        affine: bool = True, track_running_stats: bool = True, device: Any = None,
        dtype: Any = None, *, bias: bool = True, activation: str | None = None,
        backend: str = AUTO,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self._set_fused_options(activation, backend, bias)

    def _set_fused_options(self, activation: str | None, backend: str, bias: bool) -> None:
        """Check and keep ``activation`` and ``backend``; drop the bias for ``bias=False``."""
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}: activation must be one of {ACTIVATIONS}, got {activation!r}"
            )
        check_backend(backend)
        self.activation = activation
        self.backend = backend
        if not bias and self.affine:
            # torch 2.12 and later take bias=False themselves; this works on earlier ones too.
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.activation is not None:
            text += f", activation={self.activation!r}"
        return f"{text}, backend={self.backend!r}"

    def synchronization_group(self) -> Any:
        """The process group whose batches the statistics cover now (None: this batch only)."""
        return None

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:  # noqa: UP045
        """Normalise ``input``, add ``residual`` (same shape) if given, then apply the activation.

        Returns relu(batch_norm(input) + residual) with the ReLU only for ``activation="relu"``.
        """
        if torch.jit.is_scripting():
            self._check_input_dim(input)
            running_mean, running_var, use_batch_stats, counter = statistics_arguments(
                self.training, self.track_running_stats, self.running_mean, self.running_var,
                self.num_batches_tracked,
            )
            return torch_batch_norm(
                input, running_mean, running_var, self.weight, self.bias, use_batch_stats,
                self.momentum, self.eps, counter, residual, self.activation is not None,
            )
        return module_batch_norm(self, input, residual)


_ARGUMENTS = """
    Args:
        num_features: C, the number of channels.
        eps: added to the variance for numerical stability. Default: 1e-5.
        momentum: the weight of each batch in the running statistics, ``running = (1 - momentum) *
            running + momentum * batch``; None for the cumulative average. Default: 0.1.
        affine: learn a per-channel scale (weight) and shift (bias). Default: True.
        track_running_stats: keep running statistics for eval; without them batch statistics
            normalise in eval too. Default: True.
        device, dtype: of the parameters and buffers.
        bias: with ``affine``, learn the shift too (False: a scale only). Default: True.
        activation: None, or ``"relu"`` to apply a ReLU after the normalisation (and after adding
            ``residual``) inside the same kernels. Default: None.
        backend: ``"auto"`` (fusedbn's kernels where they run, torch's BatchNorm elsewhere, or the
            enclosing ``fusedbn.use_backend`` block's choice), ``"triton"`` or ``"torch"``.

    ``forward(input, residual=None)`` returns relu(batch_norm(input) + residual), with the add only
    when ``residual`` (input's shape) is given and the ReLU only for ``activation="relu"``. The output
    keeps the input's dtype and memory format; statistics are computed in float32 (float64 for
    float64 input). On CUDA tensors the Triton kernels run; on CPU tensors torch's BatchNorm runs,
    unless ``TRITON_INTERPRET=1`` was set before fusedbn was imported (the kernels then run under
    Triton's interpreter).
"""


class FusedBatchNorm1d(FusedBatchNormMixin, nn.BatchNorm1d):
    __doc__ = """Drop-in for ``torch.nn.BatchNorm1d``: input (N, C) or (N, C, L).
""" + _ARGUMENTS


class FusedBatchNorm2d(FusedBatchNormMixin, nn.BatchNorm2d):
    __doc__ = """Drop-in for ``torch.nn.BatchNorm2d``: input (N, C, H, W).
""" + _ARGUMENTS


class FusedBatchNorm3d(FusedBatchNormMixin, nn.BatchNorm3d):
    __doc__ = """Drop-in for ``torch.nn.BatchNorm3d``: input (N, C, D, H, W).
""" + _ARGUMENTS
