"""BatchNorm backward kernels and their launcher.

With xhat = (x - mean) * invstd and n elements per channel, the gradients are

    grad_bias   = sum(dy)
    grad_weight = sum(dy * xhat)
    grad_input  = weight * invstd * (dy - grad_bias / n - xhat * grad_weight / n)   (batch stats)
    grad_input  = weight * invstd * dy                                               (running stats)

Single-pass path: single_pass_backward_kernel reads x and dy once per channel block.
Split path: partial_sums_kernel sums each split's tiles, finalize_sums_kernel adds the splits in a
fixed order (no atomics), grad_input_kernel writes grad_input.
"""

import torch
import triton
import triton.language as tl
from fusedbn.kernels.layout import accumulator_dtype, choose_launch, strided_views
from fusedbn.kernels.tiles import channel_block, sum_over_tile, tile_offsets
from torch import Tensor


@triton.jit
def batch_stats_grad_input(dy, xhat, scale, sum_dy, sum_dy_xhat, n_per_channel):
    """grad_input of a tile normalised with batch statistics; per-channel terms are [1, 1, C]."""
    return (dy - sum_dy / n_per_channel - xhat * (sum_dy_xhat / n_per_channel)) * scale


@triton.jit
def single_pass_backward_kernel(
    dy_ptr,
    x_ptr,
    dx_ptr,
    weight_ptr,
    mean_ptr,
    invstd_ptr,
    grad_weight_ptr,
    grad_bias_ptr,
    n_outer,
    n_inner,
    num_channels,
    n_per_channel,
    stride_dy_outer,
    stride_dy_c,
    stride_dy_inner,
    stride_x_outer,
    stride_x_c,
    stride_x_inner,
    stride_dx_outer,
    stride_dx_c,
    stride_dx_inner,
    HAS_WEIGHT: tl.constexpr,
    BATCH_STATS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program computes all gradients of BLOCK_C channels whose reduction fits in one tile."""
    acc_dtype = mean_ptr.dtype.element_ty
    tile = tl.program_id(1)  # always 0: the single-pass grid has one split of one tile
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    mean = tl.load(mean_ptr + channels, mask=channel_mask, other=0.0)
    invstd = tl.load(invstd_ptr + channels, mask=channel_mask, other=0.0)

    dy_offsets, mask = tile_offsets(
        tile,
        1,
        channels,
        n_outer,
        n_inner,
        num_channels,
        stride_dy_outer,
        stride_dy_c,
        stride_dy_inner,
        BLOCK_N,
        BLOCK_S,
        BLOCK_C,
    )
    x_offsets, _ = tile_offsets(
        tile,
        1,
        channels,
        n_outer,
        n_inner,
        num_channels,
        stride_x_outer,
        stride_x_c,
        stride_x_inner,
        BLOCK_N,
        BLOCK_S,
        BLOCK_C,
    )
    dy = tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(acc_dtype)
    x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(acc_dtype)
    xhat = tl.where(mask, (x - mean[None, None, :]) * invstd[None, None, :], 0.0)
    sum_dy = sum_over_tile(dy)
    sum_dy_xhat = sum_over_tile(dy * xhat)
    tl.store(grad_bias_ptr + channels, sum_dy, mask=channel_mask)
    tl.store(grad_weight_ptr + channels, sum_dy_xhat, mask=channel_mask)

    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + channels, mask=channel_mask, other=0.0).to(acc_dtype)
    else:
        weight = tl.full([BLOCK_C], 1.0, acc_dtype)
    scale = (invstd * weight)[None, None, :]
    if BATCH_STATS:
        dx = batch_stats_grad_input(
            dy, xhat, scale, sum_dy[None, None, :], sum_dy_xhat[None, None, :], n_per_channel
        )
    else:
        dx = dy * scale
    dx_offsets, _ = tile_offsets(
        tile,
        1,
        channels,
        n_outer,
        n_inner,
        num_channels,
        stride_dx_outer,
        stride_dx_c,
        stride_dx_inner,
        BLOCK_N,
        BLOCK_S,
        BLOCK_C,
    )
    tl.store(dx_ptr + dx_offsets, dx, mask=mask)


@triton.jit
def partial_sums_kernel(
    dy_ptr,
    x_ptr,
    mean_ptr,
    invstd_ptr,
    partial_ptr,
    n_outer,
    n_inner,
    num_channels,
    stride_dy_outer,
    stride_dy_c,
    stride_dy_inner,
    stride_x_outer,
    stride_x_c,
    stride_x_inner,
    tiles_inner,
    num_tiles,
    tiles_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (channel block, split) sums dy and dy * xhat over its tiles into partial[0..1, split]."""
    acc_dtype = mean_ptr.dtype.element_ty
    split = tl.program_id(1)
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    mean = tl.load(mean_ptr + channels, mask=channel_mask, other=0.0)[None, None, :]
    invstd = tl.load(invstd_ptr + channels, mask=channel_mask, other=0.0)[None, None, :]
    sum_dy = tl.zeros([BLOCK_C], acc_dtype)
    sum_dy_xhat = tl.zeros([BLOCK_C], acc_dtype)
    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, num_tiles)
    for tile in range(first_tile, last_tile):
        dy_offsets, mask = tile_offsets(
            tile,
            tiles_inner,
            channels,
            n_outer,
            n_inner,
            num_channels,
            stride_dy_outer,
            stride_dy_c,
            stride_dy_inner,
            BLOCK_N,
            BLOCK_S,
            BLOCK_C,
        )
        x_offsets, _ = tile_offsets(
            tile,
            tiles_inner,
            channels,
            n_outer,
            n_inner,
            num_channels,
            stride_x_outer,
            stride_x_c,
            stride_x_inner,
            BLOCK_N,
            BLOCK_S,
            BLOCK_C,
        )
        dy = tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(acc_dtype)
        x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(acc_dtype)
        xhat = tl.where(mask, (x - mean) * invstd, 0.0)
        sum_dy += sum_over_tile(dy)
        sum_dy_xhat += sum_over_tile(dy * xhat)

    num_splits = tl.num_programs(1)
    out = partial_ptr + split * num_channels + channels
    tl.store(out, sum_dy, mask=channel_mask)
    tl.store(out + num_splits * num_channels, sum_dy_xhat, mask=channel_mask)


@triton.jit
def finalize_sums_kernel(
    partial_ptr,
    grad_weight_ptr,
    grad_bias_ptr,
    num_splits,
    num_channels,
    BLOCK_C: tl.constexpr,
):
    """One program adds the per-split sums of BLOCK_C channels, in split order."""
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    sum_dy = tl.zeros([BLOCK_C], grad_bias_ptr.dtype.element_ty)
    sum_dy_xhat = tl.zeros([BLOCK_C], grad_weight_ptr.dtype.element_ty)
    for split in range(num_splits):
        part = partial_ptr + split * num_channels + channels
        sum_dy += tl.load(part, mask=channel_mask, other=0.0)
        sum_dy_xhat += tl.load(part + num_splits * num_channels, mask=channel_mask, other=0.0)
    tl.store(grad_bias_ptr + channels, sum_dy, mask=channel_mask)
    tl.store(grad_weight_ptr + channels, sum_dy_xhat, mask=channel_mask)


@triton.jit
def grad_input_kernel(
    dy_ptr,
    x_ptr,
    dx_ptr,
    weight_ptr,
    mean_ptr,
    invstd_ptr,
    grad_weight_ptr,
    grad_bias_ptr,
    n_outer,
    n_inner,
    num_channels,
    n_per_channel,
    stride_dy_outer,
    stride_dy_c,
    stride_dy_inner,
    stride_x_outer,
    stride_x_c,
    stride_x_inner,
    stride_dx_outer,
    stride_dx_c,
    stride_dx_inner,
    tiles_inner,
    num_tiles,
    tiles_per_split,
    HAS_WEIGHT: tl.constexpr,
    BATCH_STATS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (channel block, split) writes grad_input on its tiles from the finished sums.

    Without BATCH_STATS (eval mode) grad_input needs only dy, so x and the sums are not read.
    """
    acc_dtype = mean_ptr.dtype.element_ty
    split = tl.program_id(1)
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    mean = tl.load(mean_ptr + channels, mask=channel_mask, other=0.0)[None, None, :]
    invstd = tl.load(invstd_ptr + channels, mask=channel_mask, other=0.0)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + channels, mask=channel_mask, other=0.0).to(acc_dtype)
    else:
        weight = tl.full([BLOCK_C], 1.0, acc_dtype)
    scale = (invstd * weight)[None, None, :]
    invstd = invstd[None, None, :]
    # In eval mode these sums are never used, and the launcher may not have computed them.
    sum_dy = tl.load(grad_bias_ptr + channels, mask=channel_mask, other=0.0)[None, None, :]
    sum_dy_xhat = tl.load(grad_weight_ptr + channels, mask=channel_mask, other=0.0)[None, None, :]

    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, num_tiles)
    for tile in range(first_tile, last_tile):
        dy_offsets, mask = tile_offsets(
            tile,
            tiles_inner,
            channels,
            n_outer,
            n_inner,
            num_channels,
            stride_dy_outer,
            stride_dy_c,
            stride_dy_inner,
            BLOCK_N,
            BLOCK_S,
            BLOCK_C,
        )
        dx_offsets, _ = tile_offsets(
            tile,
            tiles_inner,
            channels,
            n_outer,
            n_inner,
            num_channels,
            stride_dx_outer,
            stride_dx_c,
            stride_dx_inner,
            BLOCK_N,
            BLOCK_S,
            BLOCK_C,
        )
        dy = tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(acc_dtype)
        if BATCH_STATS:
            x_offsets, _ = tile_offsets(
                tile,
                tiles_inner,
                channels,
                n_outer,
                n_inner,
                num_channels,
                stride_x_outer,
                stride_x_c,
                stride_x_inner,
                BLOCK_N,
                BLOCK_S,
                BLOCK_C,
            )
            x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(acc_dtype)
            dx = batch_stats_grad_input(
                dy, (x - mean) * invstd, scale, sum_dy, sum_dy_xhat, n_per_channel
            )
        else:
            dx = dy * scale
        tl.store(dx_ptr + dx_offsets, dx, mask=mask)


def batch_norm_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    use_batch_stats: bool,
    need_param_grads: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the backward pass; returns (grad_input, grad_weight, grad_bias).

    grad_weight and grad_bias are in the statistics' dtype (float32 or float64) and are only
    computed when ``use_batch_stats`` or ``need_param_grads`` (otherwise they hold garbage).
    """
    dx = torch.empty_like(x)
    (x, dy, dx), view = strided_views(x, dy, dx)
    x_strides, dy_strides, dx_strides = view.strides
    grad_weight = torch.empty(view.num_channels, dtype=accumulator_dtype(x.dtype), device=x.device)
    grad_bias = torch.empty_like(grad_weight)
    if x.numel() == 0:
        return dx, grad_weight.zero_(), grad_bias.zero_()
    launch = choose_launch(view, x.device)
    weight_arg = mean if weight is None else weight
    need_sums = use_batch_stats or need_param_grads
    common = dict(
        HAS_WEIGHT=weight is not None,
        BATCH_STATS=use_batch_stats,
        BLOCK_N=launch.block_n,
        BLOCK_S=launch.block_s,
        BLOCK_C=launch.block_c,
        num_warps=launch.num_warps,
    )

    if need_sums and launch.single_pass:
        single_pass_backward_kernel[(launch.channel_blocks, 1)](
            dy,
            x,
            dx,
            weight_arg,
            mean,
            invstd,
            grad_weight,
            grad_bias,
            view.n_outer,
            view.n_inner,
            view.num_channels,
            view.n_per_channel,
            *dy_strides,
            *x_strides,
            *dx_strides,
            **common,
        )
        return dx, grad_weight, grad_bias

    grid = (launch.channel_blocks, launch.num_splits)
    if need_sums:
        partial = torch.empty(
            (2, launch.num_splits, view.num_channels), dtype=grad_weight.dtype, device=x.device
        )
        partial_sums_kernel[grid](
            dy,
            x,
            mean,
            invstd,
            partial,
            view.n_outer,
            view.n_inner,
            view.num_channels,
            *dy_strides,
            *x_strides,
            launch.tiles_inner,
            launch.num_tiles,
            launch.tiles_per_split,
            BLOCK_N=launch.block_n,
            BLOCK_S=launch.block_s,
            BLOCK_C=launch.block_c,
            num_warps=launch.num_warps,
        )
        finalize_sums_kernel[(launch.channel_blocks,)](
            partial,
            grad_weight,
            grad_bias,
            launch.num_splits,
            view.num_channels,
            BLOCK_C=launch.block_c,
        )
    grad_input_kernel[grid](
        dy,
        x,
        dx,
        weight_arg,
        mean,
        invstd,
        grad_weight,
        grad_bias,
        view.n_outer,
        view.n_inner,
        view.num_channels,
        view.n_per_channel,
        *dy_strides,
        *x_strides,
        *dx_strides,
        launch.tiles_inner,
        launch.num_tiles,
        launch.tiles_per_split,
        **common,
    )
    return dx, grad_weight, grad_bias
