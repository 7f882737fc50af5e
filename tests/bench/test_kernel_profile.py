"""The per-kernel profile pass: which cases and providers it profiles, its budget, its outputs."""

import csv

import torch

from fusedbn.bench import kernel_profile
from fusedbn.bench.cases import CUSTOM, RESNET50, Shape
from fusedbn.bench.profiling import KernelTime
from fusedbn.bench.providers import unavailable_reason

SMALL_RESNET_SHAPE = Shape((4, 8, 6, 6), RESNET50, 1)
OTHER_SHAPE = Shape((4, 8, 6, 6), CUSTOM)


def _fake_profiler(seen):
    def profiler(call, device, calls):
        grads = call()  # the fwd+bwd call: gradients of input, weight and bias
        seen.append(tuple(g.shape for g in grads))
        return [KernelTime("apply_kernel", 5.0 * len(seen), 2.0, True), KernelTime("gemm", 1.0, 1.0, False)]

    return profiler


def test_profiles_resnet_shapes_for_every_available_provider(tmp_path):
    seen = []
    rows, left_out = kernel_profile.profile_cases(
        [OTHER_SHAPE, SMALL_RESNET_SHAPE], ["float32"], ["nchw", "channels_last"], torch.device("cpu"),
        budget_s=60.0, profiler=_fake_profiler(seen),
    )  # fmt: skip
    providers = [p for p in kernel_profile.PROFILED_PROVIDERS if unavailable_reason(p) is None]
    assert left_out == 0
    assert seen == [((4, 8, 6, 6), (8,), (8,))] * (2 * len(providers))
    assert [(r.layout, r.provider) for r in rows[::2]] == [
        (lay, p) for lay in ("nchw", "channels_last") for p in providers
    ]
    assert {r.shape for r in rows} == {SMALL_RESNET_SHAPE.name}

    path = tmp_path / kernel_profile.KERNELS_FILE
    kernel_profile.write_kernel_rows(rows, path)
    with path.open() as handle:
        written = list(csv.DictReader(handle))
    assert [(w["provider"], w["kernel"], float(w["device_us"])) for w in written[:2]] == [
        (providers[0], "apply_kernel", 5.0),
        (providers[0], "gemm", 1.0),
    ]
    summary = kernel_profile.format_kernel_summary(rows, left_out)
    assert "4x8x6x6 float32 nchw" in summary and f"{providers[0]:<9}      6.0 us: apply_kernel 5.0" in summary


def test_budget_leaves_cases_out():
    seen = []
    rows, left_out = kernel_profile.profile_cases(
        [SMALL_RESNET_SHAPE], ["float32", "bfloat16"], ["nchw"], torch.device("cpu"), budget_s=0.0,
        profiler=_fake_profiler(seen),
    )  # fmt: skip
    assert (rows, left_out, seen) == ([], 2, [])
    assert "2 cases left out" in kernel_profile.format_kernel_summary(rows, left_out)
