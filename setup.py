"""Packaging for fusedbn: host code lives in src/fusedbn, Triton kernels in kernels/."""

from setuptools import find_packages, setup

setup(
    name="fusedbn",
    version="0.1.0",
    description="Fused BatchNorm in Triton, with an Optuna tuning harness and GPU benchmarks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages("src") + ["fusedbn.kernels"],
    package_dir={"fusedbn": "src/fusedbn", "fusedbn.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        "numpy",
        "optuna>=4.0",
        "sqlalchemy",
        "scikit-learn",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "ruff", "psycopg2-binary"],
        "postgres": ["psycopg2-binary"],
    },
    entry_points={"console_scripts": ["fusedbn=fusedbn.cli:main"]},
)
