"""Triton kernels for fusedbn; see forward.py and backward.py for what each kernel computes."""

from fusedbn.kernels.backward import batch_norm_backward
from fusedbn.kernels.forward import batch_norm_forward

__all__ = ["batch_norm_backward", "batch_norm_forward"]
