"""FusedSyncBatchNorm: a drop-in for torch.nn.SyncBatchNorm that runs fusedbn's kernels."""

from typing import Any

import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fusedbn.backend import AUTO
from fusedbn.convert import TO_FUSED, TO_TORCH, swap_batchnorms
from fusedbn.modules import FusedBatchNormMixin

# The classes convert_sync_batchnorm replaces: torch's BatchNorms, SyncBatchNorm included, and fusedbn's.
SYNC_SOURCES: tuple[type[_BatchNorm], ...] = (*TO_FUSED, nn.SyncBatchNorm, *TO_TORCH)


class FusedSyncBatchNorm(FusedBatchNormMixin, nn.SyncBatchNorm):
    """Drop-in for ``torch.nn.SyncBatchNorm``: BatchNorm over the batches of every process in
    ``process_group`` while training; input (N, C, ...).

    Same constructor as ``torch.nn.SyncBatchNorm`` (``process_group``: None for the whole
    torch.distributed world), plus ``backend``. Outside training, or with one process, it is a plain
    fused BatchNorm. Each process's batch may have its own size: empty, or at least two values per
    channel. grad_weight and grad_bias are each process's own, as in torch. Synchronized calls run
    fusedbn's kernels (``backend="torch"``, or "auto" where the kernels cannot run, runs torch's
    SyncBatchNorm) and fuse no residual or activation.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
        affine: bool = True, track_running_stats: bool = True, process_group: Any = None,
        device: Any = None, dtype: Any = None, *, bias: bool = True, backend: str = AUTO,
    ) -> None:
        nn.SyncBatchNorm.__init__(
            self, num_features, eps, momentum, affine, track_running_stats, process_group,
            device, dtype,
        )
        self._set_fused_options(None, backend, bias)

    def synchronization_group(self) -> Any:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = dist.group.WORLD if self.process_group is None else self.process_group
        return group if dist.get_world_size(group) > 1 else None

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every BatchNorm in ``module`` (torch's ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm``,
        fusedbn's ``FusedBatchNorm1d/2d/3d``) with a FusedSyncBatchNorm over ``process_group``.

        Matching and moving are convert_model's: exact classes only (subclasses are left alone), the
        same Parameter and buffer objects, the training flag and ``qconfig`` kept; the converted
        module is returned. Raises ValueError, changing nothing, if a BatchNorm fuses an activation
        (synchronized BatchNorm has no fused epilogue).
        """
        mapping = dict.fromkeys(SYNC_SOURCES, cls)
        return swap_batchnorms(module, mapping, "convert_sync_batchnorm", process_group=process_group)
