"""Device helpers shared by the forward and backward kernels.

A tile is a [BLOCK_N, BLOCK_S, BLOCK_C] block of one tensor: BLOCK_N positions of the outer
reduction dim, BLOCK_S positions of the inner reduction dim and BLOCK_C channels (see layout.py).
"""

import triton
import triton.language as tl


@triton.jit
def channel_block(BLOCK_C: tl.constexpr):
    """The channels of this program's channel block (program axis 0)."""
    return tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)


@triton.jit
def tile_offsets(
    tile,
    tiles_inner,
    channels,
    n_outer,
    n_inner,
    num_channels,
    stride_outer,
    stride_c,
    stride_inner,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Element offsets (int64) and in-bounds mask of tile number ``tile`` for ``channels``.

    Loads and stores are vectorised along the channel dim when BLOCK_C > 1 (channels are the
    contiguous dim, see choose_launch) and along the inner dim otherwise. ALIGN (the tensor's
    X_ALIGN, Y_ALIGN or M_ALIGN, see vector_alignment in layout.py) is a power of two, at most the
    tile's size along that dim, that divides the strides of the two other dims and the vectorised
    dim's extent. Telling the compiler so (every row of the vectorised dim starts at a multiple of
    ALIGN elements, and its bounds mask is constant over ALIGN elements) allows vector accesses that
    Triton's own specialisation, which only learns whether an int is divisible by 16, does not: rows
    of 14x14 = 196 elements, say.
    """
    tile_outer = tile // tiles_inner
    tile_inner = tile % tiles_inner
    outer = tile_outer.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    inner = tile_inner.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    outer_offsets = outer * stride_outer
    inner_offsets = inner * stride_inner
    channel_offsets = channels * stride_c
    inner_mask = inner < n_inner
    channel_mask = channels < num_channels
    # The hints go on the 1-D terms: a term of one element becomes a scalar in the compiled code.
    if ALIGN > 1:
        outer_offsets = tl.multiple_of(outer_offsets, [ALIGN])
        if BLOCK_C > 1:
            inner_offsets = tl.multiple_of(inner_offsets, [ALIGN])
            channel_mask = tl.max_constancy(channel_mask, [ALIGN])
        else:
            channel_offsets = tl.multiple_of(channel_offsets, [ALIGN])
            inner_mask = tl.max_constancy(inner_mask, [ALIGN])
    offsets = (
        outer_offsets[:, None, None] + inner_offsets[None, :, None] + channel_offsets[None, None, :]
    )
    mask = (outer < n_outer)[:, None, None] & inner_mask[None, :, None] & channel_mask[None, None, :]
    return offsets, mask


@triton.jit
def tile_count(tile, tiles_inner, n_outer, n_inner, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """Number of in-bounds reduction positions in tile number ``tile`` (the same for every channel)."""
    rows = tl.minimum(n_outer - (tile // tiles_inner) * BLOCK_N, BLOCK_N)
    cols = tl.minimum(n_inner - (tile % tiles_inner) * BLOCK_S, BLOCK_S)
    return rows * cols


@triton.jit
def sum_over_tile(values):
    """Per-channel sum of a [BLOCK_N, BLOCK_S, BLOCK_C] tile."""
    return tl.sum(tl.sum(values, axis=0), axis=0)


@triton.jit
def load_affine(
    weight_ptr,
    bias_ptr,
    channels,
    channel_mask,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    dtype: tl.constexpr,
):
    """Per-channel gamma and beta in ``dtype``; 1 and 0 where the module has none."""
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + channels, mask=channel_mask, other=1.0).to(dtype)
    else:
        weight = tl.full(channels.shape, 1.0, dtype)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels, mask=channel_mask, other=0.0).to(dtype)
    else:
        bias = tl.full(channels.shape, 0.0, dtype)
    return weight, bias


@triton.jit
def inverse_std(var, eps):
    """1 / sqrt(var + eps) with a correctly rounded square root.

    tl.sqrt_rn only takes float32; float64's tl.sqrt is already IEEE-rounded. ``eps`` is a float64
    kernel argument, rounded here to the statistics' dtype.
    """
    eps = tl.full(var.shape, eps, var.dtype)
    if var.dtype == tl.float64:
        root = tl.sqrt(var + eps)
    else:
        root = tl.sqrt_rn(var + eps)
    return 1.0 / root


@triton.jit
def store_statistics(
    channels,
    channel_mask,
    mean,
    var,
    n_per_channel,
    eps,
    momentum,
    mean_ptr,
    invstd_ptr,
    running_mean_ptr,
    running_var_ptr,
    num_batches_tracked_ptr,
    UPDATE_RUNNING: tl.constexpr,
    CUMULATIVE: tl.constexpr,
):
    """Store the batch mean and invstd, and fold the batch into the running statistics.

    The running variance takes the unbiased batch variance. With CUMULATIVE the averaging factor is
    1 / (num_batches_tracked + 1): num_batches_tracked counts the earlier batches, and the caller
    counts this one after the launch. Otherwise it is ``momentum`` (a float64 kernel argument). The
    update is computed in the statistics' dtype, so float64 stays float64.
    """
    invstd = inverse_std(var, eps)
    tl.store(mean_ptr + channels, mean, mask=channel_mask)
    tl.store(invstd_ptr + channels, invstd, mask=channel_mask)
    if UPDATE_RUNNING:
        if CUMULATIVE:
            factor = 1.0 / (tl.load(num_batches_tracked_ptr).to(mean.dtype) + 1.0)
        else:
            factor = tl.full(mean.shape, momentum, mean.dtype)
        unbiased_var = var * n_per_channel / (n_per_channel - 1)
        running_mean = tl.load(running_mean_ptr + channels, mask=channel_mask).to(mean.dtype)
        running_var = tl.load(running_var_ptr + channels, mask=channel_mask).to(mean.dtype)
        running_mean = (1.0 - factor) * running_mean + factor * mean
        running_var = (1.0 - factor) * running_var + factor * unbiased_var
        tl.store(running_mean_ptr + channels, running_mean, mask=channel_mask)
        tl.store(running_var_ptr + channels, running_var, mask=channel_mask)
    return invstd


@triton.jit
def zero_where_off(values, keep):
    """``values`` where ``keep`` is set and +0.0 elsewhere: tl.where(keep, values, 0.0), bit for bit.

    Computed on the bits, as an AND with all ones or all zeros, instead of a select: Triton 3.9's
    LLVM segfaults (in the SLP vectoriser's horizontal-reduction matcher, isFixedVectorShuffle)
    compiling for sm_90 the fused ReLU's backward sums, which add 16 such selects per thread
    (4096-element tiles over 8 warps); see the compile gate in benchmarks/NOTES.md.
    """
    if values.dtype.primitive_bitwidth == 16:
        bits = values.to(tl.int16, bitcast=True)
    elif values.dtype.primitive_bitwidth == 32:
        bits = values.to(tl.int32, bitcast=True)
    else:
        bits = values.to(tl.int64, bitcast=True)
    all_ones = 0 - keep.to(bits.dtype)
    return (bits & all_ones).to(values.dtype, bitcast=True)


@triton.jit
def pack_bits(flags, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Pack a boolean [BLOCK_N, BLOCK_S, BLOCK_C] tile into bytes along the inner dim.

    Bit i of byte b holds inner position 8 * b + i; the result is [BLOCK_N, BLOCK_S // 8, BLOCK_C].
    """
    bits = tl.reshape(flags.to(tl.uint8), [BLOCK_N, BLOCK_S // 8, 8, BLOCK_C])
    shifts = tl.arange(0, 8).to(tl.uint8)[None, None, :, None]
    return tl.sum(bits << shifts, axis=2).to(tl.uint8)


@triton.jit
def unpack_bits(packed, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """The boolean [BLOCK_N, BLOCK_S, BLOCK_C] tile that pack_bits packed into ``packed``."""
    shifts = tl.arange(0, 8).to(tl.uint8)[None, None, :, None]
    bits = (packed[:, :, None, :] >> shifts) & 1
    return tl.reshape(bits, [BLOCK_N, BLOCK_S, BLOCK_C]) != 0
