"""The science experiments train like the tuning harness: the same native-BatchNorm, one-thread set-up."""

from tuning.conftest import mnist1d_offline, native_batch_norm, one_torch_thread, quiet_optuna

__all__ = ["native_batch_norm", "mnist1d_offline", "one_torch_thread", "quiet_optuna"]
