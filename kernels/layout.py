"""How the kernels see a tensor, and how a launch is chosen for it.

BatchNorm reduces over every dim except the channel dim (dim 1). The kernels address an element as

    offset = outer * stride_outer + channel * stride_c + inner * stride_inner

so every tensor a kernel touches is described by two reduction dims (``n_outer`` and ``n_inner``
elements) and the channel dim, each with its own stride per tensor. A contiguous (N, C, H, W) tensor
is outer=N, inner=H*W; a channels_last one folds N, H and W into a single inner dim of stride C. Any
strided view whose reduction dims fold into two this way is read in place.
"""

import contextlib
import contextvars
import dataclasses
import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChannelView:
    """A shape folded into (outer, channel, inner), and which original dims make up outer and inner."""

    n_outer: int
    num_channels: int
    n_inner: int
    outer_dims: tuple[int, ...]  # original dims folded into the outer dim, slowest first
    inner_dims: tuple[int, ...]  # original dims folded into the inner dim, slowest first

    @property
    def n_per_channel(self) -> int:
        return self.n_outer * self.n_inner

    def strides(self, t: torch.Tensor) -> tuple[int, int, int] | None:
        """(stride_outer, stride_c, stride_inner) of ``t``, or None if its strides do not fold so."""
        folded = []
        for dims in (self.outer_dims, self.inner_dims):
            for slow, fast in itertools.pairwise(dims):
                if t.stride(slow) != t.stride(fast) * t.shape[fast]:
                    return None
            folded.append(t.stride(dims[-1]) if dims else 0)
        return folded[0], t.stride(1), folded[1]

    def strides_like(
        self, t: torch.Tensor, x: torch.Tensor, x_strides: tuple[int, int, int]
    ) -> tuple[int, int, int] | None:
        """strides(t), taken as ``x_strides`` when ``t`` has the strides of ``x`` (an empty_like)."""
        return x_strides if t.stride() == x.stride() else self.strides(t)


def channel_view(x: torch.Tensor) -> ChannelView | None:
    """Fold the reduction dims of ``x`` into at most two strided dims, or None if they need more.

    Reduction order does not matter for BatchNorm, so the reduction dims are sorted by stride
    (largest first) and a dim is merged into the previous one wherever memory allows it. An empty
    tensor, whose elements the kernels never address, folds into one outer dim without strides.
    """
    if x.numel() == 0:
        n_per_channel = math.prod(x.shape[d] for d in range(x.dim()) if d != 1)
        return ChannelView(n_per_channel, x.shape[1], 1, (), ())
    reduction_dims = sorted(
        (d for d in range(x.dim()) if d != 1 and x.shape[d] != 1), key=x.stride, reverse=True
    )
    groups: list[list[int]] = []
    for d in reduction_dims:
        if groups and x.stride(groups[-1][-1]) == x.stride(d) * x.shape[d]:
            groups[-1].append(d)
        else:
            groups.append([d])
    if len(groups) > 2:
        return None
    groups = [[] for _ in range(2 - len(groups))] + groups
    n_outer, n_inner = (math.prod(x.shape[d] for d in group) for group in groups)
    return ChannelView(n_outer, x.shape[1], n_inner, tuple(groups[0]), tuple(groups[1]))


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are kept in float64 for float64 input and in float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fold_input(x: torch.Tensor) -> tuple[torch.Tensor, ChannelView]:
    """Fold ``x`` into a ChannelView that tensors allocated like it (``empty_like``) share.

    The view depends on ``x`` alone, so the forward and backward of one call fold alike. ``x`` is
    copied only when it cannot be folded in place: a non-dense view whose reduction dims need more
    than two strides, or whose ``empty_like`` would be laid out otherwise. The copy is channels_last
    (3d) where torch would lay out x's output so (a cropped channels_last view), else contiguous, so
    the output's memory format is torch's.
    """
    view, copy_format = _fold(x)
    return _copy_to(x, copy_format), view


def _copy_to(x: torch.Tensor, memory_format: torch.memory_format | None) -> torch.Tensor:
    return x if memory_format is None else x.contiguous(memory_format=memory_format)


def _fold(x: torch.Tensor) -> tuple[ChannelView, torch.memory_format | None]:
    key = (tuple(x.shape), x.stride())
    if all(type(size) is int for size in key[0] + key[1]):
        return _fold_plan(*key)
    return _fold_plan.__wrapped__(*key)  # symbolic sizes, while torch.compile traces: no caching


@functools.lru_cache(maxsize=4096)
def _fold_plan(
    shape: tuple[int, ...], strides: tuple[int, ...]
) -> tuple[ChannelView, torch.memory_format | None]:
    """fold_input's decision for a shape and strides: the view, and the format to copy to first."""
    x = torch.empty_strided(shape, strides, device="meta")
    view = channel_view(x)
    if view is not None and view.strides(torch.empty_like(x)) is not None:
        return view, None
    copy_format = torch.contiguous_format
    if x.dim() in (4, 5):
        channels_last = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        if torch.empty_like(x).is_contiguous(memory_format=channels_last):
            copy_format = channels_last
    return channel_view(x.contiguous(memory_format=copy_format)), copy_format


def conform(
    t: torch.Tensor, like: torch.Tensor, view: ChannelView, like_strides: tuple[int, int, int]
) -> torch.Tensor:
    """``t`` itself when it folds to ``like_strides`` (``view.strides(like)``), else a copy of ``t``
    laid out like ``like``, so that the kernels address both with one stride triple."""
    if t.stride() == like.stride() or view.strides(t) == like_strides:
        return t
    return torch.empty_like(like).copy_(t)


def channels_contiguous(x: torch.Tensor) -> bool:
    """True when channels are the contiguous dim of ``x`` (channels_last and (N, C) layouts)."""
    return x.stride(1) == 1 and x.shape[1] > 1


def relu_mask_like(x: torch.Tensor, view: ChannelView) -> torch.Tensor:
    """An uninitialised packed ReLU mask for ``x``: one bit per element, 8 inner positions a byte.

    Its shape is (n_outer, C, ceil(n_inner / 8)), laid out channels-contiguous when ``x`` is.
    """
    n_bytes = math.ceil(view.n_inner / 8)
    if channels_contiguous(x):
        shape = (view.n_outer, n_bytes, view.num_channels)
        return torch.empty(shape, dtype=torch.uint8, device=x.device).permute(0, 2, 1)
    shape = (view.n_outer, view.num_channels, n_bytes)
    return torch.empty(shape, dtype=torch.uint8, device=x.device)


@dataclass(frozen=True)
class LaunchLimits:
    """Tile budgets, in elements, and grid targets that decide how a BatchNorm is launched."""

    # A channel block whose whole reduction fits in one tile of this many elements is done by one
    # whole-channel program on that single tile.
    single_tile: int = 8192
    # Otherwise programs stream tiles of this many elements.
    stream_tile: int = 4096
    # Whole-channel programs (one launch, x re-read from cache) are used when there are at least
    # this many channel blocks per streaming multiprocessor; with fewer, the reduction is split.
    whole_channel_blocks_per_sm: float = 2.0
    # Programs to aim for per streaming multiprocessor in the split path.
    programs_per_sm: int = 4
    # Widest channel block used when channels are the contiguous dim.
    max_channel_block: int = 64
    # Streaming multiprocessors to plan for; None: the device's own count (2 on the CPU). Pinned by
    # tests so that the number of splits is the same on the CPU and on any GPU.
    multiprocessors: int | None = None

    def __post_init__(self) -> None:
        # Hashed on every call (the plan cache's key): computed once.
        object.__setattr__(self, "_hash", hash(dataclasses.astuple(self)))

    def __hash__(self) -> int:
        return self._hash


_LIMITS: contextvars.ContextVar[LaunchLimits] = contextvars.ContextVar(
    "fusedbn_launch_limits", default=LaunchLimits()  # noqa: B039 (a frozen dataclass)
)


def current_limits() -> LaunchLimits:
    """The limits that launches chosen in this context follow (LaunchLimits() unless overridden)."""
    return _LIMITS.get()


@contextlib.contextmanager
def launch_limits(limits: LaunchLimits) -> Iterator[LaunchLimits]:
    """Choose the launches of the BatchNorms called inside the block with ``limits``.

    A context variable: it holds in this thread (or task) only. The autograd backward, which may run
    on another thread, reuses the launch its forward chose.
    """
    token = _LIMITS.set(limits)
    try:
        yield limits
    finally:
        _LIMITS.reset(token)


@dataclass(frozen=True)
class Launch:
    """Tile shape and grid for one BatchNorm call."""

    block_n: int  # rows of the outer reduction dim per tile
    block_s: int  # elements of the inner reduction dim per tile
    block_c: int  # channels per tile (and per program)
    num_warps: int
    channel_blocks: int
    tiles_inner: int  # tiles along the inner dim
    num_tiles: int  # tiles per channel block
    num_splits: int  # programs sharing one channel block's reduction
    tiles_per_split: int

    @property
    def whole_channel(self) -> bool:
        """Each program owns whole channels: one split, and one launch per direction."""
        return self.num_splits == 1


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@functools.lru_cache(maxsize=64)
def _multiprocessors(device: torch.device) -> int:
    # Cached: get_device_properties costs tens of microseconds, a large part of a small launch.
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


def _warps_for(tile: int) -> int:
    return 8 if tile >= 4096 else 4 if tile >= 1024 else 2


def choose_launch(
    view: ChannelView, x: torch.Tensor, min_block_s: int = 1, limits: LaunchLimits | None = None
) -> Launch:
    """Pick tile sizes, the whole-channel or split path, and the number of splits for ``x``.

    ``min_block_s`` is the smallest inner tile allowed (8 when a packed ReLU mask is involved);
    ``limits`` defaults to current_limits().
    """
    limits = limits or _LIMITS.get()
    sms = limits.multiprocessors or _multiprocessors(x.device)
    return _choose_launch(view, channels_contiguous(x), sms, min_block_s, limits)


@functools.lru_cache(maxsize=4096)
def _choose_launch(
    view: ChannelView,
    channels_are_contiguous: bool,
    sms: int,
    min_block_s: int,
    limits: LaunchLimits,
) -> Launch:
    if channels_are_contiguous:
        block_c = min(_pow2(view.num_channels), limits.max_channel_block)
    else:
        block_c = 1
    # An empty tensor (no channels or no elements) gets one tile that its launchers never launch.
    channel_blocks = max(math.ceil(view.num_channels / block_c), 1)

    whole_n, whole_s = _pow2(view.n_outer), max(_pow2(view.n_inner), min_block_s)
    if whole_n * whole_s * block_c <= limits.single_tile:
        block_n, block_s = whole_n, whole_s
    else:
        per_channel_tile = max(limits.stream_tile // block_c, 1)
        block_s = max(min(whole_s, per_channel_tile), min_block_s)
        block_n = min(whole_n, max(per_channel_tile // block_s, 1))
    tiles_inner = math.ceil(view.n_inner / block_s)
    num_tiles = max(math.ceil(view.n_outer / block_n) * tiles_inner, 1)

    if num_tiles == 1 or channel_blocks >= limits.whole_channel_blocks_per_sm * sms:
        wanted_splits = 1
    else:
        wanted_splits = min(max(limits.programs_per_sm * sms // channel_blocks, 1), num_tiles)
    tiles_per_split = math.ceil(num_tiles / wanted_splits)
    num_splits = math.ceil(num_tiles / tiles_per_split)
    return Launch(
        block_n=block_n,
        block_s=block_s,
        block_c=block_c,
        num_warps=_warps_for(block_n * block_s * block_c),
        channel_blocks=channel_blocks,
        tiles_inner=tiles_inner,
        num_tiles=num_tiles,
        num_splits=num_splits,
        tiles_per_split=tiles_per_split,
    )


@dataclass(frozen=True)
class Plan:
    """How a BatchNorm runs on inputs of one shape, strides, dtype and device, under one set of limits.

    Made once per such input (``plan_batch_norm`` caches it) and reused by the call's backward: how
    the input folds, the launch, and the strides every launch of the call passes.
    """

    view: ChannelView
    copy_format: torch.memory_format | None  # the layout x is copied to first, None: read in place
    launch: Launch
    stats_dtype: torch.dtype  # of mean, invstd and the parameter gradients (accumulator_dtype)
    x_strides: tuple[int, int, int]  # of x as the kernels read it (after the copy, if any)
    # The folded strides of y = torch.empty_like(x), which a residual, dy, grad_input and
    # grad_residual share, and y's own strides (a residual or dy with these is read in place).
    y_strides: tuple[int, int, int]
    y_stride: tuple[int, ...]
    mask_strides: tuple[int, int, int]  # of relu_mask_like(x); (0, 0, 0) without a fused ReLU
    empty: bool  # no element to normalise: the launchers return at once
    # The constexprs every kernel that reads tiles takes, in a dict passed as **tile_constexprs
    # (made once here: building it per call would cost every launch): BLOCK_N, BLOCK_S, BLOCK_C,
    # num_warps, and X_ALIGN, Y_ALIGN and M_ALIGN, the alignment (vector_alignment) of the tiles
    # read and written with x_strides, y_strides (y, a residual, dy, grad_input, grad_residual) and
    # mask_strides (1 without a ReLU). Alignment depends on shape and strides only; a data pointer's
    # own is Triton's to see (it specialises every pointer on 16-byte alignment). Never modified.
    tile_constexprs: dict[str, object] = dataclasses.field(compare=False)

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (of the planned shape and strides) as the kernels read it, as fold_input folds it."""
        return x if self.copy_format is None else x.contiguous(memory_format=self.copy_format)


def plan_batch_norm(
    x: torch.Tensor, relu: bool = False, limits: LaunchLimits | None = None
) -> tuple[torch.Tensor, Plan]:
    """``x`` folded as fold_input folds it, and the Plan of a BatchNorm of it.

    ``relu``: with a fused ReLU, whose packed mask needs inner tiles of at least 8. ``limits``
    defaults to current_limits(). Plans are cached by shape, strides, dtype, device, ``relu`` and
    limits (the last ``PLAN_CACHE_SIZE`` of them); the same arguments give the same Plan object.
    """
    limits = limits or _LIMITS.get()
    try:
        plan = _cached_plan(x.shape, x.stride(), x.dtype, x.device, relu, limits)
    except TypeError:  # symbolic sizes (torch.compile's dynamic shapes): the plan specialises them
        shape, strides = torch.Size(int(size) for size in x.shape), tuple(map(int, x.stride()))
        plan = _cached_plan(shape, strides, x.dtype, x.device, relu, limits)
    return plan.fold(x), plan


# The widest global access one thread makes (128 bits): alignment beyond it buys nothing, and would
# only make more specialisations to compile.
WIDEST_ACCESS_BYTES = 16


def vector_alignment(
    strides: tuple[int, int, int], view: ChannelView, launch: Launch, itemsize: int, bits: int = 1
) -> int:
    """The alignment constexpr of tile_offsets for the tensors addressed with ``strides`` (outer, c,
    inner).

    Their accesses are vectorised along the channel dim when launch.block_c > 1 (channels are the
    contiguous dim), else along the inner dim. The result is the largest power of two, at most the
    tile's size along that dim and the elements of ``itemsize`` bytes in a 128-bit access, that
    divides the other two strides and the extent of the vectorised dim: every row of that dim then
    starts at a multiple of it, and its bounds mask is constant over that many elements. ``bits`` is
    the elements per stored element along the inner dim: 8 for the packed ReLU mask, whose rows hold
    ceil(n_inner / 8) bytes. The result is a fact about element offsets whatever the dtype; the
    ``itemsize`` only caps it (a residual of a wider dtype than y's shares y's value).
    """
    stride_outer, stride_c, stride_inner = strides
    if launch.block_c > 1:
        values, block = (stride_outer, stride_inner, view.num_channels), launch.block_c
    else:
        extent = (view.n_inner + bits - 1) // bits
        values, block = (stride_outer, stride_c, extent), max(launch.block_s // bits, 1)
    limit = min(block, max(WIDEST_ACCESS_BYTES // itemsize, 1))
    common = math.gcd(*values)
    return min(common & -common, limit) if common else limit


def clear_plans() -> None:
    """Forget every cached Plan (the next call of each kind plans anew)."""
    _cached_plan.cache_clear()


PLAN_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _cached_plan(
    shape: torch.Size,
    strides: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    relu: bool,
    limits: LaunchLimits,
) -> Plan:
    view, copy_format = _fold_plan.__wrapped__(tuple(shape), tuple(strides))
    x = _copy_to(torch.empty_strided(shape, strides, dtype=dtype, device="meta"), copy_format)
    if limits.multiprocessors is None:  # x is on the meta device: the count of the real one
        limits = dataclasses.replace(limits, multiprocessors=_multiprocessors(device))
    launch = choose_launch(view, x, 8 if relu else 1, limits)
    y = torch.empty_like(x)
    x_strides = view.strides(x)
    y_strides = view.strides_like(y, x, x_strides)
    mask_strides = relu_mask_like(x, view).stride() if relu else (0, 0, 0)
    itemsize = x.element_size()
    return Plan(
        view=view,
        copy_format=copy_format,
        launch=launch,
        stats_dtype=accumulator_dtype(dtype),
        x_strides=x_strides,
        y_strides=y_strides,
        y_stride=y.stride(),
        mask_strides=mask_strides,
        empty=x.numel() == 0,
        tile_constexprs=dict(
            BLOCK_N=launch.block_n, BLOCK_S=launch.block_s, BLOCK_C=launch.block_c,
            X_ALIGN=vector_alignment(x_strides, view, launch, itemsize),
            Y_ALIGN=vector_alignment(y_strides, view, launch, itemsize),
            M_ALIGN=vector_alignment(mask_strides, view, launch, 1, bits=8) if relu else 1,
            num_warps=launch.num_warps,
        ),
    )


# Channels per program of finalize_moments_kernel (synchronized BatchNorm's separate finalize),
# which reads the [splits, C] partials of every process.
FINALIZE_BLOCK_C = 32


def finalize_grid(num_channels: int) -> tuple[int]:
    """The finalize kernel's grid: one program per FINALIZE_BLOCK_C channels.

    (Integer arithmetic: triton.cdiv is a jit function whose Python call costs microseconds.)
    """
    return ((num_channels + FINALIZE_BLOCK_C - 1) // FINALIZE_BLOCK_C,)


def finalize_block_splits(num_splits: int) -> int:
    """Splits a finalize program reads at once: all of them up to 64 (a [64, 32] block of four
    partials and three running summaries per row fits 8 warps' registers in float64)."""
    return min(_pow2(num_splits), 64)
