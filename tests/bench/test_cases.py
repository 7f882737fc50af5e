"""Shapes, names and byte accounting of the benchmark cases."""

import argparse
from collections import Counter

import pytest
import torch

from fusedbn.bench import cases


def _resnet50_batchnorm_inputs(batch: int = 64, image: int = 224) -> Counter:
    """Walk ResNet-50 v1.5 layer by layer and count the (N, C, H, W) every BatchNorm sees."""
    seen: Counter = Counter()
    size = image // 2  # the 7x7 stride-2 stem conv
    seen[(batch, 64, size, size)] += 1
    size //= 2  # max pool
    in_channels = 64
    for blocks, width, first_stride in ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)):
        for block in range(blocks):
            stride = first_stride if block == 0 else 1
            seen[(batch, width, size, size)] += 1  # 1x1 conv, before any stride
            out_size = size // stride
            seen[(batch, width, out_size, out_size)] += 1  # 3x3 conv carries the stride
            seen[(batch, 4 * width, out_size, out_size)] += 1  # 1x1 expansion
            if block == 0:
                seen[(batch, 4 * width, out_size, out_size)] += 1  # downsample branch
            size, in_channels = out_size, 4 * width
    assert in_channels == 2048
    return seen


def test_resnet50_group_is_every_batchnorm_input_of_the_network():
    expected = _resnet50_batchnorm_inputs()
    registered = {s.dims: s.layers for s in cases.SHAPES if s.group == cases.RESNET50}
    assert registered == dict(expected)
    assert sum(registered.values()) == 53


def test_extra_group_has_the_cases_peers_get_wrong():
    extra = [s.dims for s in cases.SHAPES if s.group == cases.EXTRA]
    assert (32, 16, 256, 256) in extra
    assert (256, 2048, 7, 7) in extra
    assert (65536, 256) in extra
    assert any(len(d) == 5 for d in extra)


@pytest.mark.parametrize(
    "dims, dtype, mode, expected",
    [
        # forward and eval: read x, write y
        ((4, 8, 6, 6), "float16", "fwd", 2 * (4 * 8 * 6 * 6) * 2),
        ((4, 8, 6, 6), "float32", "eval", 2 * (4 * 8 * 6 * 6) * 4),
        # backward: read x and dy, write dx
        ((64, 16), "bfloat16", "bwd", 3 * 1024 * 2),
        ((64, 256, 56, 56), "float32", "bwd", 3 * 64 * 256 * 56 * 56 * 4),
        # forward + backward: the sum, 5 tensor passes
        ((2, 4, 3, 4, 4), "float16", "fwdbwd", 5 * 384 * 2),
    ],
)
def test_minimal_bytes_counts_tensor_passes(dims, dtype, mode, expected):
    assert cases.minimal_bytes(cases.Shape(dims, cases.CUSTOM), dtype, mode) == expected


def test_fwdbwd_bytes_are_forward_plus_backward():
    shape = cases.shape_named("64x2048x7x7")
    for dtype in cases.DTYPES:
        forward = cases.minimal_bytes(shape, dtype, "fwd")
        backward = cases.minimal_bytes(shape, dtype, "bwd")
        assert cases.minimal_bytes(shape, dtype, "fwdbwd") == forward + backward


def test_shape_properties():
    shape = cases.shape_named("8x64x16x56x56")
    assert shape.name == "8x64x16x56x56"
    assert shape.numel == 8 * 64 * 16 * 56 * 56
    assert shape.num_channels == 64
    assert shape.group == cases.EXTRA


@pytest.mark.parametrize(
    "dims, memory_format",
    [((2, 3, 4, 5), torch.channels_last), ((2, 3, 2, 4, 5), torch.channels_last_3d)],
)
def test_random_tensor_layouts(dims, memory_format):
    shape = cases.Shape(dims, cases.CUSTOM)
    nchw = cases.random_tensor(shape, "float32", cases.NCHW, "cpu", seed=0)
    last = cases.random_tensor(shape, "float32", cases.CHANNELS_LAST, "cpu", seed=0)
    assert nchw.shape == last.shape == dims
    assert nchw.is_contiguous()
    assert last.is_contiguous(memory_format=memory_format) and not last.is_contiguous()


def test_random_tensor_channels_last_on_1d_input_puts_channels_innermost():
    tensor = cases.random_tensor(
        cases.Shape((4, 3, 5), cases.CUSTOM), "float16", cases.CHANNELS_LAST, "cpu", 0
    )
    assert tensor.shape == (4, 3, 5) and tensor.stride(1) == 1 and tensor.dtype == torch.float16


def test_random_tensor_is_random_offset_data_and_seeded():
    shape = cases.Shape((16, 4, 32, 32), cases.CUSTOM)
    data = cases.random_tensor(shape, "bfloat16", cases.NCHW, "cpu", seed=5, offset=3.0).float()
    assert data.dtype == torch.float32 and (data != 0).float().mean() > 0.99
    # 65536 normal draws scaled by 2: the mean is within a few hundredths of the offset
    assert abs(data.mean().item() - 3.0) < 0.05
    assert abs(data.std().item() - 2.0) < 0.05
    again = cases.random_tensor(shape, "bfloat16", cases.NCHW, "cpu", seed=5, offset=3.0).float()
    other = cases.random_tensor(shape, "bfloat16", cases.NCHW, "cpu", seed=6, offset=3.0).float()
    assert torch.equal(data, again) and not torch.equal(data, other)


def test_channels_last_applies_only_with_spatial_dims():
    assert cases.layout_applies(cases.shape_named("65536x256"), cases.NCHW)
    assert not cases.layout_applies(cases.shape_named("65536x256"), cases.CHANNELS_LAST)
    assert cases.layout_applies(cases.shape_named("4x8x6x6"), cases.CHANNELS_LAST)


def test_parse_lists_accept_aliases_keep_order_and_drop_repeats():
    assert cases.parse_dtypes("bf16,float32, fp16,bfloat16") == ["bfloat16", "float32", "float16"]
    every_dtype = cases.choices(tuple(cases.DTYPES), "dtype", cases.DTYPE_ALIASES)
    assert every_dtype("fp64,fp16") == ["float64", "float16"]
    assert cases.parse_layouts("channels_last,nchw") == ["channels_last", "nchw"]
    assert cases.parse_modes("eval,fwd") == ["eval", "fwd"]
    assert cases.parse_providers("compile,fusedbn") == ["compile", "fusedbn"]


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (cases.parse_dtypes, "float64",
         "unknown dtype 'float64'; choose from: float32, float16, bfloat16, fp32, fp16, bf16$"),
        (cases.parse_dtypes, "fp64", "unknown dtype 'fp64'"),  # the compile gate's dtype, not the benchmarks'
        (cases.choices(tuple(cases.DTYPES), "dtype", cases.DTYPE_ALIASES), "fp8",
         "choose from: .*, float64, .*fp64"),
        (cases.parse_layouts, "nhwc", "unknown layout 'nhwc'"),
        (cases.parse_modes, "fwd,backward", "unknown mode 'backward'"),
        (cases.parse_providers, "cudnn", "unknown provider 'cudnn'"),
    ],
)
def test_parse_lists_reject_unknown_names(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_integers_parse_a_list_and_refuse_words_and_small_values():
    batches = cases.integers("batch sizes", 2)
    assert batches("64,2, 128") == [64, 2, 128]
    with pytest.raises(argparse.ArgumentTypeError, match="^expected comma-separated batch sizes, got '4,x'$"):
        batches("4,x")
    with pytest.raises(argparse.ArgumentTypeError, match="^batch sizes must be at least 2, got '64,1'$"):
        batches("64,1")
    with pytest.raises(argparse.ArgumentTypeError, match="SM counts must be at least 1"):
        cases.integers("SM counts")("-3")


def test_parse_shapes_groups_names_and_custom_dims():
    resnet = cases.parse_shapes("resnet50")
    assert [s.group for s in resnet] == [cases.RESNET50] * 12
    assert len(cases.parse_shapes("all")) == 16
    mixed = cases.parse_shapes("64x2048x7x7,3x5x7,extra,64x2048x7x7")
    assert mixed[0] == cases.shape_named("64x2048x7x7") and mixed[0].group == cases.RESNET50
    assert mixed[1] == cases.Shape((3, 5, 7), cases.CUSTOM)
    assert len(mixed) == 2 + 4


@pytest.mark.parametrize("token", ["resnet", "64", "64x0x3", "1x2x3x4x5x6", "4x-2", "4x2.5", ""])
def test_parse_shapes_rejects_unknown_names(token):
    with pytest.raises(argparse.ArgumentTypeError, match=f"unknown shape '{token}'; use a group"):
        cases.parse_shapes(token)
