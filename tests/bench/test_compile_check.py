"""The compile gate: launches recorded on fake tensors, Triton's specialisation, crash-proof workers,
the kernel report, the kernels' digest, and the CI subset compiled for sm_90 with the real compiler."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
import triton
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import fusedbn
from fusedbn.bench import compile_check, compile_worker, kernel_report
from fusedbn.bench.cases import DTYPES, FWDBWD, Shape, parse_shapes
from fusedbn.bench.compile_check import Case
from fusedbn.bench.core import TICKET_COUNTERS, LaunchLimits, launch_limits
from fusedbn.bench.fake_gpu import KernelCall, recording_launches
from fusedbn.kernels import forward

from .helpers import table_rows

SMALL = Shape((3, 5, 7, 6), "custom")


def _record_real(case: Case) -> list[dict]:
    """The launches of ``case`` made on real (small) CPU tensors, as a user's call makes them."""
    dtype = DTYPES[case.dtype]
    generator = torch.Generator().manual_seed(7)

    def tensor(shape, requires_grad=False):
        t = torch.randn(shape, generator=generator).to(dtype)
        if case.layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(requires_grad)

    channels = case.shape.num_channels
    params = [torch.rand(channels, generator=generator) + 0.5 for _ in range(4)]
    weight, bias = (p.requires_grad_(True) for p in params[:2])
    residual = tensor(case.shape.dims, True) if case.epilogue == "add_relu" else None
    with recording_launches(launch=False) as calls:
        with launch_limits(LaunchLimits(multiprocessors=case.multiprocessors)):
            y = fusedbn.fused_batch_norm(
                tensor(case.shape.dims, True), params[2], params[3], weight, bias,
                case.mode == FWDBWD, 0.1, 1e-5, residual=residual,
                activation=None if case.epilogue == "none" else "relu",
            )
            y.backward(torch.ones_like(y))
    return [compile_check.described(call) for call in calls]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("epilogue", compile_check.EPILOGUES)
@pytest.mark.parametrize("mode", compile_check.MODES)
@pytest.mark.parametrize("multiprocessors", [1, 132])
def test_fake_tensors_launch_what_real_tensors_launch(layout, epilogue, mode, multiprocessors):
    case = Case(SMALL, "float32", layout, epilogue, mode, multiprocessors)
    recorded = compile_check.record_case(case)
    assert recorded == _record_real(case)
    assert any(launch["kernel"].split(":")[1].startswith(("whole_channel", "partial")) for launch in recorded)


def test_resnet_sized_and_larger_inputs_are_never_allocated():
    """A terabyte of input: only fake tensors make recording it possible."""
    case = Case(Shape((4096, 1024, 256, 256), "custom"), "float32", "nchw", "add_relu", FWDBWD, 132)
    launches = compile_check.record_case(case)
    assert {launch["kernel"] for launch in launches} == {
        "fusedbn.kernels.forward:whole_channel_forward_kernel",
        "fusedbn.kernels.backward:whole_channel_backward_kernel",
    }


def test_recording_keeps_its_fake_ticket_counters_apart_from_real_calls():
    """The split path's ticket counters are cached per thread (tickets.py); those that a recorded
    (fake) call makes must not be the ones a later real call on this thread counts with."""
    split_shape = Shape((2, 4, 64, 65), "custom")  # 2 x 4160 per channel: 4 tiles of 4096
    x = torch.randn(split_shape.dims, generator=torch.Generator().manual_seed(8))
    before = dict(TICKET_COUNTERS)
    launches = compile_check.record_case(Case(split_shape, "float32", "nchw", "relu", FWDBWD, 132))
    assert any(launch["kernel"].endswith(":partial_sums_kernel") for launch in launches)  # the split path
    assert TICKET_COUNTERS == before
    with launch_limits(LaunchLimits(multiprocessors=132)):
        y = fusedbn.fused_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    expected = torch.nn.functional.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_describe_tells_aligned_from_misaligned_addresses():
    half = torch.empty(16, dtype=torch.float16)
    double = torch.empty(8, dtype=torch.float64)
    assert compile_check.describe(half) == {"dtype": "float16", "aligned": True}
    assert compile_check.describe(half[1:])["aligned"] is False
    assert compile_check.describe(half[8:])["aligned"] is True
    assert compile_check.describe(double[1:])["aligned"] is False
    assert compile_check.describe(double[2:])["aligned"] is True
    assert compile_check.describe(17) == 17 and compile_check.describe(0.5) == 0.5


def _partial_moments_launch(x: torch.Tensor, n_inner: int, stride_c: int) -> dict:
    arrivals, partial, statistics = torch.zeros(3, dtype=torch.int32), torch.empty(4, 2, 3), torch.empty(3)
    args = (arrivals, x, partial, *[statistics] * 5, 4, n_inner, 3, 4 * n_inner,
            3 * stride_c, stride_c, 1, 1, 5, 3, 0.1, 1e-5)
    kwargs = dict(BLOCK_C=1, BLOCK_N=4, BLOCK_S=8, CUMULATIVE=False, FINALIZE=True, UPDATE_RUNNING=False,
                  X_ALIGN=1, Y_ALIGN=1, M_ALIGN=1, num_warps=4)
    return compile_check.described(KernelCall(forward.partial_moments_kernel.fn, (3, 2), args, kwargs))


def test_launches_are_one_specialisation_exactly_when_triton_binds_them_alike():
    """Triton specialises an int on whether it is 1 and whether 16 divides it, and a tensor on its
    dtype and 16-byte alignment: 17 and 19 bind alike; 32, 1, 48 and a misaligned tensor do not."""
    x = torch.empty(64)
    launches = [
        _partial_moments_launch(x, 17, 17), _partial_moments_launch(x, 19, 19),
        _partial_moments_launch(x, 32, 17), _partial_moments_launch(x, 1, 17),
        _partial_moments_launch(x[1:], 17, 17), _partial_moments_launch(x, 17, 48),
    ]
    keys = [compile_check.triton_specialisation(launch) for launch in launches]
    assert keys[0] == keys[1]
    assert len(set(keys[1:])) == 5
    assert launches[4]["args"][1] == {"dtype": "float32", "aligned": False}


def test_a_binding_takes_its_targets_options_whatever_was_bound_before():
    """Triton keeps the binder and compile options of the first target a JITFunction binds for: the
    worker binds each target with a JITFunction of its own (sm_80 has no fp8e4nv, sm_90 has)."""
    task = compile_check.task_for(_partial_moments_launch(torch.empty(64), 17, 17), 90)
    options = {cc: compile_worker.bind({**task, "capability": cc})[1]["options"] for cc in (90, 80, 90)}
    assert "fp8e4nv" in options[90].supported_fp8_dtypes
    assert "fp8e4nv" not in options[80].supported_fp8_dtypes


def _small_grid() -> list[Case]:
    return compile_check.grid_cases(
        [SMALL, Shape((64, 256, 56, 56), "resnet50"), Shape((64, 1024, 14, 14), "resnet50")],
        ["float16", "float32", "float64"], ["nchw", "channels_last"], compile_check.EPILOGUES,
        compile_check.MODES, [132],
    )  # fmt: skip


def test_representative_subset_covers_every_combination_and_the_regressions():
    cases = _small_grid()
    specs, per_case = compile_check.collect_specialisations(cases)
    chosen = compile_check.representative_subset(specs, cases)
    assert len(chosen) < len(specs) / 2

    def combinations(indices):
        return {
            (specs[i].kernel, cases[c].epilogue, compile_check.dtype_class(cases[c].dtype),
             cases[c].layout)
            for i in indices for c in specs[i].cases
        }

    assert combinations(chosen) == combinations(range(len(specs)))
    for index, case in enumerate(cases):
        key = (case.shape.name, case.dtype, case.layout, case.epilogue, case.mode,
               case.multiprocessors)
        if key in compile_check.REGRESSION_CASES:
            assert set(per_case[index]) <= set(chosen), case.label


def test_crash_error_and_timeout_are_results_and_the_run_goes_on(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)  # the workers import tests.bench.broken_kernels
    small = _partial_moments_launch(torch.empty(64), 16, 16)
    task = compile_check.task_for(small, 90)
    tasks = [
        ((0, 90), {**task, "kernel": "tests.bench.broken_kernels:segfault_kernel"}),
        ((1, 90), {"kernel": "tests.bench.broken_kernels:failing_kernel", "grid": [1],
                   "args": [{"dtype": "float32", "aligned": True}], "kwargs": {"BLOCK": 4},
                   "capability": 90}),
        ((2, 80), compile_check.task_for(small, 80)),
        ((3, 90), {**task, "kernel": "tests.bench.broken_kernels:hanging_kernel"}),
    ]
    seen = []
    results, triton_info = compile_check.compile_all(
        tasks, site=None, jobs=2, timeout=12.0, progress=lambda done, total, counts: seen.append(done)
    )
    assert results[(0, 90)]["status"] == "crash" and results[(0, 90)]["signal"] == "SIGSEGV"
    assert results[(1, 90)]["status"] == "error"
    assert "never compiles" in results[(1, 90)]["error"]
    assert results[(2, 80)]["status"] == "ok" and results[(2, 80)]["registers"] > 0
    assert results[(3, 90)]["status"] == "timeout"
    assert triton_info["triton"] == triton.__version__
    assert sorted(seen) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "argv, message",
    [(["--site", "{tmp}"], "holds no triton package"), (["--targets", "75"], "unknown target 75"),
     (["--modes", "train"], "unknown mode 'train'; choose from: fwdbwd, eval"),
     (["--dtypes", "fp8"], "unknown dtype 'fp8'"),
     (["--multiprocessors", "0"], "SM counts must be at least 1, got '0'")],
)  # fmt: skip
def test_bad_options_are_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        compile_check.main([*(a.format(tmp=tmp_path) for a in argv), "--out", str(out)])
    assert exit_info.value.code == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert message in error and error.startswith("python -m fusedbn.bench.compile_check: error:")
    assert not out.exists()


@pytest.mark.parametrize(
    "shape, layout, dtype, expected",
    [("64x1024x14x14", "nchw", "float16", 8), ("64x2048x7x7", "nchw", "float16", 2),
     ("64x2048x7x7", "nchw", "float32", 4), ("64x256x56x56", "nchw", "float16", 16),
     ("64x24x7x7", "channels_last", "float16", 16), ("64x20x7x7", "channels_last", "float32", 16),
     ("64x20x7x7", "channels_last", "float16", 8), ("4096x100", "nchw", "float32", 16)],
)
def test_row_alignment(shape, layout, dtype, expected):
    assert kernel_report.row_alignment(shape, layout, dtype) == expected


def test_scalar_reason_says_why_or_flags_a_missed_vector():
    scalar = {("x", "load"): {16}, ("mask", "load"): {8}, ("y", "store"): {16}}
    why = kernel_report.scalar_reason("64x2048x7x7", "float16", "nchw", scalar)
    assert "49 elements are 98 bytes, 2-byte aligned" in why and "x, y scalar" in why
    missed = kernel_report.scalar_reason("64x1024x14x14", "float16", "nchw", scalar)
    assert "although" in missed and "8-byte aligned" in missed
    vector = {("x", "load"): {64}, ("mask", "load"): {8}, ("y", "store"): {64}}
    assert kernel_report.scalar_reason("64x1024x14x14", "float16", "nchw", vector) is None


def test_ci_subset_compiles_for_sm_90_without_crash_error_or_spill(tmp_path):
    """The CI subset: each kernel x epilogue x dtype class x layout of the ResNet-50 grid on an H100
    at least once, and every specialisation of the REGRESSION_CASES, compiled for sm_90; its 14x14
    half-precision NCHW tiles use vector access (rows of 196 elements are 8-byte aligned), and the
    report renders. Half precision only: the 32- and 64-bit dtype classes are left to the full sweep,
    which the test below requires to be of today's kernels. One test, so that pytest-xdist does not
    compile the subset twice."""
    cases = compile_check.grid_cases(
        parse_shapes("resnet50"), ["float16"], ["nchw", "channels_last"],
        compile_check.EPILOGUES, compile_check.MODES, [compile_check.MULTIPROCESSORS["h100"]],
    )
    gate = compile_check.run_gate(cases, [90], jobs=2, subset=True)
    assert gate["specialisations"], "nothing compiled"
    assert kernel_report.failures(gate) == []
    assert gate["kernels_digest"] == compile_check.kernels_digest() and gate["commit"]
    assert all(s["results"]["90"]["sass_agrees"] for s in gate["specialisations"])

    accesses, failed = kernel_report.case_widths(gate, "90")[("64x1024x14x14", "float16", "nchw")]
    assert failed == 0
    data = {key: widths for key, widths in accesses.items() if key[0] != "mask"}
    assert {"x", "dy", "dx", "y"} <= {tensor for tensor, _ in data}
    assert all(min(widths) >= 64 for widths in data.values()), data

    (tmp_path / f"triton-{gate['triton']}.json").write_text(json.dumps(gate), encoding="utf-8")
    text = kernel_report.write_report(tmp_path).read_text(encoding="utf-8")
    rows = table_rows(text)
    assert [gate["triton"], "sm_90", str(len(gate["specialisations"]))] in [row[:3] for row in rows]
    assert "None: every specialisation compiled, none spills at its register limit." in text
    assert ["64x1024x14x14", "float16", "nchw", "8"] in [row[:4] for row in rows]


ROOT = Path(__file__).resolve().parents[2]


def test_every_supported_triton_passed_the_full_sweep_of_todays_kernels():
    """setup.py's Triton range holds exactly the minor versions whose full sweep is committed, each
    sweep compiled everything for sm_80, sm_90 and sm_100 without a problem, and each swept the kernels
    of today: the digest it recorded (or, for a sweep made before it recorded one, the digest of the
    kernels at its commit, read with git) is today's."""
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    supported = SpecifierSet(re.search(r'"triton([^"]+)"', setup).group(1))
    # The newest full sweep: benchmarks/results/<date>-compile-gate (benchmarks/compile_check.sh).
    folder = sorted((ROOT / "benchmarks" / "results").glob("*-compile-gate"))[-1]
    today = compile_check.kernels_digest()
    sweeps = {}
    for path in sorted(folder.glob("triton-*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        version = Version(report["triton"])
        assert version in supported, f"{path.name}: Triton {version} is outside {supported}"
        assert not report["subset"] and report["targets"] == list(compile_check.TARGETS), path.name
        assert kernel_report.failures(report) == [], path.name
        if "kernels_digest" in report:
            swept = report["kernels_digest"]
        elif not (ROOT / ".git").exists():
            pytest.skip(f"{path.name} predates kernels_digest and this copy has no git history to read the "
                        f"kernels of its commit {report['commit']}")  # fmt: skip
        else:
            swept = compile_check.kernels_digest(report["commit"])
        assert swept == today, (
            f"{path.name} swept other kernels than today's (commit {report['commit']}): run "
            "bash benchmarks/compile_check.sh again"
        )
        sweeps[(version.major, version.minor)] = report
    lower = min(s.version for s in supported if s.operator == ">=")
    upper = min(s.version for s in supported if s.operator == "<")
    low, high = Version(lower), Version(upper)
    wanted = {(low.major, minor) for minor in range(low.minor, high.minor)}
    assert low.major == high.major and set(sweeps) == wanted


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip()


def test_the_kernels_digest_follows_their_code_not_their_prose(tmp_path, monkeypatch):
    """A changed statement changes the digest; a changed docstring or comment, or launcher.py, does
    not; the digest at a commit (git) is the digest of the files as they were then."""
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    monkeypatch.setattr(compile_check, "KERNEL_SOURCES", kernels)
    source = '"""Kernels."""\n\n\ndef tile(x):\n    """Doubles."""\n    return 2 * x  # twice\n'
    (kernels / "forward.py").write_text(source)
    (kernels / "launcher.py").write_text("SPEED = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "one")
    first = _git(tmp_path, "rev-parse", "HEAD")
    digest = compile_check.kernels_digest()
    assert compile_check.kernels_digest(first) == digest
    (kernels / "forward.py").write_text(source.replace("Doubles.", "Twice x.").replace("# twice", "# 2x"))
    (kernels / "launcher.py").write_text("SPEED = 2\n")
    assert compile_check.kernels_digest() == digest
    (kernels / "forward.py").write_text(source.replace("2 * x", "x + x"))
    changed = compile_check.kernels_digest()
    assert changed != digest
    _git(tmp_path, "commit", "-q", "-am", "two")
    assert compile_check.kernels_digest(_git(tmp_path, "rev-parse", "HEAD")) == changed
    assert compile_check.kernels_digest(first) == digest
    with pytest.raises(ValueError, match="uncommitted changes"):
        compile_check.kernels_digest(first + "-dirty")


def _compiled(registers: int, num_warps: int, spill_stores: int, at_o1: int = 0) -> dict:
    return {"status": "ok", "registers": registers, "num_warps": num_warps,
            "register_limit": compile_worker.register_limit(num_warps), "spill_stores": spill_stores,
            "stack_bytes": 8 * spill_stores, "local_bytes": 0, "spill_bytes_at_o1": at_o1}


def test_spills_at_the_register_limit_fail_the_gate_occupancy_spills_do_not():
    assert compile_worker.register_limit(4) == 255 and compile_worker.register_limit(8) == 255
    assert compile_worker.register_limit(16) == 128 and compile_worker.register_limit(32) == 64
    at_limit = _compiled(255, 4, 1)
    assert kernel_report.spills_for_lack_of_registers(at_limit)
    assert "spill at the register limit" in kernel_report.problem(at_limit)
    assert kernel_report.spills_for_lack_of_registers(_compiled(128, 16, 2))
    assert kernel_report.spills_for_lack_of_registers(_compiled(64, 8, 1, at_o1=4))
    for occupancy in (_compiled(64, 8, 1), _compiled(40, 16, 1), _compiled(128, 4, 1)):
        assert kernel_report.occupancy_spills(occupancy)
        assert kernel_report.problem(occupancy) is None
    assert not kernel_report.spills(_compiled(255, 8, 0))
    assert kernel_report.problem({"status": "crash", "signal": "SIGSEGV"}) == "crash SIGSEGV"
