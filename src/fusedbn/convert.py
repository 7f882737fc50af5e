"""Swap torch's BatchNorm modules in a model for fusedbn's, and back."""

from torch import nn

from fusedbn.modules import FusedBatchNorm1d, FusedBatchNorm2d, FusedBatchNorm3d

TO_FUSED: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: FusedBatchNorm1d,
    nn.BatchNorm2d: FusedBatchNorm2d,
    nn.BatchNorm3d: FusedBatchNorm3d,
}
TO_TORCH: dict[type[nn.Module], type[nn.Module]] = {v: k for k, v in TO_FUSED.items()}


def _swap(module: nn.Module, mapping: dict[type[nn.Module], type[nn.Module]]) -> nn.Module:
    """Return ``module`` with every module whose exact class is a key of ``mapping`` replaced."""
    new_class = mapping.get(type(module))
    if new_class is not None:
        replacement = new_class(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            device="meta",
        )
        # The replacement takes over the very Parameter and buffer objects, so optimisers,
        # devices, dtypes and requires_grad flags stay exactly as they were.
        for name, param in module.named_parameters(recurse=False):
            setattr(replacement, name, param)
        for name in ("weight", "bias"):
            if getattr(module, name, None) is None:
                replacement.register_parameter(name, None)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            replacement.register_buffer(name, getattr(module, name, None))
        replacement.train(module.training)
        if hasattr(module, "qconfig"):
            replacement.qconfig = module.qconfig
        return replacement
    for name, child in module.named_children():
        new_child = _swap(child, mapping)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def convert_model(model: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``model`` with its fusedbn counterpart.

    Parameters and buffers are moved over as they are (same tensors, device, dtype and
    requires_grad), training mode is kept, and the converted model is returned; a bare BatchNorm
    module passed in is returned replaced. Subclasses of torch's BatchNorm are left alone, since
    they may change its behaviour.
    """
    return _swap(model, TO_FUSED)


def revert_model(model: nn.Module) -> nn.Module:
    """Replace every fusedbn BatchNorm in ``model`` with torch's class; the inverse of convert_model."""
    return _swap(model, TO_TORCH)
