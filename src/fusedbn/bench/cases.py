"""What the benchmark measures: shapes, dtypes, layouts, modes, providers, and the bytes each case moves.

Shapes come in named groups: ``resnet50`` holds every distinct BatchNorm input of torchvision's ResNet-50
(v1.5) at batch 64 on 224x224 images, each with the number of its 53 BatchNorm layers that see it (``fusedbn
bench --list``); ``extra`` the cases peers get wrong; ``smoke`` tiny shapes for the CPU check. Any other
``NxCx...`` string (2 to 5 dims) is a custom shape.
"""

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shape:
    """A BatchNorm input shape (N, C, ...), the group it belongs to, and its ResNet-50 layer count."""

    dims: tuple[int, ...]
    group: str
    layers: int = 0

    @property
    def name(self) -> str:
        return "x".join(str(d) for d in self.dims)

    @property
    def numel(self) -> int:
        return math.prod(self.dims)

    @property
    def num_channels(self) -> int:
        return self.dims[1]


RESNET50 = "resnet50"
EXTRA = "extra"
SMOKE = "smoke"
CUSTOM = "custom"

SHAPES: tuple[Shape, ...] = (
    Shape((64, 64, 112, 112), RESNET50, 1),
    Shape((64, 64, 56, 56), RESNET50, 6),
    Shape((64, 256, 56, 56), RESNET50, 4),
    Shape((64, 128, 56, 56), RESNET50, 1),
    Shape((64, 128, 28, 28), RESNET50, 7),
    Shape((64, 512, 28, 28), RESNET50, 5),
    Shape((64, 256, 28, 28), RESNET50, 1),
    Shape((64, 256, 14, 14), RESNET50, 11),
    Shape((64, 1024, 14, 14), RESNET50, 7),
    Shape((64, 512, 14, 14), RESNET50, 1),
    Shape((64, 512, 7, 7), RESNET50, 5),
    Shape((64, 2048, 7, 7), RESNET50, 4),
    # Few channels, huge spatial size: one program per channel cannot fill the GPU.
    Shape((32, 16, 256, 256), EXTRA),
    # Many channels, tiny spatial size.
    Shape((256, 2048, 7, 7), EXTRA),
    # BatchNorm1d on (N, C) with a large N.
    Shape((65536, 256), EXTRA),
    # BatchNorm3d: a 3D ResNet's first stage, batch 8 of 16-frame 112x112 clips after the stride-2 stem.
    Shape((8, 64, 16, 56, 56), EXTRA),
    Shape((4, 8, 6, 6), SMOKE),
    Shape((64, 16), SMOKE),
    Shape((2, 4, 3, 4, 4), SMOKE),
)

# Group names usable in --shapes; "all" is every GPU shape.
SHAPE_GROUPS: dict[str, tuple[str, ...]] = {RESNET50: (RESNET50,), EXTRA: (EXTRA,), SMOKE: (SMOKE,),
                                             "all": (RESNET50, EXTRA)}  # fmt: skip

# Shapes with at least this many elements are "large": the bandwidth target applies to them.
LARGE_NUMEL = 1 << 24

# The input dtypes fusedbn takes; the benchmarks time the first three, the compile gate compiles all four.
BENCH_DTYPES = ("float32", "float16", "bfloat16")
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in (*BENCH_DTYPES, "float64")}
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}

# nchw: contiguous (N, C, ...); channels_last: channels are the innermost dim (torch.channels_last
# for 4D, channels_last_3d for 5D). For 2D (N, C) input both are the same memory, so only nchw runs.
LAYOUTS = (NCHW, CHANNELS_LAST) = ("nchw", "channels_last")

# fwd: training forward; bwd: backward of a training forward; fwdbwd: both; eval: forward with
# running statistics. The compile gate records fwdbwd and eval calls.
MODES = (FWD, BWD, FWDBWD, EVAL) = ("fwd", "bwd", "fwdbwd", "eval")

# fusedbn's module running its kernels (backend="triton", wherever they run); fusedbn's module as
# users get it (backend="auto": the cost model's choice per call); torch.nn.BatchNorm as torch runs
# it (cuDNN or native); FlagGems' Triton batch_norm (pip flag-gems), where it imports; torch.compile
# of torch's module.
PROVIDERS = (FUSEDBN, AUTO, EAGER, FLAG_GEMS, COMPILE) = ("fusedbn", "auto", "eager", "flag_gems", "compile")

# How many full passes over an input-sized tensor each mode needs at the least: forward reads x and
# writes y; backward reads x and dy and writes dx. Per-channel parameters and statistics are left
# out: they are C elements against N*C*H*W.
TENSOR_PASSES = {FWD: 2, BWD: 3, FWDBWD: 5, EVAL: 2}


def minimal_bytes(shape: Shape, dtype: str, mode: str) -> int:
    """The fewest bytes of DRAM traffic a BatchNorm of ``shape`` in ``mode`` can move."""
    return TENSOR_PASSES[mode] * shape.numel * DTYPES[dtype].itemsize


def layout_applies(shape: Shape, layout: str) -> bool:
    """Whether ``layout`` is a distinct memory layout for ``shape`` (channels_last needs spatial dims)."""
    return layout == NCHW or len(shape.dims) > 2


def random_tensor(
    shape: Shape, dtype: str, layout: str, device: torch.device | str, seed: int, offset: float = 0.0
) -> torch.Tensor:
    """Normal random data (scaled by 2, shifted by ``offset``) of ``shape`` in ``layout`` on ``device``."""
    dims = shape.dims
    channels_last = layout == CHANNELS_LAST
    # channels_last: allocated with channels innermost, then viewed back as (N, C, ...).
    physical = (dims[0], *dims[2:], dims[1]) if channels_last else dims
    generator = torch.Generator(device=device).manual_seed(seed)
    data = torch.randn(physical, generator=generator, device=device, dtype=torch.float32)
    data = (data * 2.0 + offset).to(DTYPES[dtype])
    return data.movedim(-1, 1) if channels_last else data


def choices(
    allowed: tuple[str, ...], what: str, aliases: dict[str, str] | None = None
) -> Callable[[str], list[str]]:
    """A parser (and argparse ``type``) of comma-separated names from ``allowed`` (or their ``aliases``): the
    names without repeats, in order; an unknown name is an ArgumentTypeError naming it."""
    aliases = {alias: name for alias, name in (aliases or {}).items() if name in allowed}

    def parse(text: str) -> list[str]:
        names = [aliases.get(raw.strip(), raw.strip()) for raw in text.split(",")]
        for name in names:
            if name not in allowed:
                known = ", ".join((*allowed, *aliases))
                raise argparse.ArgumentTypeError(f"unknown {what} {name!r}; choose from: {known}")
        return list(dict.fromkeys(names))

    return parse


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """A parser (and argparse ``type``) of a positive ``kind`` (int or float); else an ArgumentTypeError."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def integers(what: str, minimum: int = 1) -> Callable[[str], list[int]]:
    """A parser (and argparse ``type``) of comma-separated integers, each at least ``minimum``; else an
    ArgumentTypeError naming ``what`` they are."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, got {text!r}")
        return values

    return parse


parse_dtypes = choices(BENCH_DTYPES, "dtype", DTYPE_ALIASES)
parse_layouts = choices(LAYOUTS, "layout")
parse_modes = choices(MODES, "mode")
parse_providers = choices(PROVIDERS, "provider")


def shape_named(name: str) -> Shape:
    """The registered shape called ``name``, or a custom one for an ``NxCx...`` name."""
    return parse_shapes(name)[0]


def parse_shapes(text: str) -> list[Shape]:
    """Comma-separated shape groups (resnet50, extra, smoke, all) and NxCx... shapes, in order."""
    by_name = {s.name: s for s in SHAPES}
    chosen: list[Shape] = []
    for raw in text.split(","):
        token = raw.strip()
        if token in SHAPE_GROUPS:
            found = [s for s in SHAPES if s.group in SHAPE_GROUPS[token]]
        elif token in by_name:
            found = [by_name[token]]
        else:
            dims = token.split("x")
            if not 2 <= len(dims) <= 5 or not all(d.isdigit() and int(d) > 0 for d in dims):
                raise argparse.ArgumentTypeError(
                    f"unknown shape {token!r}; use a group ({', '.join(SHAPE_GROUPS)}) or "
                    f"positive dims joined by 'x', 2 to 5 of them, such as 64x256x56x56"
                )
            found = [Shape(tuple(map(int, dims)), CUSTOM)]
        chosen.extend(s for s in found if s not in chosen)
    return chosen
