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
    """Replace every fusedbn BatchNorm in ``model`` with torch's class; the inverse of convert_model.

    Raises ValueError, changing nothing, if a module fuses an activation, which torch's BatchNorm
    classes cannot express.
    """
    for name, module in model.named_modules():
        if type(module) in TO_TORCH and module.activation is not None:
            raise ValueError(
                f"revert_model: module {name or type(module).__name__!r} fuses "
                f"activation={module.activation!r}, which torch's BatchNorm classes cannot express"
            )
    return _swap(model, TO_TORCH)


def fuse_batchnorm_relu(model: nn.Module) -> nn.Module:
    """Fuse each BatchNorm directly followed by a ReLU inside an ``nn.Sequential``.

    The pair becomes one fused module with ``activation="relu"`` (converted from torch's class if
    needed) followed by an ``nn.Identity`` in place of the ReLU, so indices and the state_dict keys
    of the other modules stay the same and the results are unchanged. Only ``nn.Sequential``
    containers are rewritten: there the order of the calls is known, whereas a custom ``forward``
    may use a module in any way. Returns the model.
    """
    fusable = tuple(TO_FUSED) + tuple(TO_TORCH)
    for container in model.modules():
        if not isinstance(container, nn.Sequential):
            continue
        for i in range(len(container) - 1):
            bn, relu = container[i], container[i + 1]
            if type(bn) in fusable and type(relu) is nn.ReLU and getattr(bn, "activation", None) is None:
                fused = convert_model(bn)
                fused.activation = "relu"
                container[i] = fused
                container[i + 1] = nn.Identity()
    return model
