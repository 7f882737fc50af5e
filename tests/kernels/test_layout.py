"""channel_view folding, fold_input, and choose_launch's tiles, splits and path choice."""

import inspect
import itertools
import math
import threading

import pytest
import torch
import torch.nn.functional as F

from fusedbn import fused_batch_norm
from fusedbn.kernels import layout
from fusedbn.kernels.layout import (
    LaunchLimits,
    channel_view,
    choose_launch,
    conform,
    fold_input,
)

pytestmark = pytest.mark.kernels  # the kernels and their launch machinery


def element_offsets(x, view):
    """Offsets outer * stride_outer + c * stride_c + inner * stride_inner of every element of x,
    in the order the view enumerates them, as an (n_outer, C, n_inner) tensor."""
    so, sc, si = view.strides(x)
    outer = torch.arange(view.n_outer).view(-1, 1, 1)
    channel = torch.arange(view.num_channels).view(1, -1, 1)
    inner = torch.arange(view.n_inner).view(1, 1, -1)
    return outer * so + channel * sc + inner * si


def assert_view_addresses_every_element(x, view):
    """Reading x's storage at the view's offsets gives x's elements, each channel's exactly once."""
    assert view.num_channels == x.shape[1]
    assert view.n_per_channel == x.numel() // x.shape[1]
    flat = x.as_strided((x.untyped_storage().nbytes() // x.element_size(),), (1,), 0)
    values = flat[element_offsets(x, view) + x.storage_offset()]  # (n_outer, C, n_inner)
    ours = values.transpose(0, 1).reshape(x.shape[1], -1).sort(dim=1).values
    expected = x.transpose(0, 1).reshape(x.shape[1], -1).sort(dim=1).values
    assert torch.equal(ours, expected)


def distinct(shape):
    return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)


def test_contiguous_nchw():
    x = distinct((3, 5, 4, 6))
    view = channel_view(x)
    assert (view.n_outer, view.num_channels, view.n_inner) == (3, 5, 24)
    assert view.strides(x) == (120, 24, 1)
    assert_view_addresses_every_element(x, view)


def test_channels_last_folds_into_one_inner_dim():
    x = distinct((3, 5, 4, 6)).to(memory_format=torch.channels_last)
    view = channel_view(x)
    assert (view.n_outer, view.n_inner) == (1, 72)
    assert view.strides(x) == (0, 1, 5)
    assert_view_addresses_every_element(x, view)


def test_channels_last_3d_folds_into_one_inner_dim():
    x = distinct((2, 3, 3, 4, 5)).to(memory_format=torch.channels_last_3d)
    view = channel_view(x)
    assert (view.n_outer, view.n_inner) == (1, 120)
    assert view.strides(x) == (0, 1, 3)
    assert_view_addresses_every_element(x, view)


def test_two_dims_and_three_dims():
    x = distinct((7, 5))
    view = channel_view(x)
    assert (view.n_outer, view.n_inner) == (1, 7)
    assert view.strides(x) == (0, 1, 5)
    assert_view_addresses_every_element(x, view)
    x = distinct((7, 5, 3))
    view = channel_view(x)
    assert (view.n_outer, view.n_inner) == (7, 3)
    assert view.strides(x) == (15, 3, 1)
    assert_view_addresses_every_element(x, view)


def test_transposed_view_is_read_in_place():
    x = distinct((3, 5, 6, 4)).transpose(2, 3)  # shape (3, 5, 4, 6), W is the slow spatial dim
    view = channel_view(x)
    assert view is not None
    assert (view.n_outer, view.n_inner) == (3, 24)
    assert view.strides(x) == (120, 24, 1)
    assert_view_addresses_every_element(x, view)


def test_sliced_view_with_steps_is_read_in_place():
    base = distinct((6, 5, 4, 12))
    x = base[::2, :, :, ::2]
    view = channel_view(x)
    assert (view.n_outer, view.n_inner) == (3, 24)
    assert view.strides(x) == (480, 48, 2)
    assert_view_addresses_every_element(x, view)
    folded, _ = fold_input(x)
    assert folded.data_ptr() == x.data_ptr() and folded.stride() == x.stride()


def test_channel_slice_of_channels_last_is_read_in_place():
    base = distinct((3, 8, 4, 6)).to(memory_format=torch.channels_last)
    x = base[:, 2:7]
    view = channel_view(x)
    assert (view.n_outer, view.n_inner) == (1, 72)
    assert view.strides(x) == (0, 1, 8)
    assert_view_addresses_every_element(x, view)


def test_expanded_stride_zero_dims():
    x = distinct((1, 5, 1, 6)).expand(3, 5, 4, 6)
    assert x.stride() == (0, 6, 0, 1)
    view = channel_view(x)
    assert view is not None
    assert view.n_per_channel == 72
    assert_view_addresses_every_element(x, view)


def test_size_one_dims_are_ignored():
    x = distinct((4, 5, 1, 6)).as_strided((4, 5, 1, 6), (30, 6, 999, 1))
    view = channel_view(x)
    assert (view.n_outer, view.n_inner) == (4, 6)
    assert view.strides(x) == (30, 6, 1)


def test_three_strides_cannot_fold():
    base = distinct((3, 5, 6, 7))
    x = base[:, :, 1:-1, 1:-1]
    assert channel_view(x) is None
    folded, view = fold_input(x)
    assert folded.is_contiguous() and torch.equal(folded, x)
    assert view.strides(folded) == (5 * 4 * 5, 20, 1)


def test_view_strides_of_a_differently_laid_out_tensor():
    x = distinct((3, 5, 4, 6))
    view = channel_view(x)
    assert view.strides(torch.empty_like(x)) == view.strides(x)
    # channels_last still folds as (N, C, H*W), with its own strides.
    assert view.strides(x.to(memory_format=torch.channels_last)) == (120, 1, 5)
    # H and W swapped in memory do not fold into one inner dim of this view.
    assert view.strides(x.transpose(2, 3).contiguous().transpose(2, 3)) is None


def test_fold_input_keeps_foldable_inputs():
    for x in (
        distinct((3, 5, 4, 6)),
        distinct((3, 5, 4, 6)).to(memory_format=torch.channels_last),
        distinct((2, 3, 3, 4, 5)).to(memory_format=torch.channels_last_3d),
    ):
        folded, view = fold_input(x)
        assert folded is x
        assert view == channel_view(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(3, 5, 7, 8)[:, :, 1:-1, 1:-1],
        lambda: torch.randn(3, 5, 7, 8).to(memory_format=torch.channels_last)[:, :, 1:-1, 2:-1],
        lambda: torch.randn(1, 5, 1, 6).expand(3, 5, 4, 6),
        lambda: torch.randn(4, 5, 3, 6, 7).permute(0, 1, 3, 2, 4)[:, :, 1:],
    ],
    ids=["nchw-crop", "nhwc-crop", "expanded", "permuted-cropped-5d"],
)
def test_forward_is_right_when_the_input_cannot_fold(make, device, assert_close):
    x = make().to(device)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
    xr = x.detach().clone().requires_grad_()
    ours_in = x.detach().requires_grad_()
    ours = fused_batch_norm(ours_in, None, None, training=True)
    ours.backward(dy)
    theirs = F.batch_norm(xr, None, None, training=True)
    theirs.backward(dy)
    x64 = x.double()
    dims = [d for d in range(x.dim()) if d != 1]
    mean = x64.mean(dims, keepdim=True)
    var = x64.var(dims, unbiased=False, keepdim=True)
    assert_close(ours, (x64 - mean) / torch.sqrt(var + 1e-5))
    assert_close(ours, theirs)
    assert_close(ours_in.grad, xr.grad)
    assert ours.stride() == theirs.stride()


# ----------------------------------------------------------------------------------------------
# choose_launch
# ----------------------------------------------------------------------------------------------


def is_pow2(n):
    return n > 0 and n & (n - 1) == 0


def check_launch(launch, view, limits, min_block_s=1):
    """The tiles of a launch cover every element once; the splits cover every tile once."""
    for block in (launch.block_n, launch.block_s, launch.block_c):
        assert is_pow2(block)
    assert launch.block_c <= max(limits.max_channel_block, 1)
    assert launch.block_s >= min_block_s
    assert launch.channel_blocks == math.ceil(view.num_channels / launch.block_c)
    tiles_outer = math.ceil(view.n_outer / launch.block_n)
    assert launch.tiles_inner == math.ceil(view.n_inner / launch.block_s)
    assert launch.num_tiles == tiles_outer * launch.tiles_inner
    # The last tile along each reduction dim starts inside the tensor (no empty tiles).
    assert (tiles_outer - 1) * launch.block_n < view.n_outer
    assert (launch.tiles_inner - 1) * launch.block_s < view.n_inner
    covered = []
    for split in range(launch.num_splits):
        first = split * launch.tiles_per_split
        tiles = list(range(first, min(first + launch.tiles_per_split, launch.num_tiles)))
        assert tiles, f"split {split} has no tiles"
        covered += tiles
    assert covered == list(range(launch.num_tiles))
    tile = launch.block_n * launch.block_s * launch.block_c
    if launch.whole_channel:
        assert launch.num_splits == 1 and launch.tiles_per_split == launch.num_tiles
    if launch.num_tiles == 1:
        assert launch.block_n >= view.n_outer and launch.block_s >= view.n_inner
        assert tile <= limits.single_tile
    else:
        assert tile <= max(limits.stream_tile, launch.block_c * min_block_s)


SHAPES = [
    ("nchw", (3, 5, 7, 6)),
    ("nhwc", (3, 5, 7, 6)),
    ("nc", (37, 5)),
    ("ncl", (9, 5, 3)),
    ("ncl-wide", (9, 40, 3)),
    ("ncdhw", (2, 3, 3, 5, 4)),
    ("big-nchw", (16, 3, 33, 35)),
    ("big-nhwc", (16, 70, 9, 11)),
]
# Every case plans for 2 multiprocessors, whatever the device.
LIMITS_CASES = {
    "default": LaunchLimits(multiprocessors=2),
    "tiny": LaunchLimits(
        single_tile=32, stream_tile=16, programs_per_sm=8, max_channel_block=4,
        whole_channel_blocks_per_sm=float("inf"), multiprocessors=2,
    ),
    "one-program": LaunchLimits(
        single_tile=1, stream_tile=1, programs_per_sm=1, max_channel_block=1, multiprocessors=2
    ),
    "wide": LaunchLimits(
        single_tile=256, stream_tile=128, programs_per_sm=3, max_channel_block=64,
        multiprocessors=2,
    ),
    "whole-channel": LaunchLimits(
        single_tile=32, stream_tile=16, max_channel_block=4, whole_channel_blocks_per_sm=0,
        multiprocessors=2,
    ),
}


def as_layout(kind, shape):
    x = torch.empty(shape, device="meta")
    if kind.endswith("nhwc"):
        x = torch.empty(shape).to(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize("min_block_s", [1, 8])
@pytest.mark.parametrize("limits_name", list(LIMITS_CASES))
@pytest.mark.parametrize("kind,shape", SHAPES, ids=[k for k, _ in SHAPES])
def test_launch_covers_everything(kind, shape, limits_name, min_block_s):
    limits = LIMITS_CASES[limits_name]
    x = as_layout(kind, shape)
    view = channel_view(x)
    launch = choose_launch(view, x, min_block_s=min_block_s, limits=limits)
    check_launch(launch, view, limits, min_block_s)
    # The path follows the limits: one tile exactly when the whole channel block fits in one, and
    # whole-channel programs when there are enough channel blocks to fill the machine.
    whole = (
        layout._pow2(view.n_outer) * max(layout._pow2(view.n_inner), min_block_s) * launch.block_c
    )
    assert (launch.num_tiles == 1) == (whole <= limits.single_tile)
    if launch.channel_blocks >= limits.whole_channel_blocks_per_sm * 2:
        assert launch.whole_channel


def test_launch_limits_context_sets_and_restores_the_limits():
    x = torch.empty(3, 5, 7, 6, device="meta")
    view = channel_view(x)
    assert layout.current_limits() == LaunchLimits()
    launch = choose_launch(view, x)
    assert launch.whole_channel and launch.num_tiles == 1
    with layout.launch_limits(LIMITS_CASES["tiny"]):
        assert layout.current_limits() is LIMITS_CASES["tiny"]
        launch = choose_launch(view, x)
        assert not launch.whole_channel and launch.num_splits > 1
        _, plan = layout.plan_batch_norm(x)
        assert plan.launch == launch
        with layout.launch_limits(LIMITS_CASES["one-program"]):
            assert choose_launch(view, x).num_tiles == view.n_per_channel
        assert choose_launch(view, x) == launch
        # An explicit argument wins over the context.
        assert choose_launch(view, x, limits=LaunchLimits()).whole_channel
    assert layout.current_limits() == LaunchLimits()
    assert choose_launch(view, x).whole_channel


def test_launch_limits_hold_in_their_own_thread_only():
    seen = []
    with layout.launch_limits(LIMITS_CASES["tiny"]):
        worker = threading.Thread(target=lambda: seen.append(layout.current_limits()))
        worker.start()
        worker.join()
    assert seen == [LaunchLimits()]


def test_multiprocessors_in_the_limits_set_the_split_count():
    x = torch.empty(64, 3, 32, 32, device="meta")
    view = channel_view(x)
    counts = [
        choose_launch(view, x, limits=LaunchLimits(multiprocessors=sms)).num_splits
        for sms in (1, 4, 16)
    ]
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_plan_folds_like_fold_input_and_copies_only_what_cannot_be_read_in_place():
    x = distinct((4, 6, 5, 7))[:, :, :, ::2]  # a non-dense view: copied, contiguous
    folded, plan = layout.plan_batch_norm(x, relu=True)
    expected, view = fold_input(x)
    assert torch.equal(folded, expected) and folded.stride() == expected.stride()
    assert plan.view == view and plan.copy_format == torch.contiguous_format
    assert plan.launch == choose_launch(view, expected, min_block_s=8)
    assert plan.launch.block_s >= 8
    refolded = plan.fold(x)
    assert torch.equal(refolded, expected) and refolded.stride() == expected.stride()
    y = distinct((4, 6, 5, 7)).to(memory_format=torch.channels_last)
    folded, plan = layout.plan_batch_norm(y)
    assert folded is y and plan.copy_format is None and plan.fold(y) is y


def test_channels_contiguous_layouts_block_channels():
    limits = LaunchLimits()
    x = torch.empty(40, 5).to(memory_format=torch.contiguous_format)
    assert choose_launch(channel_view(x), x, limits=limits).block_c == 8
    x = torch.empty(4, 100, 3, 3).to(memory_format=torch.channels_last)
    launch = choose_launch(channel_view(x), x, limits=limits)
    assert launch.block_c == limits.max_channel_block
    assert launch.channel_blocks == math.ceil(100 / limits.max_channel_block)
    x = torch.empty(4, 100, 3, 3)
    assert choose_launch(channel_view(x), x, limits=limits).block_c == 1


def test_split_count_follows_programs_per_multiprocessor():
    x = torch.empty(64, 3, 32, 32, device="meta")
    view = channel_view(x)
    counts = []
    for programs_per_sm in (1, 4, 16):
        limits = LaunchLimits(
            single_tile=64, stream_tile=64, programs_per_sm=programs_per_sm, multiprocessors=2
        )
        launch = choose_launch(view, x, limits=limits)
        check_launch(launch, view, limits)
        counts.append(launch.num_splits)
        assert launch.num_splits <= max(programs_per_sm * 2 // launch.channel_blocks, 1)
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_all_small_shapes_cover_exactly():
    """A sweep of odd sizes on tiny limits: every launch covers its tiles exactly."""
    limits = LaunchLimits(
        single_tile=16, stream_tile=8, programs_per_sm=5, max_channel_block=4, multiprocessors=3
    )
    for n, c, s in itertools.product((1, 2, 3, 7, 17), (1, 3, 6), (1, 5, 9, 33)):
        for x in (torch.empty(n, c, s, device="meta"), torch.empty(n, s, c).transpose(1, 2)):
            view = channel_view(x)
            if view.n_per_channel == 0:
                continue
            check_launch(choose_launch(view, x, limits=limits), view, limits)


def test_strides_like_reuses_x_strides_only_for_the_same_strides():
    x = distinct((3, 5, 4, 12))[:, :, :, ::2]  # not dense, yet read in place
    folded, view = fold_input(x)
    assert folded is x
    x_strides = view.strides(x)
    y = torch.empty_like(x)
    assert y.stride() != x.stride()
    assert view.strides_like(y, x, x_strides) == view.strides(y) != x_strides
    twin = torch.empty_strided(x.shape, x.stride())
    assert view.strides_like(twin, x, x_strides) == x_strides == view.strides(twin)


@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.contiguous(memory_format=torch.channels_last),  # folds, with other strides
        lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),  # does not fold
        lambda t: t[:1].expand(t.shape),  # zero strides
        lambda t: torch.cat([t, t], dim=3)[:, :, :, ::2],  # not dense
    ],
    ids=["channels-last", "unfoldable", "expanded", "strided"],
)
def test_conform_copies_what_does_not_share_the_layout(make):
    """A residual or dy that folds otherwise than y (or grad_input) is copied into y's layout."""
    x = distinct((3, 5, 4, 6))[:, :, :, 1:5]  # not dense, read in place: y's strides differ
    folded, view = fold_input(x)
    y = torch.empty_like(folded)
    y_strides = view.strides(y)
    t = make(torch.randn(x.shape, generator=torch.Generator().manual_seed(5)))
    assert view.strides(t) != y_strides
    conformed = conform(t, y, view, y_strides)
    assert conformed.stride() == y.stride() and conformed.data_ptr() != t.data_ptr()
    assert torch.equal(conformed, t)


def test_conform_keeps_a_tensor_that_shares_the_layout():
    x = distinct((3, 5, 4, 6)).contiguous(memory_format=torch.channels_last)
    folded, view = fold_input(x)
    y = torch.empty_like(folded)
    # Strides that differ only on a size-1 dim fold alike: read in place, no copy.
    twin = torch.randn(3, 5, 1, 6).contiguous(memory_format=torch.channels_last)
    view1 = channel_view(twin)
    like1 = torch.empty_like(twin)
    odd = twin.as_strided(twin.shape, (30, 1, 999, 5))
    assert odd.stride() != like1.stride()
    assert conform(odd, like1, view1, view1.strides(like1)) is odd
    same = torch.randn(x.shape).contiguous(memory_format=torch.channels_last)
    assert conform(same, y, view, view.strides(y)) is same


# ----------------------------------------------------------------------------------------------
# The plan cache
# ----------------------------------------------------------------------------------------------


def test_a_cache_hit_returns_the_same_plan():
    x = distinct((4, 6, 5, 7))
    first = layout.plan_batch_norm(x)[1]
    again = layout.plan_batch_norm(torch.empty_like(x))[1]  # another tensor of the same kind
    assert again is first
    assert layout.plan_batch_norm(x, limits=layout.current_limits())[1] is first
    # Equal limits (another object) are the same key.
    assert layout.plan_batch_norm(x, limits=LaunchLimits())[1] is first


@pytest.mark.parametrize(
    "other",
    [
        lambda x: (x.to(memory_format=torch.channels_last), {}),  # strides
        lambda x: (x.double(), {}),  # dtype
        lambda x: (x.to("meta"), {}),  # device
        lambda x: (x, {"relu": True}),
        lambda x: (x, {"limits": LaunchLimits(single_tile=16)}),
        lambda x: (x[:, :, :4], {}),  # shape
    ],
    ids=["strides", "dtype", "device", "relu", "limits", "shape"],
)
def test_another_kind_of_input_gets_another_plan(other):
    x = distinct((4, 6, 5, 7))
    plan = layout.plan_batch_norm(x)[1]
    y, kwargs = other(x)
    assert layout.plan_batch_norm(y, **kwargs)[1] is not plan


def test_the_plan_cache_is_bounded():
    assert layout._cached_plan.cache_info().maxsize == layout.PLAN_CACHE_SIZE
    layout.clear_plans()
    for n in range(1, 6):
        layout.plan_batch_norm(torch.empty(n, 3, 2))
    assert layout._cached_plan.cache_info().currsize == 5
    layout.clear_plans()
    assert layout._cached_plan.cache_info().currsize == 0


LAYOUT_CASES = {
    "nchw": lambda: distinct((4, 6, 5, 7)),
    "channels_last": lambda: distinct((4, 6, 5, 7)).to(memory_format=torch.channels_last),
    "sliced": lambda: distinct((4, 6, 5, 14))[:, :, :, ::2],  # read in place, y laid out otherwise
    "cropped": lambda: distinct((4, 6, 7, 9))[:, :, 1:-1, 1:-1],  # copied first
    "nc": lambda: distinct((37, 5)),
    "empty": lambda: torch.empty(0, 6, 3),
}


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("kind", list(LAYOUT_CASES))
def test_the_plan_holds_the_strides_of_the_tensors_it_launches_on(kind, relu):
    """What the plan precomputes (on the meta device) is what the real tensors have."""
    x = LAYOUT_CASES[kind]()
    folded, plan = layout.plan_batch_norm(x, relu=relu)
    expected, view = fold_input(x)
    assert plan.view == view and folded.stride() == expected.stride()
    assert plan.x_strides == view.strides(folded)
    y = torch.empty_like(folded)
    assert plan.y_stride == y.stride()
    assert plan.y_strides == view.strides(y)
    assert plan.mask_strides == (layout.relu_mask_like(folded, view).stride() if relu else (0, 0, 0))
    assert plan.stats_dtype == torch.float32 and plan.empty == (x.numel() == 0)
    assert plan.launch == choose_launch(view, folded, 8 if relu else 1)


def test_the_plan_counts_the_multiprocessors_of_the_inputs_device():
    x = torch.empty(64, 3, 32, 32)
    default = layout.plan_batch_norm(x)[1].launch
    assert default == choose_launch(channel_view(x), x)  # the CPU counts 2
    pinned = layout.plan_batch_norm(x, limits=LaunchLimits(multiprocessors=16))[1].launch
    assert pinned.num_splits > default.num_splits


# ----------------------------------------------------------------------------------------------
# The alignment constexprs (X_ALIGN, Y_ALIGN, M_ALIGN) the launchers pass to the tile kernels
# ----------------------------------------------------------------------------------------------


def _views(dtype):
    """(name, x, expected X_ALIGN in float16): views whose alignment is limited by one thing each."""
    base = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(5)).to(dtype)
    storage = torch.randn(64, generator=torch.Generator().manual_seed(6)).to(dtype)
    cl = torch.randn(2, 32, 3, 3, generator=torch.Generator().manual_seed(7)).to(dtype)
    cl = cl.to(memory_format=torch.channels_last)
    cl36 = torch.randn(2, 36, 3, 3).to(dtype).to(memory_format=torch.channels_last)
    storage36 = torch.randn(300).to(dtype)
    return [
        # Rows of 14 * 14 = 196 elements: 4-element (8-byte in float16) alignment.
        ("rows of 196", torch.randn(2, 3, 14, 14).to(dtype), 4),
        # x[..., 1:13]: 12 elements a row, rows 16 apart, the data pointer one element in.
        ("misaligned row slice", base[..., 1:13], 4),
        # x[..., 1:]: 15 elements a row: the extent allows no vector.
        ("odd row length", base[..., 1:], 1),
        # An odd batch stride: rows of 8 elements 8 apart, but batch entries 25 apart.
        ("odd outer stride", storage[:50].as_strided((2, 3, 8), (25, 8, 1)), 1),
        # channels_last, 24 channels: runs of 24 channels, 8-element aligned.
        ("24 channels", cl[:, :24].contiguous(memory_format=torch.channels_last), 8),
        # A channel slice of channels_last: 20 channels read in place, rows 32 apart.
        ("channel slice", cl[:, 4:24], 4),
        # 32 of 36 channels: the runs hold 32 channels but start 36 apart.
        ("32 of 36 channels", cl36[:, 2:34], 4),
        # channels_last with batch entries 148 elements apart (4-element aligned).
        ("channels_last, odd batch stride",
         storage36.as_strided((2, 24, 2, 3), (148, 1, 72, 24)), 4),
        # Rows of 256: vectors of 8 (one 128-bit access); the ReLU mask's 32-byte rows fill its
        # 8-byte tiles.
        ("rows of 256", torch.randn(2, 3, 16, 16).to(dtype), 8),
    ]


GROUP_STRIDES = [  # each alignment constexpr and the kernel parameters of the strides it covers
    ("X_ALIGN", ("stride_x_outer", "stride_x_c", "stride_x_inner")),
    ("Y_ALIGN", ("stride_y_outer", "stride_y_c", "stride_y_inner")),  # forward: y, residual
    ("Y_ALIGN", ("stride_dy_outer", "stride_dy_c", "stride_dy_inner")),  # backward: dy, dx, ...
    ("M_ALIGN", ("stride_m_outer", "stride_m_c", "stride_m_byte")),
]


def check_alignment_claims(fn, args, kwargs):
    """What tile_offsets assumes of each alignment constexpr of a launch holds for its arguments: a power
    of two, at most the tile's size along the vectorised dim (channels when BLOCK_C > 1, else the
    inner dim), dividing the strides of the other two dims and the vectorised dim's extent."""
    values = dict(zip(inspect.signature(fn).parameters, args, strict=False)) | kwargs
    checked = []
    for field, (outer, channel, inner) in GROUP_STRIDES:
        if field not in values or outer not in values:
            continue
        align = values[field]
        if field == "M_ALIGN" and not values.get("RELU"):
            continue
        assert align >= 1 and align & (align - 1) == 0, (fn.__name__, field, align)
        bits = 8 if field == "M_ALIGN" else 1
        if values["BLOCK_C"] > 1:
            block, others, extent = values["BLOCK_C"], (outer, inner), values["num_channels"]
        else:
            block, others = values["BLOCK_S"] // bits, (outer, channel)
            extent = -(-values["n_inner"] // bits)
        assert align <= block, (fn.__name__, field, align, block)
        for name in others:
            assert values[name] % align == 0, (fn.__name__, field, align, name, values[name])
        assert extent % align == 0, (fn.__name__, field, align, "extent", extent)
        checked.append((fn.__name__, field, outer, align))
    return checked


def _recorded_step(x, dtype, monkeypatch):
    """A training step with residual and ReLU, forward and backward, fused and in torch; the fused
    step's launches as (kernel function, args, kwargs), and both steps' results."""
    from fusedbn.kernels.launcher import KernelLauncher

    launches = []
    original = KernelLauncher.__call__

    def recording_call(self, grid, *args, **kwargs):
        launches.append((self.kernel.fn, args, kwargs))
        return original(self, grid, *args, **kwargs)

    outputs = {}
    for mode in ("fused", "torch"):
        # The fused step reads the view itself, strides and offset as they are.
        xi = (x.detach().clone() if mode == "torch" else x.detach()).requires_grad_(True)
        residual = torch.ones_like(x, requires_grad=True)
        if mode == "fused":
            monkeypatch.setattr(KernelLauncher, "__call__", recording_call)
            with layout.launch_limits(LaunchLimits(single_tile=64, stream_tile=64)):
                y = fused_batch_norm(xi, None, None, None, None, True, 0.1, 1e-5,
                                     residual=residual, activation="relu")
                y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(dtype))
            monkeypatch.setattr(KernelLauncher, "__call__", original)
        else:
            y = F.relu(F.batch_norm(xi.float(), None, None, None, None, True, 0.1, 1e-5)
                       + residual.float()).to(dtype)
            y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(dtype))
        outputs[mode] = (y, xi.grad, residual.grad)
    return launches, outputs


def test_alignment_constexprs_hold_for_every_view(monkeypatch, assert_close):
    """Every alignment constexpr of every launch of a float16 training step with residual and ReLU
    (forward, backward) is what tile_offsets may assume, on views where a stride or a row's length
    limits it (and one whose data pointer is not 16-byte aligned, which Triton's own specialisation
    sees); X_ALIGN is the largest such; and the results are torch's."""
    dtype = torch.float16
    for name, x, expected in _views(dtype):
        launches, outputs = _recorded_step(x, dtype, monkeypatch)
        for ours, theirs in zip(outputs["fused"], outputs["torch"], strict=True):
            assert_close(ours, theirs, dtype=dtype, msg=name)
        claims = [c for fn, args, kwargs in launches for c in check_alignment_claims(fn, args, kwargs)]
        assert {(c[1], c[2]) for c in claims} == {(c, strides[0]) for c, strides in GROUP_STRIDES}, name
        assert {align for _, field, _, align in claims if field == "X_ALIGN"} == {expected}, name
