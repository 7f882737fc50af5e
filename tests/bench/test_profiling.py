"""Which profiled kernels count as BatchNorm's, the per-call kernel summary, and the per-op suite's
kernel profile: which cases and providers it profiles, its budget, its outputs."""

import csv
import math

import pytest
import torch

import fusedbn
from fusedbn.bench import profiling
from fusedbn.bench.cases import CUSTOM, RESNET50, Shape
from fusedbn.bench.core import KERNEL_NAMES
from fusedbn.bench.profiling import KernelTime, batchnorm_share, kernel_times, summarise
from fusedbn.bench.providers import unavailable_reason


@pytest.mark.parametrize(
    "name",
    [
        *KERNEL_NAMES,
        "void at::native::batch_norm_collect_statistics_kernel<float, float, float, int>(...)",
        "void at::native::batch_norm_backward_reduce_kernel<c10::BFloat16, float, float, int>(...)",
        "void cudnn::bn_fw_tr_1C11_kernel_NCHW<__half, float, 512, true, 1>(...)",
        "void cudnn::bn_bw_1C11_kernel_new<__half, float, float2, 512, true, 1>(...)",
        "triton_red_fused__native_batch_norm_legit_functional_3",
        "batch_norm_forward_kernel",
        "void at::native::(anonymous namespace)::welford_kernel(...)",
    ],
)
def test_batchnorm_kernels_are_recognised(name):
    assert summarise([(name, 10.0, 2)], calls=1)[0].batchnorm


@pytest.mark.parametrize(
    "name",
    [
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(...)",
        "Memcpy DtoD (Device -> Device)",
        "void at::native::(anonymous namespace)::fused_sgd_kernel(...)",
        "triton_poi_fused_convolution_backward_0",
    ],
)
def test_other_kernels_are_not(name):
    assert not summarise([(name, 10.0, 2)], calls=1)[0].batchnorm


def test_summary_is_per_call_and_longest_first():
    rows = summarise([("a_gemm", 30.0, 4), ("apply_kernel", 90.0, 8), ("b_copy", 60.0, 2)], calls=2)
    assert [(r.name, r.device_us, r.launches) for r in rows] == [
        ("apply_kernel", 45.0, 4.0),
        ("b_copy", 30.0, 1.0),
        ("a_gemm", 15.0, 2.0),
    ]
    assert batchnorm_share(rows) == pytest.approx(90.0 / 180.0)


def test_no_kernels_give_no_share():
    assert math.isnan(batchnorm_share([]))
    # The CPU has no device kernels to profile: nothing is run and nothing reported.
    calls = []
    assert kernel_times(lambda: calls.append(1), torch.device("cpu"), 3) == []
    assert calls == []


@pytest.mark.cuda
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batchnorm_kernels_of_torch_and_fusedbn_are_found_on_cuda(dtype, memory_format):
    device = torch.device("cuda")
    x = torch.randn(8, 16, 12, 12, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    x.requires_grad_(True)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, device=device, dtype=dtype)
    for module in (torch.nn.BatchNorm2d(16, device=device), fusedbn.FusedBatchNorm2d(16, device=device)):

        def step(module=module):
            return torch.autograd.grad(module(conv(x)).float().square().sum(), (x, module.weight))

        step()
        kernels = kernel_times(step, device, calls=2)
        names = [k.name for k in kernels if k.batchnorm]
        assert names, [k.name for k in kernels]
        assert 0 < batchnorm_share(kernels) < 1  # the convolution's kernels are not BatchNorm's
        if isinstance(module, fusedbn.FusedBatchNorm2d):
            assert any(name.split("(")[0] in KERNEL_NAMES for name in names), names


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
    rows, left_out = profiling.profile_cases(
        [OTHER_SHAPE, SMALL_RESNET_SHAPE], ["float32"], ["nchw", "channels_last"], torch.device("cpu"),
        budget_s=60.0, profiler=_fake_profiler(seen),
    )  # fmt: skip
    providers = [p for p in profiling.PROFILED_PROVIDERS if unavailable_reason(p) is None]
    assert left_out == 0
    assert seen == [((4, 8, 6, 6), (8,), (8,))] * (2 * len(providers))
    assert [(r.layout, r.provider) for r in rows[::2]] == [
        (lay, p) for lay in ("nchw", "channels_last") for p in providers
    ]
    assert {r.shape for r in rows} == {SMALL_RESNET_SHAPE.name}

    path = tmp_path / profiling.KERNELS_FILE
    profiling.write_kernel_rows(rows, path)
    with path.open() as handle:
        written = list(csv.DictReader(handle))
    assert [(w["provider"], w["kernel"], float(w["device_us"])) for w in written[:2]] == [
        (providers[0], "apply_kernel", 5.0),
        (providers[0], "gemm", 1.0),
    ]
    summary = profiling.format_kernel_summary(rows, left_out)
    first = next(line for line in summary.splitlines() if line.startswith("| 4x8x6x6"))
    assert [cell.strip() for cell in first.strip("|").split("|")] == [
        "4x8x6x6 float32 nchw", providers[0], "6.0", "apply_kernel 5.0, gemm 1.0"
    ]


def test_budget_leaves_cases_out():
    seen = []
    rows, left_out = profiling.profile_cases(
        [SMALL_RESNET_SHAPE], ["float32", "bfloat16"], ["nchw"], torch.device("cpu"), budget_s=0.0,
        profiler=_fake_profiler(seen),
    )  # fmt: skip
    assert (rows, left_out, seen) == ([], 2, [])
    assert "2 cases left out" in profiling.format_kernel_summary(rows, left_out)
