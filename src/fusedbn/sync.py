"""FusedSyncBatchNorm: a drop-in for torch.nn.SyncBatchNorm that runs fusedbn's kernels."""

from typing import Any

import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fusedbn.modules import _FusedBatchNorm


class FusedSyncBatchNorm(_FusedBatchNorm):
    """BatchNorm over the batches of every process in ``process_group`` while training.

    Same constructor as ``torch.nn.SyncBatchNorm``; any input of 2 or more dims. Outside training,
    or with one process, it is a plain fused BatchNorm. Each process's batch may have its own size
    (at least two values per channel). grad_weight and grad_bias are each process's own, as in torch.
    """

    _expected_dims = (2, 3, 4, 5)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.process_group = process_group

    def _synchronization(self) -> dict[str, Any]:
        synchronize = (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )
        return {"synchronize": synchronize, "process_group": self.process_group}

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every BatchNorm (torch's or fusedbn's) in ``module`` with FusedSyncBatchNorm.

        Parameters and buffers are moved over as they are; the converted module is returned. Raises
        ValueError, changing nothing, if a BatchNorm fuses an activation (synchronized BatchNorm has
        no fused epilogue).
        """
        for name, child in module.named_modules():
            if getattr(child, "activation", None) is not None:
                raise ValueError(
                    f"convert_sync_batchnorm: {name or type(child).__name__!r} fuses "
                    f"activation={child.activation!r}, which FusedSyncBatchNorm does not"
                )
        return cls._convert(module, process_group)

    @classmethod
    def _convert(cls, module: nn.Module, process_group: Any) -> nn.Module:
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            synced = cls(
                module.num_features, module.eps, module.momentum, module.affine,
                module.track_running_stats, process_group, device="meta",
            )
            for name in ("weight", "bias"):
                synced.register_parameter(name, getattr(module, name, None))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                synced.register_buffer(name, getattr(module, name, None))
            synced.train(module.training)
            return synced
        for name, child in module.named_children():
            new_child = cls._convert(child, process_group)
            if new_child is not child:
                setattr(module, name, new_child)
        return module
