"""BatchNorm backward kernels and their host launcher.

With xhat = (x - mean) * invstd and n elements per channel, the gradients are

    grad_bias   = sum(dy)
    grad_weight = sum(dy * xhat)
    grad_input  = weight * invstd * (dy - grad_bias / n - xhat * grad_weight / n)   (batch stats)
    grad_input  = weight * invstd * dy                                               (running stats)

After a fused ReLU, dy is first zeroed where the forward's packed mask says y was not positive; that
masked dy is also the gradient of a fused residual.

Whole-channel path: whole_channel_backward_kernel gives each program whole channels; it reads x
and dy for the sums and again, from cache, to write grad_input. One launch.
Split path, two launches: partial_sums_kernel sums each split's tiles, and the last program of each
channel block to finish (an atomic ticket, tickets.py) adds the splits' sums in a fixed split order,
so results are bitwise reproducible; grad_input_kernel then writes grad_input.

Strides: x is read through its own (stride_x_*), since a strided view of x is read in place;
grad_input and grad_residual are allocated with torch.empty_like(x), and dy is laid out like them
(conform() copies one that is not), so dy, grad_input and grad_residual share one triple
(stride_dy_*); the packed mask has its own (stride_m_*). That triple is the forward's y's: the
kernels take the forward's tile constexprs, and Y_ALIGN is the alignment of dy's tiles (X_ALIGN
and M_ALIGN of x's and the mask's, as in the forward).
"""

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from fusedbn.kernels.launcher import KernelLauncher
from fusedbn.kernels.layout import (
    ChannelView,
    Plan,
    accumulator_dtype,
    conform,
)
from fusedbn.kernels.tickets import last_to_arrive, launch_with_arrivals
from fusedbn.kernels.tiles import (
    channel_block,
    load_affine,
    sum_over_tile,
    tile_offsets,
    unpack_bits,
    zero_where_off,
)


@triton.jit
def load_grad_output(
    dy_ptr, mask_ptr, tile, tiles_inner, channels, n_outer, n_inner, num_channels,
    stride_dy_outer, stride_dy_c, stride_dy_inner,
    stride_m_outer, stride_m_c, stride_m_byte,
    RELU: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """dy of one tile, zeroed where a fused ReLU's mask is off; its offsets and in-bounds mask.

    grad_input and grad_residual share dy's strides, so the offsets serve their stores too.
    """
    dy_offsets, in_bounds = tile_offsets(
        tile, tiles_inner, channels, n_outer, n_inner, num_channels,
        stride_dy_outer, stride_dy_c, stride_dy_inner, BLOCK_N, BLOCK_S, BLOCK_C, Y_ALIGN,
    )
    dy = tl.load(dy_ptr + dy_offsets, mask=in_bounds, other=0.0)
    if RELU:
        m_offsets, m_bounds = tile_offsets(
            tile, tiles_inner, channels, n_outer, (n_inner + 7) // 8, num_channels,
            stride_m_outer, stride_m_c, stride_m_byte, BLOCK_N, BLOCK_S // 8, BLOCK_C, M_ALIGN,
        )
        packed = tl.load(mask_ptr + m_offsets, mask=m_bounds, other=0)
        dy = zero_where_off(dy, unpack_bits(packed, BLOCK_N, BLOCK_S, BLOCK_C))
    return dy, dy_offsets, in_bounds


@triton.jit
def batch_stats_grad_input(dy, xhat, scale, sum_dy, sum_dy_xhat, n_per_channel):
    """grad_input of a tile normalised with batch statistics; per-channel terms are [1, 1, C]."""
    return (dy - sum_dy / n_per_channel - xhat * (sum_dy_xhat / n_per_channel)) * scale


@triton.jit
def gradient_sums(
    dy_ptr, mask_ptr, x_ptr, channels, first_tile, last_tile, tiles_inner, mean, invstd,
    n_outer, n_inner, num_channels,
    stride_dy_outer, stride_dy_c, stride_dy_inner,
    stride_m_outer, stride_m_c, stride_m_byte,
    stride_x_outer, stride_x_c, stride_x_inner,
    RELU: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """Per-channel sums of dy and dy * xhat over tiles [first_tile, last_tile).

    Each thread accumulates its own tile positions across tiles; the tile is reduced once, at the end.
    """
    mean = mean[None, None, :]
    invstd = invstd[None, None, :]
    sum_dy = tl.zeros([BLOCK_N, BLOCK_S, BLOCK_C], mean.dtype)
    sum_dy_xhat = tl.zeros([BLOCK_N, BLOCK_S, BLOCK_C], mean.dtype)
    for tile in range(first_tile, last_tile):
        dy, _, in_bounds = load_grad_output(
            dy_ptr, mask_ptr, tile, tiles_inner, channels, n_outer, n_inner, num_channels,
            stride_dy_outer, stride_dy_c, stride_dy_inner,
            stride_m_outer, stride_m_c, stride_m_byte, RELU, BLOCK_N, BLOCK_S, BLOCK_C,
            Y_ALIGN, M_ALIGN,
        )
        dy = dy.to(mean.dtype)
        x_offsets, _ = tile_offsets(
            tile, tiles_inner, channels, n_outer, n_inner, num_channels,
            stride_x_outer, stride_x_c, stride_x_inner, BLOCK_N, BLOCK_S, BLOCK_C, X_ALIGN,
        )
        x = tl.load(x_ptr + x_offsets, mask=in_bounds, other=0.0).to(mean.dtype)
        sum_dy += dy
        sum_dy_xhat += dy * tl.where(in_bounds, (x - mean) * invstd, 0.0)
    return sum_over_tile(sum_dy), sum_over_tile(sum_dy_xhat)


@triton.jit
def grad_input_tiles(
    dy_ptr, mask_ptr, x_ptr, dx_ptr, grad_residual_ptr, channels, first_tile, last_tile,
    tiles_inner, mean, invstd, scale, sum_dy, sum_dy_xhat, n_per_channel,
    n_outer, n_inner, num_channels,
    stride_dy_outer, stride_dy_c, stride_dy_inner,
    stride_m_outer, stride_m_c, stride_m_byte,
    stride_x_outer, stride_x_c, stride_x_inner,
    BATCH_STATS: tl.constexpr, RELU: tl.constexpr, WRITE_GRAD_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """Write grad_input (and a fused residual's gradient) on tiles [first_tile, last_tile).

    Both share dy's strides.

    Without BATCH_STATS (eval mode) grad_input needs only dy, so x and the sums are not read.
    """
    mean = mean[None, None, :]
    invstd = invstd[None, None, :]
    scale = scale[None, None, :]
    sum_dy = sum_dy[None, None, :]
    sum_dy_xhat = sum_dy_xhat[None, None, :]
    for tile in range(first_tile, last_tile):
        dy, dy_offsets, in_bounds = load_grad_output(
            dy_ptr, mask_ptr, tile, tiles_inner, channels, n_outer, n_inner, num_channels,
            stride_dy_outer, stride_dy_c, stride_dy_inner,
            stride_m_outer, stride_m_c, stride_m_byte, RELU, BLOCK_N, BLOCK_S, BLOCK_C,
            Y_ALIGN, M_ALIGN,
        )
        dy = dy.to(mean.dtype)
        if BATCH_STATS:
            x_offsets, _ = tile_offsets(
                tile, tiles_inner, channels, n_outer, n_inner, num_channels,
                stride_x_outer, stride_x_c, stride_x_inner, BLOCK_N, BLOCK_S, BLOCK_C, X_ALIGN,
            )
            x = tl.load(x_ptr + x_offsets, mask=in_bounds, other=0.0).to(mean.dtype)
            dx = batch_stats_grad_input(
                dy, (x - mean) * invstd, scale, sum_dy, sum_dy_xhat, n_per_channel
            )
        else:
            dx = dy * scale
        tl.store(dx_ptr + dy_offsets, dx, mask=in_bounds)
        if WRITE_GRAD_RESIDUAL:
            tl.store(grad_residual_ptr + dy_offsets, dy, mask=in_bounds)


@triton.jit
def load_channel_terms(weight_ptr, mean_ptr, invstd_ptr, channels, channel_mask,
                       HAS_WEIGHT: tl.constexpr):
    """mean, invstd and scale = invstd * weight of the given channels, in the statistics' dtype."""
    mean = tl.load(mean_ptr + channels, mask=channel_mask, other=0.0)
    invstd = tl.load(invstd_ptr + channels, mask=channel_mask, other=0.0)
    weight, _ = load_affine(
        weight_ptr, weight_ptr, channels, channel_mask, HAS_WEIGHT, False, mean_ptr.dtype.element_ty
    )
    return mean, invstd, invstd * weight


@triton.jit
def whole_channel_backward_kernel(
    dy_ptr, mask_ptr, x_ptr, dx_ptr, grad_residual_ptr, weight_ptr, mean_ptr, invstd_ptr,
    grad_weight_ptr, grad_bias_ptr,
    n_outer, n_inner, num_channels, n_per_channel,
    stride_dy_outer, stride_dy_c, stride_dy_inner,
    stride_m_outer, stride_m_c, stride_m_byte,
    stride_x_outer, stride_x_c, stride_x_inner,
    tiles_inner, num_tiles,
    HAS_WEIGHT: tl.constexpr, BATCH_STATS: tl.constexpr, RELU: tl.constexpr,
    WRITE_GRAD_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """One program computes all gradients of BLOCK_C whole channels: the sums, then grad_input."""
    first_tile = tl.program_id(1)  # always 0: the grid has a single split
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    mean, invstd, scale = load_channel_terms(
        weight_ptr, mean_ptr, invstd_ptr, channels, channel_mask, HAS_WEIGHT
    )
    sum_dy, sum_dy_xhat = gradient_sums(
        dy_ptr, mask_ptr, x_ptr, channels, first_tile, num_tiles, tiles_inner, mean, invstd,
        n_outer, n_inner, num_channels,
        stride_dy_outer, stride_dy_c, stride_dy_inner,
        stride_m_outer, stride_m_c, stride_m_byte,
        stride_x_outer, stride_x_c, stride_x_inner, RELU, BLOCK_N, BLOCK_S, BLOCK_C,
        X_ALIGN, Y_ALIGN, M_ALIGN,
    )
    tl.store(grad_bias_ptr + channels, sum_dy, mask=channel_mask)
    tl.store(grad_weight_ptr + channels, sum_dy_xhat, mask=channel_mask)
    grad_input_tiles(
        dy_ptr, mask_ptr, x_ptr, dx_ptr, grad_residual_ptr, channels, first_tile, num_tiles,
        tiles_inner,
        mean, invstd, scale, sum_dy, sum_dy_xhat, n_per_channel, n_outer, n_inner, num_channels,
        stride_dy_outer, stride_dy_c, stride_dy_inner,
        stride_m_outer, stride_m_c, stride_m_byte,
        stride_x_outer, stride_x_c, stride_x_inner,
        BATCH_STATS, RELU, WRITE_GRAD_RESIDUAL, BLOCK_N, BLOCK_S, BLOCK_C,
        X_ALIGN, Y_ALIGN, M_ALIGN,
    )


@triton.jit
def merge_sums(partial_ptr, channels, channel_mask, num_splits, num_channels,
               BLOCK_SPLITS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-channel totals of the per-split sums of dy and dy * xhat in partial.

    BLOCK_SPLITS splits at a time in a fixed order, each row of the [BLOCK_SPLITS, BLOCK_C] block
    adding up its own splits (r, r + BLOCK_SPLITS, ...); the rows are added once at the end. The
    loads bypass L1 (.cg): other programs of the same launch stored the partials (see tickets.py).
    """
    sum_dy = tl.zeros([BLOCK_SPLITS, BLOCK_C], partial_ptr.dtype.element_ty)
    sum_dy_xhat = tl.zeros([BLOCK_SPLITS, BLOCK_C], partial_ptr.dtype.element_ty)
    for start in range(0, num_splits, BLOCK_SPLITS):
        splits = start + tl.arange(0, BLOCK_SPLITS)[:, None]
        in_bounds = (splits < num_splits) & channel_mask[None, :]
        part = partial_ptr + splits * num_channels + channels[None, :]
        sum_dy += tl.load(part, mask=in_bounds, other=0.0, cache_modifier=".cg")
        sum_dy_xhat += tl.load(
            part + num_splits * num_channels, mask=in_bounds, other=0.0, cache_modifier=".cg"
        )
    return tl.sum(sum_dy, axis=0), tl.sum(sum_dy_xhat, axis=0)


@triton.jit
def partial_sums_kernel(
    arrivals_ptr, dy_ptr, mask_ptr, x_ptr, mean_ptr, invstd_ptr, partial_ptr,
    sum_dy_ptr, sum_dy_xhat_ptr,
    n_outer, n_inner, num_channels,
    stride_dy_outer, stride_dy_c, stride_dy_inner,
    stride_m_outer, stride_m_c, stride_m_byte,
    stride_x_outer, stride_x_c, stride_x_inner,
    tiles_inner, num_tiles, tiles_per_split,
    RELU: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """Program (channel block, split) sums dy and dy * xhat over its tiles into partial[:, split].

    The channel block's last program to store its sums (arrivals_ptr holds a ticket counter per
    channel block, see tickets.py) adds all splits' sums in split order into sum_dy and
    sum_dy_xhat: this call's grad_bias and grad_weight.
    """
    split = tl.program_id(1)
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    mean = tl.load(mean_ptr + channels, mask=channel_mask, other=0.0)
    invstd = tl.load(invstd_ptr + channels, mask=channel_mask, other=0.0)
    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, num_tiles)
    sum_dy, sum_dy_xhat = gradient_sums(
        dy_ptr, mask_ptr, x_ptr, channels, first_tile, last_tile, tiles_inner, mean, invstd,
        n_outer, n_inner, num_channels,
        stride_dy_outer, stride_dy_c, stride_dy_inner,
        stride_m_outer, stride_m_c, stride_m_byte,
        stride_x_outer, stride_x_c, stride_x_inner, RELU, BLOCK_N, BLOCK_S, BLOCK_C,
        X_ALIGN, Y_ALIGN, M_ALIGN,
    )
    num_splits = tl.num_programs(1)
    out = partial_ptr + split * num_channels + channels
    tl.store(out, sum_dy, mask=channel_mask)
    tl.store(out + num_splits * num_channels, sum_dy_xhat, mask=channel_mask)
    if last_to_arrive(arrivals_ptr + tl.program_id(0), num_splits):
        # [splits, channels] blocks of a quarter of the loop's [N, S, C] tile, as in the forward.
        sum_dy, sum_dy_xhat = merge_sums(
            partial_ptr, channels, channel_mask, num_splits, num_channels,
            (BLOCK_N * BLOCK_S + 3) // 4, BLOCK_C,
        )
        tl.store(sum_dy_ptr + channels, sum_dy, mask=channel_mask)
        tl.store(sum_dy_xhat_ptr + channels, sum_dy_xhat, mask=channel_mask)


@triton.jit
def grad_input_kernel(
    dy_ptr, mask_ptr, x_ptr, dx_ptr, grad_residual_ptr, weight_ptr, mean_ptr, invstd_ptr,
    sum_dy_ptr, sum_dy_xhat_ptr,
    n_outer, n_inner, num_channels, n_per_channel,
    stride_dy_outer, stride_dy_c, stride_dy_inner,
    stride_m_outer, stride_m_c, stride_m_byte,
    stride_x_outer, stride_x_c, stride_x_inner,
    tiles_inner, num_tiles, tiles_per_split,
    HAS_WEIGHT: tl.constexpr, BATCH_STATS: tl.constexpr, RELU: tl.constexpr,
    WRITE_GRAD_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """Program (channel block, split) writes grad_input on its tiles from the finished sums.

    The sums of dy and dy * xhat per channel are over the whole batch: this call's, or with
    synchronized BatchNorm those of every process. n_per_channel counts the same elements.
    """
    split = tl.program_id(1)
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    mean, invstd, scale = load_channel_terms(
        weight_ptr, mean_ptr, invstd_ptr, channels, channel_mask, HAS_WEIGHT
    )
    # In eval mode these sums are never used, and the launcher may not have computed them.
    sum_dy = tl.load(sum_dy_ptr + channels, mask=channel_mask, other=0.0)
    sum_dy_xhat = tl.load(sum_dy_xhat_ptr + channels, mask=channel_mask, other=0.0)
    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, num_tiles)
    grad_input_tiles(
        dy_ptr, mask_ptr, x_ptr, dx_ptr, grad_residual_ptr, channels, first_tile, last_tile,
        tiles_inner, mean, invstd, scale, sum_dy, sum_dy_xhat, n_per_channel,
        n_outer, n_inner, num_channels,
        stride_dy_outer, stride_dy_c, stride_dy_inner,
        stride_m_outer, stride_m_c, stride_m_byte,
        stride_x_outer, stride_x_c, stride_x_inner,
        BATCH_STATS, RELU, WRITE_GRAD_RESIDUAL, BLOCK_N, BLOCK_S, BLOCK_C,
        X_ALIGN, Y_ALIGN, M_ALIGN,
    )


# One launcher per kernel: each launch after a specialisation's first skips Triton's binding.
launch_whole_channel_backward = KernelLauncher(whole_channel_backward_kernel)
launch_partial_sums = KernelLauncher(partial_sums_kernel)
launch_grad_input = KernelLauncher(grad_input_kernel)


def allocate_backward_outputs(
    x: Tensor, view: ChannelView, write_grad_residual: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Uninitialised (grad_input, grad_weight, grad_bias, grad_residual) for the folded input ``x``.

    grad_input and grad_residual are laid out like x (grad_residual is None unless
    ``write_grad_residual``); grad_weight and grad_bias are in the statistics' dtype.
    """
    grad_weight = torch.empty(view.num_channels, dtype=accumulator_dtype(x.dtype), device=x.device)
    grad_residual = torch.empty_like(x) if write_grad_residual else None
    return torch.empty_like(x), grad_weight, torch.empty_like(grad_weight), grad_residual


def batch_norm_backward(
    dy: Tensor,
    x: Tensor,
    plan: Plan,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    use_batch_stats: bool,
    need_param_grads: bool,
    relu_mask: Tensor | None = None,
    write_grad_residual: bool = False,
    combine_sums: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the backward pass; returns (grad_input, grad_weight, grad_bias, grad_residual).

    ``x`` and ``plan`` are the forward's (plan_batch_norm's folded input and its plan).
    grad_weight and grad_bias are in the statistics' dtype (float32 or float64) and are only
    computed when ``use_batch_stats`` or ``need_param_grads`` (otherwise they hold garbage).
    ``relu_mask`` is the forward's packed mask when a ReLU was fused; then ``write_grad_residual``
    also returns the masked dy, the gradient of a fused residual (else grad_residual is None).

    ``combine_sums`` (synchronized BatchNorm) takes this call's [2, C] sums of (dy, dy * xhat) and
    returns the whole batch's means of them (its sums over its element count, on the device);
    grad_input then follows the whole batch's statistics, while grad_weight and grad_bias stay this
    call's own, as in torch.
    """
    relu = relu_mask is not None
    view, launch = plan.view, plan.launch
    write_grad_residual = write_grad_residual and relu
    dx, grad_weight, grad_bias, grad_residual = allocate_backward_outputs(x, view, write_grad_residual)
    if plan.empty:
        return dx, grad_weight.zero_(), grad_bias.zero_(), grad_residual
    need_sums = use_batch_stats or need_param_grads

    x_strides = plan.x_strides
    dy_strides = plan.y_strides  # grad_input's, which dy is made to share
    if dy.stride() != plan.y_stride:
        dy = conform(dy, dx, view, dy_strides)
    mask_arg = relu_mask if relu else mean
    mask_strides = plan.mask_strides
    dr_arg = grad_residual if write_grad_residual else dx
    weight_arg = mean if weight is None else weight
    tensor_args = (dy, mask_arg, x, dx, dr_arg, weight_arg, mean, invstd)
    stride_args = (*dy_strides, *mask_strides, *x_strides)
    flags = {
        "HAS_WEIGHT": weight is not None, "BATCH_STATS": use_batch_stats, "RELU": relu,
        "WRITE_GRAD_RESIDUAL": write_grad_residual, **plan.tile_constexprs,
    }

    if need_sums and launch.whole_channel and combine_sums is None:
        launch_whole_channel_backward(
            (launch.channel_blocks, 1),
            *tensor_args, grad_weight, grad_bias,
            view.n_outer, view.n_inner, view.num_channels, view.n_per_channel,
            *stride_args, launch.tiles_inner, launch.num_tiles, **flags,
        )
        return dx, grad_weight, grad_bias, grad_residual

    grid = (launch.channel_blocks, launch.num_splits)
    tiling = (launch.tiles_inner, launch.num_tiles, launch.tiles_per_split)
    if need_sums:
        partial = torch.empty(
            (2, launch.num_splits, view.num_channels), dtype=grad_weight.dtype, device=x.device
        )
        launch_with_arrivals(
            launch_partial_sums, grid, x.device, dy, mask_arg, x, mean, invstd, partial,
            grad_bias, grad_weight, view.n_outer, view.n_inner, view.num_channels,
            *dy_strides, *mask_strides, *x_strides, *tiling,
            RELU=relu, **plan.tile_constexprs,
        )
    # grad_bias and grad_weight hold this call's sums of dy and dy * xhat (garbage without
    # need_sums, when grad_input_kernel does not read them: no batch statistics).
    sum_dy, sum_dy_xhat, n_per_channel = grad_bias, grad_weight, view.n_per_channel
    if combine_sums is not None:  # the whole batch's means: its sums over a count of 1
        (sum_dy, sum_dy_xhat), n_per_channel = combine_sums(torch.stack([grad_bias, grad_weight])), 1
    launch_grad_input(
        grid, *tensor_args, sum_dy, sum_dy_xhat,
        view.n_outer, view.n_inner, view.num_channels, n_per_channel,
        *stride_args, *tiling, **flags,
    )
    return dx, grad_weight, grad_bias, grad_residual
