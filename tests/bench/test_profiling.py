"""Which profiled kernels count as BatchNorm's, and the per-call kernel summary."""

import math

import pytest
import torch

import fusedbn
from fusedbn.bench.profiling import FUSEDBN_KERNELS, batchnorm_share, kernel_times, summarise


@pytest.mark.parametrize(
    "name",
    [
        *FUSEDBN_KERNELS,
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
            assert any(name.split("(")[0] in FUSEDBN_KERNELS for name in names), names
