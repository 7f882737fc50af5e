"""BatchNorm forward kernels and their host launcher.

Training, when there are enough channel blocks to fill the GPU or a channel fits one tile
(whole-channel path): whole_channel_forward_kernel gives each program whole channels; it reads them
once for the statistics and again, from cache, to write y. One launch.
Training otherwise (split path), two launches:
    partial_moments_kernel   each program summarises its share of tiles (count, mean, M2); the last
                             program of each channel block to finish (an atomic ticket, tickets.py)
                             merges the shares in a fixed split order and stores the statistics;
    apply_kernel             normalises x with the finished statistics.
The merge order never depends on which program finishes last, so results are bitwise reproducible.
Synchronized BatchNorm merges its partials into one summary per process (finalize_moments_kernel),
gathers every process's, and merges those (finalize_moments_kernel again) before apply_kernel.
Eval with running statistics: apply_kernel alone, one elementwise pass.

Both kernels that write y can finish with an epilogue: y = relu(bn(x) + residual), with the
residual and the ReLU each optional. The ReLU stores a packed one-bit mask of y > 0 for backward.

Strides: x is read through its own (stride_x_*), since a strided view of x is read in place; y is
allocated with torch.empty_like(x), and a residual is laid out like y (conform() copies one that is
not), so y and the residual share one triple (stride_y_*); the packed mask has its own (stride_m_*).
Every kernel that reads tiles takes the plan's tile constexprs (Plan.tile_constexprs): the tile's
BLOCK_N, BLOCK_S, BLOCK_C and the alignment of the tiles of x, y and the mask (their rows start at
multiples of X_ALIGN, Y_ALIGN and M_ALIGN elements, see tiles.tile_offsets).
"""

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from fusedbn.kernels.call import BatchNormOptions
from fusedbn.kernels.launcher import KernelLauncher
from fusedbn.kernels.layout import (
    FINALIZE_BLOCK_C,
    ChannelView,
    Plan,
    accumulator_dtype,
    conform,
    finalize_block_splits,
    finalize_grid,
    relu_mask_like,
)
from fusedbn.kernels.tickets import last_to_arrive, launch_with_arrivals
from fusedbn.kernels.tiles import (
    channel_block,
    inverse_std,
    load_affine,
    pack_bits,
    store_statistics,
    sum_over_tile,
    tile_count,
    tile_offsets,
)


@triton.jit
def store_output(
    y, y_ptr, residual_ptr, mask_ptr, y_offsets, in_bounds, tile, tiles_inner, channels,
    n_outer, n_inner, num_channels,
    stride_m_outer, stride_m_c, stride_m_byte,
    HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """Apply the epilogue to the normalised tile ``y`` and store it (and the ReLU mask).

    ``y_offsets`` and ``in_bounds`` address the tile in y and in the residual, which shares y's
    strides.
    """
    if HAS_RESIDUAL:
        y += tl.load(residual_ptr + y_offsets, mask=in_bounds, other=0.0).to(y.dtype)
    if RELU:
        # The mask is taken after rounding to the output dtype, as torch's ReLU backward sees it.
        # (Compared in float32: Triton's interpreter compares bfloat16 as raw bits.) Like torch's
        # ReLU, NaN passes through, and so does its gradient: the mask is "not y <= 0".
        rounded = y.to(y_ptr.dtype.element_ty).to(tl.float32)
        positive = (rounded > 0) | (rounded != rounded)
        y = tl.where(positive, y, 0.0)
        m_offsets, m_bounds = tile_offsets(
            tile, tiles_inner, channels, n_outer, (n_inner + 7) // 8, num_channels,
            stride_m_outer, stride_m_c, stride_m_byte, BLOCK_N, BLOCK_S // 8, BLOCK_C, M_ALIGN,
        )
        tl.store(mask_ptr + m_offsets, pack_bits(positive, BLOCK_N, BLOCK_S, BLOCK_C), mask=m_bounds)
    tl.store(y_ptr + y_offsets, y, mask=in_bounds)


@triton.jit
def shifted_moments(
    x_ptr, stats_ptr, channels, first_tile, last_tile, tiles_inner, n_outer, n_inner, num_channels,
    stride_x_outer, stride_x_c, stride_x_inner,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, X_ALIGN: tl.constexpr,
):
    """(count, shift, mean - shift, M2) per channel of tiles [first_tile, last_tile) of x.

    In stats_ptr's dtype. The mean is returned as the shift plus a small deviation, so that merging
    several such summaries keeps the deviation's precision (see merge_moments).

    Sums are taken of x - shift, where the shift is the mean of the first tile, so the squares are
    of the order of the variance and offset data such as 1000 + randn keeps its precision. Each
    thread accumulates its own tile positions across tiles; the tile is reduced once, at the end.
    """
    offsets, in_bounds = tile_offsets(
        first_tile, tiles_inner, channels, n_outer, n_inner, num_channels,
        stride_x_outer, stride_x_c, stride_x_inner, BLOCK_N, BLOCK_S, BLOCK_C, X_ALIGN,
    )
    acc_dtype = stats_ptr.dtype.element_ty
    x = tl.load(x_ptr + offsets, mask=in_bounds, other=0.0).to(acc_dtype)
    count = tile_count(first_tile, tiles_inner, n_outer, n_inner, BLOCK_N, BLOCK_S)
    shift = sum_over_tile(x) / count
    deviation = tl.where(in_bounds, x - shift[None, None, :], 0.0)
    sum_dev = deviation
    sum_dev2 = deviation * deviation
    for tile in range(first_tile + 1, last_tile):
        offsets, in_bounds = tile_offsets(
            tile, tiles_inner, channels, n_outer, n_inner, num_channels,
            stride_x_outer, stride_x_c, stride_x_inner, BLOCK_N, BLOCK_S, BLOCK_C, X_ALIGN,
        )
        x = tl.load(x_ptr + offsets, mask=in_bounds, other=0.0).to(acc_dtype)
        deviation = tl.where(in_bounds, x - shift[None, None, :], 0.0)
        sum_dev += deviation
        sum_dev2 += deviation * deviation
        count += tile_count(tile, tiles_inner, n_outer, n_inner, BLOCK_N, BLOCK_S)

    n = count.to(acc_dtype)
    total_dev = sum_over_tile(sum_dev)
    # Rounding can leave M2 slightly negative; the clamp keeps NaN, so a NaN channel stays NaN.
    m2 = tl.maximum(
        sum_over_tile(sum_dev2) - total_dev * total_dev / n, 0.0, propagate_nan=tl.PropagateNan.ALL
    )
    return n, shift, total_dev / n, m2


@triton.jit
def normalize_tiles(
    x_ptr, y_ptr, residual_ptr, mask_ptr, channels, first_tile, last_tile, tiles_inner,
    mean, scale, bias, n_outer, n_inner, num_channels,
    stride_x_outer, stride_x_c, stride_x_inner,
    stride_y_outer, stride_y_c, stride_y_inner,
    stride_m_outer, stride_m_c, stride_m_byte,
    HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """Write y = (x - mean) * scale + bias, then the epilogue, on tiles [first_tile, last_tile)."""
    mean = mean[None, None, :]
    scale = scale[None, None, :]
    bias = bias[None, None, :]
    for tile in range(first_tile, last_tile):
        x_offsets, in_bounds = tile_offsets(
            tile, tiles_inner, channels, n_outer, n_inner, num_channels,
            stride_x_outer, stride_x_c, stride_x_inner, BLOCK_N, BLOCK_S, BLOCK_C, X_ALIGN,
        )
        x = tl.load(x_ptr + x_offsets, mask=in_bounds, other=0.0).to(mean.dtype)
        y_offsets, _ = tile_offsets(
            tile, tiles_inner, channels, n_outer, n_inner, num_channels,
            stride_y_outer, stride_y_c, stride_y_inner, BLOCK_N, BLOCK_S, BLOCK_C, Y_ALIGN,
        )
        store_output(
            (x - mean) * scale + bias, y_ptr, residual_ptr, mask_ptr, y_offsets, in_bounds,
            tile, tiles_inner, channels, n_outer, n_inner, num_channels,
            stride_m_outer, stride_m_c, stride_m_byte,
            HAS_RESIDUAL, RELU, BLOCK_N, BLOCK_S, BLOCK_C, M_ALIGN,
        )


@triton.jit
def whole_channel_forward_kernel(
    x_ptr, y_ptr, residual_ptr, mask_ptr, weight_ptr, bias_ptr, mean_ptr, invstd_ptr,
    running_mean_ptr, running_var_ptr, num_batches_tracked_ptr,
    n_outer, n_inner, num_channels, n_per_channel,
    stride_x_outer, stride_x_c, stride_x_inner,
    stride_y_outer, stride_y_c, stride_y_inner,
    stride_m_outer, stride_m_c, stride_m_byte,
    tiles_inner, num_tiles, momentum: tl.float64, eps: tl.float64,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr, UPDATE_RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """One program normalises BLOCK_C whole channels: statistics over all tiles, then y."""
    acc_dtype = mean_ptr.dtype.element_ty
    first_tile = tl.program_id(1)  # always 0: the grid has a single split
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    _, shift, mean_dev, m2 = shifted_moments(
        x_ptr, mean_ptr, channels, first_tile, num_tiles, tiles_inner, n_outer, n_inner,
        num_channels, stride_x_outer, stride_x_c, stride_x_inner, BLOCK_N, BLOCK_S, BLOCK_C, X_ALIGN,
    )
    mean = shift + mean_dev
    invstd = store_statistics(
        channels, channel_mask, mean, m2 / n_per_channel, n_per_channel, eps, momentum,
        mean_ptr, invstd_ptr, running_mean_ptr, running_var_ptr, num_batches_tracked_ptr,
        UPDATE_RUNNING, CUMULATIVE,
    )
    weight, bias = load_affine(
        weight_ptr, bias_ptr, channels, channel_mask, HAS_WEIGHT, HAS_BIAS, acc_dtype
    )
    normalize_tiles(
        x_ptr, y_ptr, residual_ptr, mask_ptr, channels, first_tile, num_tiles, tiles_inner,
        mean, invstd * weight, bias, n_outer, n_inner, num_channels,
        stride_x_outer, stride_x_c, stride_x_inner,
        stride_y_outer, stride_y_c, stride_y_inner,
        stride_m_outer, stride_m_c, stride_m_byte,
        HAS_RESIDUAL, RELU, BLOCK_N, BLOCK_S, BLOCK_C, X_ALIGN, Y_ALIGN, M_ALIGN,
    )


@triton.jit
def chan_merge(n_a, dev_a, m2_a, n_b, dev_b, m2_b):
    """Two (count, mean deviation from a common shift, M2) summaries of disjoint sets, merged as
    Chan et al. merge two halves (elementwise; empty summaries have count 0)."""
    n = n_a + n_b
    share_b = n_b / tl.maximum(n, 1.0)  # 0 / 1 when both are empty (and in the channels past C)
    delta = dev_b - dev_a
    return n, dev_a + delta * share_b, m2_a + m2_b + delta * delta * n_a * share_b


@triton.jit
def merge_moments(partial_ptr, channels, channel_mask, num_splits, num_channels,
                  BLOCK_SPLITS: tl.constexpr, BLOCK_C: tl.constexpr):
    """(count, mean, M2) per channel from the per-split (count, shift, mean - shift, M2) in partial.

    Every mean is taken relative to split 0's shift: dev_i = shift_i - shift_0 + (mean_i - shift_i)
    (differences of shifts are exact, so nothing of the order of the data's offset is ever added to
    a deviation). One pass over the splits, BLOCK_SPLITS at a time in a fixed order: each row of the
    [BLOCK_SPLITS, BLOCK_C] block keeps its own summary (splits r, r + BLOCK_SPLITS, ...) with
    chan_merge, so no iteration waits for a reduction across threads; the rows are merged once at
    the end, by a fixed reduction tree.

    The loads bypass L1 (.cg): other programs of the same launch stored the partials (tickets.py).
    """
    acc_dtype = partial_ptr.dtype.element_ty
    counts_ptr = partial_ptr + channels[None, :]
    shifts_ptr = counts_ptr + num_splits * num_channels
    mean_devs_ptr = shifts_ptr + num_splits * num_channels
    m2s_ptr = mean_devs_ptr + num_splits * num_channels
    shift0 = tl.load(
        partial_ptr + num_splits * num_channels + channels, mask=channel_mask, other=0.0,
        cache_modifier=".cg",
    )
    n = tl.zeros([BLOCK_SPLITS, BLOCK_C], acc_dtype)
    dev = tl.zeros([BLOCK_SPLITS, BLOCK_C], acc_dtype)
    m2 = tl.zeros([BLOCK_SPLITS, BLOCK_C], acc_dtype)
    for start in range(0, num_splits, BLOCK_SPLITS):
        splits = start + tl.arange(0, BLOCK_SPLITS)[:, None]
        in_bounds = (splits < num_splits) & channel_mask[None, :]
        rows = splits * num_channels
        count = tl.load(counts_ptr + rows, mask=in_bounds, other=0.0, cache_modifier=".cg")
        shift = tl.load(shifts_ptr + rows, mask=in_bounds, other=0.0, cache_modifier=".cg")
        mean_dev = tl.load(mean_devs_ptr + rows, mask=in_bounds, other=0.0, cache_modifier=".cg")
        split_m2 = tl.load(m2s_ptr + rows, mask=in_bounds, other=0.0, cache_modifier=".cg")
        n, dev, m2 = chan_merge(
            n, dev, m2, count, (shift - shift0[None, :]) + mean_dev, split_m2
        )
    n, dev, m2 = tl.reduce((n, dev, m2), 0, chan_merge)
    return n, shift0 + dev, m2


@triton.jit
def partial_moments_kernel(
    arrivals_ptr, x_ptr, partial_ptr, mean_ptr, invstd_ptr,
    running_mean_ptr, running_var_ptr, num_batches_tracked_ptr,
    n_outer, n_inner, num_channels, n_per_channel,
    stride_x_outer, stride_x_c, stride_x_inner,
    tiles_inner, num_tiles, tiles_per_split, momentum: tl.float64, eps: tl.float64,
    FINALIZE: tl.constexpr, UPDATE_RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """Program (channel block, split) summarises tiles [split * tiles_per_split, ...) of x.

    The summary lands in partial[0..3, split, channels] as (count, shift, mean - shift, M2). With
    FINALIZE, the channel block's last program to store its summary (arrivals_ptr holds a ticket
    counter per channel block, see tickets.py) merges all of them in split order and stores the
    statistics, as finalize_moments_kernel would. Without it (synchronized BatchNorm, whose
    partials are gathered from every process first) the partials are the only result.
    """
    split = tl.program_id(1)
    channels = channel_block(BLOCK_C)
    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, num_tiles)
    count, shift, mean_dev, m2 = shifted_moments(
        x_ptr, partial_ptr, channels, first_tile, last_tile, tiles_inner, n_outer, n_inner,
        num_channels, stride_x_outer, stride_x_c, stride_x_inner, BLOCK_N, BLOCK_S, BLOCK_C, X_ALIGN,
    )
    num_splits = tl.num_programs(1)
    out = partial_ptr + split * num_channels + channels
    channel_mask = channels < num_channels
    tl.store(out, tl.zeros([BLOCK_C], count.dtype) + count, mask=channel_mask)
    tl.store(out + num_splits * num_channels, shift, mask=channel_mask)
    tl.store(out + 2 * num_splits * num_channels, mean_dev, mask=channel_mask)
    tl.store(out + 3 * num_splits * num_channels, m2, mask=channel_mask)
    if FINALIZE:
        if last_to_arrive(arrivals_ptr + tl.program_id(0), num_splits):
            # [splits, channels] blocks of a quarter of the loop's [N, S, C] tile: the merge holds
            # three summaries and four partials per element, and so stays within its registers.
            _, mean, m2 = merge_moments(
                partial_ptr, channels, channel_mask, num_splits, num_channels,
                (BLOCK_N * BLOCK_S + 3) // 4, BLOCK_C,
            )
            store_statistics(
                channels, channel_mask, mean, m2 / n_per_channel, n_per_channel, eps, momentum,
                mean_ptr, invstd_ptr, running_mean_ptr, running_var_ptr, num_batches_tracked_ptr,
                UPDATE_RUNNING, CUMULATIVE,
            )


@triton.jit
def finalize_moments_kernel(
    partial_ptr, summary_ptr, mean_ptr, invstd_ptr, running_mean_ptr, running_var_ptr,
    num_batches_tracked_ptr, num_splits, num_channels, momentum: tl.float64, eps: tl.float64,
    SUMMARY: tl.constexpr, UPDATE_RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One program merges the per-split partials of BLOCK_C channels, in split order.

    Synchronized BatchNorm only. With SUMMARY it stores the merged (count, mean, 0, M2) as the one
    split of summary (this process's summary, which the processes gather); without, it stores the
    statistics of the gathered summaries. The element count is the merged one: no process needs
    another's batch size on the host.
    """
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    n, mean, m2 = merge_moments(
        partial_ptr, channels, channel_mask, num_splits, num_channels, BLOCK_SPLITS, BLOCK_C
    )
    if SUMMARY:
        tl.store(summary_ptr + channels, n, mask=channel_mask)
        tl.store(summary_ptr + num_channels + channels, mean, mask=channel_mask)
        tl.store(summary_ptr + 2 * num_channels + channels, tl.zeros_like(mean), mask=channel_mask)
        tl.store(summary_ptr + 3 * num_channels + channels, m2, mask=channel_mask)
    else:
        store_statistics(
            channels, channel_mask, mean, m2 / n, n, eps, momentum,
            mean_ptr, invstd_ptr, running_mean_ptr, running_var_ptr, num_batches_tracked_ptr,
            UPDATE_RUNNING, CUMULATIVE,
        )


@triton.jit
def apply_kernel(
    x_ptr, y_ptr, residual_ptr, mask_ptr, weight_ptr, bias_ptr, mean_ptr, invstd_ptr,
    running_mean_ptr, running_var_ptr,
    n_outer, n_inner, num_channels,
    stride_x_outer, stride_x_c, stride_x_inner,
    stride_y_outer, stride_y_c, stride_y_inner,
    stride_m_outer, stride_m_c, stride_m_byte,
    tiles_inner, num_tiles, tiles_per_split, eps: tl.float64,
    FROM_RUNNING: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, M_ALIGN: tl.constexpr,
):
    """Program (channel block, split) writes y = (x - mean) * invstd * weight + bias on its tiles.

    With FROM_RUNNING the statistics are the running ones (eval): mean and invstd are derived here
    and split 0 stores them for the backward; otherwise they are read from mean/invstd.
    """
    acc_dtype = mean_ptr.dtype.element_ty
    split = tl.program_id(1)
    channels = channel_block(BLOCK_C)
    channel_mask = channels < num_channels
    if FROM_RUNNING:
        mean = tl.load(running_mean_ptr + channels, mask=channel_mask, other=0.0).to(acc_dtype)
        var = tl.load(running_var_ptr + channels, mask=channel_mask, other=1.0).to(acc_dtype)
        invstd = inverse_std(var, eps)
        if split == 0:
            tl.store(mean_ptr + channels, mean, mask=channel_mask)
            tl.store(invstd_ptr + channels, invstd, mask=channel_mask)
    else:
        mean = tl.load(mean_ptr + channels, mask=channel_mask, other=0.0)
        invstd = tl.load(invstd_ptr + channels, mask=channel_mask, other=0.0)
    weight, bias = load_affine(
        weight_ptr, bias_ptr, channels, channel_mask, HAS_WEIGHT, HAS_BIAS, acc_dtype
    )
    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, num_tiles)
    normalize_tiles(
        x_ptr, y_ptr, residual_ptr, mask_ptr, channels, first_tile, last_tile, tiles_inner,
        mean, invstd * weight, bias, n_outer, n_inner, num_channels,
        stride_x_outer, stride_x_c, stride_x_inner,
        stride_y_outer, stride_y_c, stride_y_inner,
        stride_m_outer, stride_m_c, stride_m_byte,
        HAS_RESIDUAL, RELU, BLOCK_N, BLOCK_S, BLOCK_C, X_ALIGN, Y_ALIGN, M_ALIGN,
    )


# One launcher per kernel: each launch after a specialisation's first skips Triton's binding.
launch_whole_channel_forward = KernelLauncher(whole_channel_forward_kernel)
launch_partial_moments = KernelLauncher(partial_moments_kernel)
launch_finalize_moments = KernelLauncher(finalize_moments_kernel)
launch_apply = KernelLauncher(apply_kernel)


def allocate_forward_outputs(
    x: Tensor, view: ChannelView, relu: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Uninitialised (y, mean, invstd, relu_mask) for the folded input ``x``.

    y is laid out like x; the statistics are float32 (float64 for float64 input); relu_mask is the
    packed mask when ``relu`` is set, else None.
    """
    relu_mask = relu_mask_like(x, view) if relu else None
    mean = torch.empty(view.num_channels, dtype=accumulator_dtype(x.dtype), device=x.device)
    return torch.empty_like(x), mean, torch.empty_like(mean), relu_mask


def batch_norm_forward(
    x: Tensor,
    plan: Plan,
    options: BatchNormOptions,
    weight: Tensor | None,
    bias: Tensor | None,
    residual: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    combine_moments: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Launch the forward pass; returns (y, mean, invstd, relu_mask) as allocate_forward_outputs.

    ``x`` and ``plan`` are what plan_batch_norm(input, options.relu) returned; ``options`` says
    what to compute (batch or running statistics, eps, the fused ReLU, the running statistics'
    averaging factor). Running statistics that are given are updated in place when the batch's
    statistics normalise; ``num_batches_tracked`` is read, never written, for ``momentum=None``.

    ``combine_moments`` (synchronized BatchNorm) takes this process's summary, a [4, 1, C] tensor
    of (count, mean, 0, M2), and returns every process's, [4, processes, C] in a fixed order; the
    statistics are then those of the whole batch, merged on the device.
    """
    view, launch = plan.view, plan.launch
    y, mean, invstd, relu_mask = allocate_forward_outputs(x, view, options.relu)
    if plan.empty:  # nothing to normalise; the running statistics stay as they are
        return y, mean.zero_(), invstd.zero_(), relu_mask
    x_strides, y_strides = plan.x_strides, plan.y_strides
    if residual is not None and residual.stride() != plan.y_stride:
        residual = conform(residual, y, view, y_strides)  # the kernels read it with y's strides

    # Kernels take a pointer for every optional tensor; constexpr flags keep unused ones untouched.
    update_running = options.use_batch_stats and running_mean is not None
    cumulative = update_running and options.momentum is None
    running_mean = mean if running_mean is None else running_mean
    running_var = mean if running_var is None else running_var
    num_batches_tracked = num_batches_tracked if cumulative else mean
    momentum = 0.0 if options.momentum is None else options.momentum
    tensor_args = (
        x, y, mean if residual is None else residual, mean if relu_mask is None else relu_mask,
        mean if weight is None else weight, mean if bias is None else bias, mean, invstd,
        running_mean, running_var,
    )
    stride_args = (*x_strides, *y_strides, *plan.mask_strides)
    flags = {
        "HAS_WEIGHT": weight is not None, "HAS_BIAS": bias is not None,
        "HAS_RESIDUAL": residual is not None, "RELU": options.relu, **plan.tile_constexprs,
    }
    statistics_flags = dict(UPDATE_RUNNING=update_running, CUMULATIVE=cumulative)

    if options.use_batch_stats and launch.whole_channel and combine_moments is None:
        launch_whole_channel_forward(
            (launch.channel_blocks, 1),
            *tensor_args, num_batches_tracked,
            view.n_outer, view.n_inner, view.num_channels, view.n_per_channel,
            *stride_args, launch.tiles_inner, launch.num_tiles, momentum, options.eps,
            **statistics_flags, **flags,
        )
        return y, mean, invstd, relu_mask

    grid = (launch.channel_blocks, launch.num_splits)
    tiling = (launch.tiles_inner, launch.num_tiles, launch.tiles_per_split)
    if options.use_batch_stats:
        partial = torch.empty(
            (4, launch.num_splits, view.num_channels), dtype=mean.dtype, device=x.device
        )
        statistics_args = (mean, invstd, running_mean, running_var, num_batches_tracked)
        launch_with_arrivals(
            launch_partial_moments, grid, x.device, x, partial, *statistics_args,
            view.n_outer, view.n_inner, view.num_channels, view.n_per_channel,
            *x_strides, *tiling, momentum, options.eps, FINALIZE=combine_moments is None,
            **statistics_flags, **plan.tile_constexprs,
        )
        if combine_moments is not None:
            summary = torch.empty((4, 1, view.num_channels), dtype=mean.dtype, device=x.device)
            for partials, summarise in ((partial, True), (None, False)):
                partials = combine_moments(summary) if partials is None else partials
                launch_finalize_moments(
                    finalize_grid(view.num_channels), partials, summary, *statistics_args,
                    partials.shape[1], view.num_channels, momentum, options.eps,
                    SUMMARY=summarise, **statistics_flags,
                    BLOCK_SPLITS=finalize_block_splits(partials.shape[1]), BLOCK_C=FINALIZE_BLOCK_C,
                    num_warps=8,
                )
    launch_apply(
        grid, *tensor_args, view.n_outer, view.n_inner, view.num_channels, *stride_args, *tiling,
        options.eps, FROM_RUNNING=not options.use_batch_stats, **flags,
    )
    return y, mean, invstd, relu_mask
