"""The custom operators (schema, fake implementations, autograd) and compiled and exported models.

Compiled and exported code runs the operators where fusedbn's kernels run, and torch's BatchNorm,
which the compiler lowers itself, on the torch CPU path; either way with the numbers and running
statistics of eager code.
"""

import copy
import subprocess
import sys

import pytest
import torch
from helpers import KERNELS_ON_CPU, PATH_LIMITS
from torch import nn

import fusedbn
from fusedbn.ops import backward_op, forward_op


class _ResidualBlock(nn.Module):
    """conv -> BN -> (+ input) -> ReLU, with the add and the ReLU fused into the BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = fusedbn.FusedBatchNorm2d(channels, activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x), x)


def _small_net(device: torch.device, momentum: float | None = 0.1) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        _ResidualBlock(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10, bias=False),
        fusedbn.FusedBatchNorm1d(10, momentum=momentum),
    )
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return net.to(device)


def _runs_the_operator(device: torch.device) -> bool:
    return device.type == "cuda" or KERNELS_ON_CPU


@pytest.mark.kernels
@pytest.mark.parametrize("use_batch_stats", [True, False])
@pytest.mark.parametrize("fused_epilogue", [False, True], ids=["plain", "residual_relu"])
def test_opcheck_forward_and_backward(device, use_batch_stats, fused_epilogue):
    x = torch.randn(4, 3, 5, 7, device=device) + 3.0
    residual = torch.randn_like(x) if fused_epilogue else None
    weight = (torch.rand(3, device=device) + 0.5).requires_grad_()
    bias = torch.randn(3, device=device).requires_grad_()
    running_mean = torch.randn(3, device=device)
    running_var = torch.rand(3, device=device) + 0.5
    count = torch.tensor(4, device=device)
    for momentum, counter in ((0.1, None), (None, count)):
        torch.library.opcheck(
            forward_op,
            (x.requires_grad_(), weight, bias, residual, running_mean, running_var, counter,
             use_batch_stats, momentum, 1e-5, fused_epilogue),
        )
    relu_mask = forward_op(x, weight, bias, residual, None, None, None, True, 0.1, 1e-5,
                           fused_epilogue)[3]
    mean = x.detach().mean(dim=(0, 2, 3))
    invstd = torch.rsqrt(x.detach().var(dim=(0, 2, 3), unbiased=False) + 1e-5)
    grad_output = torch.randn_like(x)
    torch.library.opcheck(
        backward_op,
        (grad_output, x.detach(), weight.detach(), mean, invstd, use_batch_stats, True,
         relu_mask if fused_epilogue else None, fused_epilogue),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("momentum", [0.1, None])
def test_compile_fullgraph_matches_eager(device, momentum):
    if momentum is None and not _runs_the_operator(device):
        pytest.skip("torch's own BatchNorm with momentum=None does not compile with fullgraph")
    eager = _small_net(device, momentum)
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net, fullgraph=True)
    for step in range(2):
        x = torch.randn(5, 3, 6, 6, device=device) + 2.0
        grad = torch.randn(5, 10, device=device)
        y_eager = eager(x)
        y_compiled = compiled(x)
        torch.testing.assert_close(y_compiled, y_eager, rtol=1e-4, atol=1e-4)
        y_eager.backward(grad)
        y_compiled.backward(grad)
        for (name, p_eager), p_compiled in zip(
            eager.named_parameters(), compiled_net.parameters(), strict=True
        ):
            torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-4,
                                       msg=f"step {step}: gradient of {name}")
    for (name, b_eager), b_compiled in zip(
        eager.named_buffers(), compiled_net.buffers(), strict=True
    ):
        torch.testing.assert_close(b_compiled, b_eager, rtol=1e-5, atol=1e-6,
                                   msg=f"buffer {name}")
    assert int(compiled_net[5].num_batches_tracked) == 2

    eager.eval()
    compiled_net.eval()
    x = torch.randn(5, 3, 6, 6, device=device)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-4)


def test_torch_own_momentum_none_does_not_compile_with_fullgraph():
    """Why the torch path is not asked to: torch's own BatchNorm reads num_batches_tracked on the
    host for the cumulative average (if torch learns to, fusedbn's torch path should follow)."""
    module = torch.compile(nn.BatchNorm1d(4, momentum=None), fullgraph=True)
    with pytest.raises(Exception, match="data-dependent"):
        module(torch.randn(3, 4))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_export_runs_the_implementation_of_this_path(device, training):
    net = _small_net(device)
    net(torch.randn(6, 3, 6, 6, device=device))  # give the running statistics some history
    net.train(training)
    x = torch.randn(2, 3, 6, 6, device=device)
    reference = copy.deepcopy(net)
    exported = torch.export.export(net, (x,))
    code = exported.graph_module.code
    if _runs_the_operator(device):
        assert "fusedbn.batch_norm_forward" in code
    else:
        assert "fusedbn" not in code and "batch_norm" in code
    torch.testing.assert_close(exported.module()(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["single", "split"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compiled_programs_launch_the_kernels_themselves(path, dynamic):
    """On the fake GPU (compiled kernels, launches stubbed): the program torch.compile traces holds
    fusedbn's kernel launches (wrap_triton's nodes), forward and backward, not an opaque call; the
    launch plan specialises dynamic shapes. Runs where the kernels are not interpreted: the torch
    CPU path (the interpreter's kernels call interpreted helpers, which the compiler cannot read)."""
    if KERNELS_ON_CPU:
        pytest.skip("Triton's interpreter's kernels cannot be traced: the torch CPU path runs this")
    from torch._functorch.aot_autograd import aot_module_simplified

    from fusedbn.bench.fake_gpu import fake_gpu
    from fusedbn.kernels.layout import launch_limits

    graphs = {}

    def keep_graphs(gm, example_inputs):
        def keep(name):
            def compiler(graph, inputs):
                graphs[name] = graph
                return graph.forward
            return compiler

        return aot_module_simplified(gm, example_inputs, fw_compiler=keep("forward"),
                                     bw_compiler=keep("backward"))

    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False),
                          fusedbn.FusedBatchNorm2d(4, activation="relu", backend="triton"))
    with fake_gpu(), launch_limits(PATH_LIMITS[path]):
        compiled = torch.compile(model, backend=keep_graphs, fullgraph=True, dynamic=dynamic)
        compiled(torch.randn(6, 3, 9, 9)).sum().backward()
    launches = {name: [n for n in graph.graph.nodes if "triton_kernel_wrapper" in str(n.target)]
                for name, graph in graphs.items()}
    expected = 2 if path == "split" else 1
    assert {name: len(found) for name, found in launches.items()} == {"forward": expected,
                                                                       "backward": expected}
    assert not any("fusedbn" in str(n.target) for g in graphs.values() for n in g.graph.nodes)


@pytest.mark.cuda
@pytest.mark.parametrize("fused_epilogue", [False, True], ids=["plain", "residual_relu"])
def test_opcheck_of_the_operators_inductor_launches(fused_epilogue):
    """The triton_op forms, checked eagerly and through AOTDispatcher on a GPU (the fake GPU's
    stubbed launches compute nothing to compare)."""
    from fusedbn.ops import inductor_forward_op

    x = (torch.randn(4, 3, 5, 7, device="cuda") + 3.0).requires_grad_()
    residual = torch.randn_like(x) if fused_epilogue else None
    weight = (torch.rand(3, device="cuda") + 0.5).requires_grad_()
    torch.library.opcheck(
        inductor_forward_op,
        (x, weight, torch.randn(3, device="cuda"), residual, torch.randn(3, device="cuda"),
         torch.rand(3, device="cuda") + 0.5, None, True, 0.1, 1e-5, fused_epilogue),
    )


_COMPILE_IN_A_NEW_PROCESS = """
import copy
import sys

import torch

import fusedbn

assert "torch._dynamo" not in sys.modules, "import fusedbn imported torch's compiler"
assert "fusedbn.ops" not in sys.modules, "import fusedbn imported fusedbn.ops"
torch.manual_seed(0)
eager = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False),
                            fusedbn.FusedBatchNorm2d(4, activation="relu"))
compiled_net = copy.deepcopy(eager)
compiled = torch.compile(compiled_net, backend="aot_eager", fullgraph=True)
x = torch.randn(5, 3, 7, 7) + 2.0
torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-4)
torch.testing.assert_close(compiled_net[1].running_var, eager[1].running_var, rtol=1e-5, atol=1e-6)
assert "fusedbn.ops" in sys.modules
"""


def test_import_leaves_the_compiler_out_until_a_compiled_model_first_runs():
    """``import fusedbn`` does not import torch's compiler (about a second); a model compiled in a
    new process imports fusedbn's operators while the compiler traces it and matches eager code."""
    result = subprocess.run([sys.executable, "-c", _COMPILE_IN_A_NEW_PROCESS], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
