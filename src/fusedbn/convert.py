"""Swap torch's BatchNorm modules in a model for fusedbn's, and back."""

from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fusedbn.backend import check_backend
from fusedbn.modules import FusedBatchNorm1d, FusedBatchNorm2d, FusedBatchNorm3d

TO_FUSED: dict[type[nn.Module], type[_BatchNorm]] = {
    nn.BatchNorm1d: FusedBatchNorm1d,
    nn.BatchNorm2d: FusedBatchNorm2d,
    nn.BatchNorm3d: FusedBatchNorm3d,
}
TO_TORCH: dict[type[nn.Module], type[_BatchNorm]] = {v: k for k, v in TO_FUSED.items()}


def swap_batchnorms(
    model: nn.Module,
    mapping: Mapping[type[nn.Module], type[_BatchNorm]],
    caller: str,
    **constructor_kwargs: Any,
) -> nn.Module:
    """Replace every module of ``model`` whose exact class is a key of ``mapping`` by its value's class
    (subclasses may change the behaviour: not matched), for convert_model, revert_model and
    FusedSyncBatchNorm.convert_sync_batchnorm. Each replacement is built with the BatchNorm's
    hyperparameters plus ``constructor_kwargs`` and takes over the module's own Parameter and buffer
    objects (so optimisers, devices, dtypes and requires_grad flags stay as they were), training flag
    and ``qconfig``; a module used in several places gets one replacement. The model is changed in
    place and returned (a matching ``model`` itself is returned replaced).

    Raises, naming ``caller`` and changing nothing, TypeError if ``model`` is not a module, and
    ValueError if a module to replace fuses an activation (its replacement would drop it).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: expected an nn.Module, got {type(model).__name__}")
    matched = {module: name for name, module in model.named_modules() if type(module) in mapping}
    for module, name in matched.items():
        activation = getattr(module, "activation", None)
        if activation is not None:
            raise ValueError(
                f"{caller}: module {name or type(module).__name__!r} fuses activation={activation!r}, "
                f"which {mapping[type(module)].__name__} cannot express"
            )
    replacements = {
        module: _replacement(module, mapping[type(module)], constructor_kwargs) for module in matched
    }
    if model in replacements:
        return replacements[model]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in replacements:
                setattr(parent, name, replacements[child])
    return model


def _replacement(module: _BatchNorm, new_class: type[_BatchNorm], constructor_kwargs: dict) -> _BatchNorm:
    """A ``new_class`` module holding ``module``'s own parameters, buffers, training flag and qconfig."""
    replacement = new_class(
        module.num_features,
        eps=module.eps,
        momentum=module.momentum,
        affine=module.affine,
        track_running_stats=module.track_running_stats,
        device="meta",
        **constructor_kwargs,
    )
    for name in ("weight", "bias"):
        replacement.register_parameter(name, getattr(module, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        persistent = name not in module._non_persistent_buffers_set
        replacement.register_buffer(name, getattr(module, name), persistent=persistent)
    replacement.train(module.training)
    if hasattr(module, "qconfig"):
        replacement.qconfig = module.qconfig
    return replacement


def convert_model(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``model`` with its fusedbn counterpart, whose
    ``backend`` setting is ``backend`` ("auto", "triton" or "torch", see :mod:`fusedbn.backend`).

    Parameters and buffers are moved over as they are (same tensors, device, dtype and
    requires_grad), the training flag and ``qconfig`` are kept, and the converted model is returned;
    a bare BatchNorm module passed in is returned replaced. Subclasses of torch's BatchNorm are left
    alone, since they may change its behaviour. An unknown ``backend`` is a ValueError, raised
    before anything changes.
    """
    check_backend(backend)
    return swap_batchnorms(model, TO_FUSED, "convert_model", backend=backend)


def revert_model(model: nn.Module) -> nn.Module:
    """Replace every fusedbn BatchNorm in ``model`` with torch's class; the inverse of convert_model.

    Raises ValueError, changing nothing, if a module fuses an activation, which torch's BatchNorm
    classes cannot express.
    """
    return swap_batchnorms(model, TO_TORCH, "revert_model")


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
