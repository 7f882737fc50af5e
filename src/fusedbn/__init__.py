"""fusedbn: BatchNorm computed by fused Triton kernels, as a drop-in for torch.nn.BatchNorm*."""

from fusedbn._version import __version__
from fusedbn.backend import backend_for, use_backend
from fusedbn.convert import convert_model, fuse_batchnorm_relu, revert_model
from fusedbn.functional import fused_batch_norm
from fusedbn.modules import FusedBatchNorm1d, FusedBatchNorm2d, FusedBatchNorm3d
from fusedbn.sync import FusedSyncBatchNorm

__all__ = [
    "FusedBatchNorm1d",
    "FusedBatchNorm2d",
    "FusedBatchNorm3d",
    "FusedSyncBatchNorm",
    "__version__",
    "backend_for",
    "convert_model",
    "fuse_batchnorm_relu",
    "fused_batch_norm",
    "revert_model",
    "use_backend",
]
