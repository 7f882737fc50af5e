"""Packaging for fusedbn: host code lives in src/fusedbn, Triton kernels in kernels/.

The core package needs torch and triton only; the harnesses behind ``fusedbn tune`` and ``fusedbn
bench`` and the test tools are extras.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version() -> str:
    """The version declared in src/fusedbn/_version.py, read as text so that torch need not be installed."""
    text = (HERE / "src" / "fusedbn" / "_version.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE).group(1)


EXTRAS = {
    # fusedbn.tuning and fusedbn.science: Optuna studies on scikit-learn's digits and on MNIST-1D (generated
    # locally by the mnist1d package), statistical tests (scipy), plots, a progress bar.
    "tune": ["optuna>=4.0", "sqlalchemy", "scikit-learn", "scipy", "matplotlib", "numpy", "tqdm", "mnist1d"],
    # fusedbn.bench: the plots (the timing itself needs torch and triton only).
    "bench": ["matplotlib"],
    # Optuna storage on a PostgreSQL server.
    "postgres": ["psycopg2-binary"],
}
EXTRAS["all"] = sorted({requirement for extra in EXTRAS.values() for requirement in extra})
# The test suite covers every harness and exports to ONNX (run in onnxruntime); numpy (in "tune")
# is also what Triton's interpreter needs to run the kernels on the CPU.
EXTRAS["test"] = [
    "pytest", "pytest-xdist", "ruff", "hypothesis", "packaging", "onnx", "onnxscript", "onnxruntime",
    *EXTRAS["all"],
]

setup(
    name="fusedbn",
    version=read_version(),
    description="Fused BatchNorm in Triton, with an Optuna tuning harness and GPU benchmarks",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages("src") + ["fusedbn.kernels"],
    package_dir={"fusedbn": "src/fusedbn", "fusedbn.kernels": "kernels"},
    # The cost model's tables (fusedbn.costs), one per GPU kind.
    package_data={"fusedbn": ["cost_tables/*.json"]},
    # Triton: every version in this range passes the compile gate's full sweep (no crash, compile
    # error or spill for sm_80/sm_90/sm_100; benchmarks/results/*-compile-gate/REPORT.md);
    # widen it only with a sweep of the new version (tests/bench/test_compile_check.py checks).
    install_requires=["torch>=2.4", "triton>=3.6,<3.10"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["fusedbn=fusedbn.cli:main"]},
)
