"""How the kernels see a tensor, and how a launch is chosen for it.

BatchNorm reduces over every dim except the channel dim (dim 1). The kernels address an element as

    offset = outer * stride_outer + channel * stride_c + inner * stride_inner

so every tensor a kernel touches is described by two reduction dims (``n_outer`` and ``n_inner``
elements) and the channel dim, each with its own stride per tensor. A contiguous (N, C, H, W) tensor
is outer=N, inner=H*W; a channels_last one folds N, H and W into a single inner dim of stride C. Any
strided view whose reduction dims fold into two this way is read in place.
"""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChannelView:
    """A tensor shape folded into (outer, channel, inner), with one stride triple per tensor."""

    n_outer: int
    num_channels: int
    n_inner: int
    strides: tuple[tuple[int, int, int], ...]

    @property
    def n_per_channel(self) -> int:
        return self.n_outer * self.n_inner


def channel_view(*tensors: torch.Tensor) -> ChannelView | None:
    """Fold tensors of one shape into a shared ChannelView, or None when two strides cannot do it.

    Reduction order does not matter for BatchNorm, so the reduction dims are sorted by the first
    tensor's strides (largest first) and neighbours are merged wherever every tensor allows it.
    """
    shape = tensors[0].shape
    reduction_dims = [d for d in range(len(shape)) if d != 1 and shape[d] != 1]
    reduction_dims.sort(key=lambda d: tensors[0].stride(d), reverse=True)

    # Each folded dim is (size, [stride in tensor 0, stride in tensor 1, ...]).
    folded: list[tuple[int, list[int]]] = []
    for d in reduction_dims:
        size, strides = shape[d], [t.stride(d) for t in tensors]
        if folded:
            outer_size, outer_strides = folded[-1]
            if all(so == s * size for so, s in zip(outer_strides, strides, strict=True)):
                folded[-1] = (outer_size * size, strides)
                continue
        folded.append((size, strides))
    if len(folded) > 2:
        return None

    while len(folded) < 2:
        folded.insert(0, (1, [0] * len(tensors)))
    (n_outer, outer_strides), (n_inner, inner_strides) = folded
    strides = tuple(
        (outer_strides[i], t.stride(1), inner_strides[i]) for i, t in enumerate(tensors)
    )
    return ChannelView(n_outer, shape[1], n_inner, strides)


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are kept in float64 for float64 input and in float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def strided_views(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], ChannelView]:
    """Fold ``tensors`` into a ChannelView, copying them to contiguous memory only if they cannot be.

    Outputs allocated with ``empty_like`` always fold; only inputs that are non-dense views whose
    reduction dims need more than two strides are copied.
    """
    view = channel_view(*tensors)
    if view is None:
        tensors = tuple(t.contiguous() for t in tensors)
        view = channel_view(*tensors)
    return list(tensors), view


@dataclass(frozen=True)
class LaunchLimits:
    """Tile budgets, in elements, that decide how a BatchNorm is split into programs."""

    # A channel block whose whole reduction fits in this many elements is done by one program that
    # reads x once (the single-pass path).
    single_pass_tile: int = 8192
    # Otherwise programs stream tiles of this many elements through a split reduction.
    stream_tile: int = 4096
    # Programs to aim for per streaming multiprocessor in the split path.
    programs_per_sm: int = 4
    # Widest channel block used when channels are the contiguous dim.
    max_channel_block: int = 32


LIMITS = LaunchLimits()


@dataclass(frozen=True)
class Launch:
    """Tile shape and grid for one BatchNorm call."""

    block_n: int  # rows of the outer reduction dim per tile
    block_s: int  # elements of the inner reduction dim per tile
    block_c: int  # channels per tile (and per program)
    num_warps: int
    single_pass: bool  # True: one tile covers a channel block's whole reduction
    channel_blocks: int
    tiles_inner: int  # tiles along the inner dim
    num_tiles: int  # tiles per channel block
    num_splits: int  # programs sharing one channel block's reduction
    tiles_per_split: int


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


def _warps_for(tile: int) -> int:
    return 8 if tile >= 4096 else 4 if tile >= 1024 else 2


def choose_launch(
    view: ChannelView, device: torch.device, limits: LaunchLimits | None = None
) -> Launch:
    """Pick tile sizes, the single-pass or split path, and the number of splits for ``view``."""
    limits = limits or LIMITS
    x_stride_c = view.strides[0][1]
    if x_stride_c == 1 and view.num_channels > 1:
        block_c = min(_pow2(view.num_channels), limits.max_channel_block)
    else:
        block_c = 1
    channel_blocks = math.ceil(view.num_channels / block_c)

    whole_n, whole_s = _pow2(view.n_outer), _pow2(view.n_inner)
    if whole_n * whole_s * block_c <= limits.single_pass_tile:
        return Launch(
            block_n=whole_n,
            block_s=whole_s,
            block_c=block_c,
            num_warps=_warps_for(whole_n * whole_s * block_c),
            single_pass=True,
            channel_blocks=channel_blocks,
            tiles_inner=1,
            num_tiles=1,
            num_splits=1,
            tiles_per_split=1,
        )

    per_channel_tile = max(limits.stream_tile // block_c, 1)
    block_s = min(whole_s, per_channel_tile)
    block_n = min(whole_n, max(per_channel_tile // block_s, 1))
    tiles_inner = math.ceil(view.n_inner / block_s)
    num_tiles = math.ceil(view.n_outer / block_n) * tiles_inner

    target_programs = limits.programs_per_sm * _multiprocessors(device)
    wanted_splits = min(max(target_programs // channel_blocks, 1), num_tiles)
    tiles_per_split = math.ceil(num_tiles / wanted_splits)
    return Launch(
        block_n=block_n,
        block_s=block_s,
        block_c=block_c,
        num_warps=_warps_for(block_n * block_s * block_c),
        single_pass=False,
        channel_blocks=channel_blocks,
        tiles_inner=tiles_inner,
        num_tiles=num_tiles,
        num_splits=math.ceil(num_tiles / tiles_per_split),
        tiles_per_split=tiles_per_split,
    )
