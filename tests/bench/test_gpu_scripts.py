"""The GPU run's scripts do what they say: run with a fake ``python`` that logs each call, the GPU check
runs every step with options the benchmarks accept, goes on past a failing step and exits with its
code, stops starting steps once its budget is spent, and packs what the steps wrote; the compile
gate's sweep runs once per Triton; the wheel download asks for what the GPU machine needs.

The whole run rehearses for real on the CPU with ``GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh``
(about half a minute, so not part of the suite).
"""

import argparse
import os
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from fusedbn.bench import cli, compile_check

from .helpers import load

ROOT = Path(__file__).resolve().parents[2]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"
FETCH_WHEELS = ROOT / "scripts" / "fetch-gpu-wheels.sh"
COMPILE_CHECK = ROOT / "benchmarks" / "compile_check.sh"

# A python that logs its arguments (one call a line, shell-quoted), writes a results.csv into the
# --out folder of the per-op suite when FAKE_RESULTS is set, and fails (exit 3) when a call holds the
# word FAKE_FAIL.
FAKE_PYTHON = r"""#!/usr/bin/env bash
printf '%q ' "$@" >> "$FAKE_LOG"; echo >> "$FAKE_LOG"
out=; previous=
for word in "$@"; do [ "$previous" = --out ] && out=$word; previous=$word; done
if [ -n "${FAKE_RESULTS:-}" ] && [ -n "$out" ] && [[ " $* " == *" fusedbn.bench.cli "* ]]; then
    mkdir -p "$out" && echo "run_id" > "$out/results.csv"
fi
for word in "$@"; do [ -n "${FAKE_FAIL:-}" ] && [ "$word" = "$FAKE_FAIL" ] && exit 3; done
exit 0
"""


def _run_script(script: Path, tmp_path: Path, *args: str, **env: str) -> tuple:
    """Run ``script`` with the fake python; its result and the python calls it made (argument lists)."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    environment = {**os.environ, "PYTHON": str(python), "FAKE_LOG": str(log), **env}
    done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=environment,
                          timeout=120)  # fmt: skip
    return done, [shlex.split(line) for line in log.read_text().splitlines() if line.strip()]


def _calls(calls: list, first: str) -> list[list[str]]:
    """The arguments of the calls that ran ``first`` (a script or ``-m module``)."""
    return [call[call.index(first) + 1 :] for call in calls if first in call]


def _parser(add_arguments) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return parser


def _steps(out: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in (out / "steps.txt").read_text().splitlines())


@pytest.mark.parametrize("smoke", ["1", "0"], ids=["rehearsal", "gpu"])
def test_gpu_check_runs_every_step_with_options_the_benchmarks_accept(tmp_path, smoke):
    out = tmp_path / "out"
    done, calls = _run_script(GPU_CHECK, tmp_path, OUT=str(out), GPU_CHECK_SMOKE=smoke)
    steps = _steps(out)
    for name in ("imports", "versions", "tests", "host-time", "bench", "training-step", "tune"):
        assert steps[name].startswith("rc=0 "), (name, steps)
    run = out / "run"
    host, bench = _calls(calls, "benchmarks/host_time.py"), _calls(calls, "fusedbn.bench.cli")
    training, tune = _calls(calls, "benchmarks/training_step.py"), _calls(calls, "fusedbn.cli")
    assert len(host) == len(bench) == len(training) == len(tune) == 1, calls
    assert (ROOT / "benchmarks/host_time.py").is_file() and (ROOT / "benchmarks/training_step.py").is_file()
    # Every option the script passes is one the benchmark takes (argparse raises on any other).
    host_args = _parser(load("host_time").add_arguments).parse_args(host[0])
    bench_args = _parser(cli.add_arguments).parse_args(bench[0])
    training_args = _parser(load("training_step").add_arguments).parse_args(training[0])
    assert host_args.out == run / "host-time" and bench_args.out == run / "bench"
    assert training_args.out == run / "training-step" and tune[0][:1] == ["tune"]
    assert (bench_args.time_budget, bench_args.compile_budget, training_args.time_budget) == (100, 60, 150)
    if smoke == "1":
        assert done.returncode == 0, done.stdout + done.stderr
        assert host_args.smoke and host_args.fake_gpu and bench_args.smoke and training_args.smoke
        assert steps["wheels"] == "skipped: rehearsal installs nothing" and "nvidia-smi" not in steps
        assert "--device cpu" in " ".join(tune[0])
    else:
        assert bench_args.quick and bench_args.calibrate and bench_args.profile_kernels == 25
        assert not host_args.fake_gpu and training_args.batches == [64]
        assert training_args.executions == ["eager", "cuda-graph", "compile"]
        assert training_args.variants == ["torch", "fusedbn-auto", "fusedbn"]
        assert training_args.layouts == ["nchw", "channels_last"]
        assert "--device cuda" in " ".join(tune[0]) and "nvidia-smi" in steps
    assert sorted(p.name for p in out.iterdir()) == ["console.log", "gpu-check.tar.gz", "steps.txt"]
    with tarfile.open(out / "gpu-check.tar.gz") as packed:
        assert "run/env.log" in packed.getnames()


def test_gpu_check_goes_on_past_a_failing_step_and_exits_with_its_code(tmp_path):
    out = tmp_path / "out"
    done, calls = _run_script(GPU_CHECK, tmp_path, OUT=str(out), GPU_CHECK_SMOKE="1",
                              FAKE_FAIL="--compile-budget", FAKE_RESULTS="1")  # fmt: skip
    steps = _steps(out)
    assert done.returncode == 3
    assert steps["bench"].startswith("rc=3 ") and steps["report"].startswith("rc=0 ")
    assert steps["training-step"].startswith("rc=0 ") and steps["tune"].startswith("rc=0 ")
    # The per-op suite was cut short: its summary is rendered from the rows it wrote.
    (report,) = [args for args in _calls(calls, "fusedbn.bench.cli") if "--report" in args]
    assert report == ["--report", str(out / "run/bench/results.csv"), "--out", str(out / "run/bench")]


def test_gpu_check_starts_no_step_past_its_budget(tmp_path):
    out = tmp_path / "out"
    done, calls = _run_script(GPU_CHECK, tmp_path, OUT=str(out), GPU_CHECK_SMOKE="1", TOTAL_BUDGET="19")
    assert done.returncode == 0
    steps = _steps(out)
    assert steps["bench"] == steps["tune"] == "skipped: total budget of 19s spent"
    assert calls == [["-c", "import optuna, sklearn, matplotlib"]]  # the check whether to tune, nothing run


def test_compile_check_sweeps_each_triton_and_fails_if_one_does(tmp_path):
    sites = []
    for version in ("3.6.0", "3.7.1"):
        (tmp_path / version / "triton").mkdir(parents=True)
        (tmp_path / version / "triton" / "__init__.py").write_text("")
        sites.append(str(tmp_path / version))
    out = str(tmp_path / "gate")
    done, calls = _run_script(COMPILE_CHECK, tmp_path, *sites, OUT=out, JOBS="3", FAKE_FAIL=sites[0])
    assert done.returncode == 1
    runs = _calls(calls, "fusedbn.bench.compile_check")
    assert len(runs) == 3
    parsed = [compile_check.build_parser().parse_args(args) for args in runs]
    assert [args.site for args in parsed] == [None, *sites]
    assert all(str(args.out) == out and args.jobs == 3 and not args.subset for args in parsed)
    done, calls = _run_script(COMPILE_CHECK, tmp_path, OUT=out)
    assert done.returncode == 0 and len(_calls(calls, "fusedbn.bench.compile_check")) == 1


def _fetch(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(FETCH_WHEELS), *options], capture_output=True, text=True, timeout=30)


def test_wheel_download_targets_the_gpu_machine():
    result = _fetch("--dry-run")
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[words.index("--python-version") + 1] == "3.12"
    assert "manylinux2014_x86_64" in words and "--no-deps" in words and "--only-binary=:all:" in words
    assert {"flag-gems==5.0.2", "PyYAML", "optuna", "alembic", "sqlalchemy", "colorlog"} <= set(words)
    assert "scikit-learn" not in words and "matplotlib" not in words
    more = _fetch("--dry-run", "--with-sklearn", "--with-matplotlib").stdout.split()
    assert {"scikit-learn", "scipy", "matplotlib", "kiwisolver"} <= set(more)


def test_unknown_option_is_refused():
    result = _fetch("--everything")
    assert result.returncode == 2
    assert "unknown option --everything" in result.stderr
