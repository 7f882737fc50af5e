"""The ``fusedbn`` command: ``fusedbn tune`` runs a tuning study, ``fusedbn bench`` the benchmarks,
``fusedbn science`` the experiments on the tuning advice.

Each subcommand lives in a module of its own, imported only when that subcommand runs, and needs an
extra of the package (``pip install '.[tune]'`` or ``'.[bench]'`` in a clone of fusedbn, which is not
on PyPI); without it the command says which extra to install and exits with code 2. A bad option is
one line on stderr and exit code 2; Ctrl-C ends a command with exit code 130 and no traceback.
"""

import argparse
import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

import torch
import triton

from fusedbn._version import __version__

MISSING_EXTRA_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report a process that Ctrl-C stopped


@dataclass(frozen=True)
class Subcommand:
    """One ``fusedbn`` subcommand: ``module`` defines ``add_arguments(parser)`` and ``run(args) -> exit code``
    and its docstring is the description; it is imported only when the subcommand runs, and ``extra`` is the
    package extra that installs what it imports."""

    module: str
    extra: str
    help: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "tune": Subcommand(
        module="fusedbn.tuning.cli",
        extra="tune",
        help="tune the training of a small network with Optuna (coarse to fine, resumable)",
    ),
    "bench": Subcommand(
        module="fusedbn.bench.cli",
        extra="bench",
        help="benchmark fusedbn against torch eager, torch.compile and the copy bandwidth",
    ),
    "science": Subcommand(
        module="fusedbn.science.cli",
        extra="tune",
        help="put the tuning advice to the test on the digits task, with statistics",
    ),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2) that points to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None, subcommands: Mapping[str, Subcommand] = SUBCOMMANDS) -> int:
    """Parse ``argv`` (default: sys.argv) and run the chosen subcommand; returns the exit code.

    ``fusedbn [--version] COMMAND ...`` is parsed first, the command's own options after its import.
    """
    parser = OneLineErrorParser(
        prog="fusedbn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    version = f"fusedbn {__version__} (torch {torch.__version__}, triton {triton.__version__})"
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, subcommand in subcommands.items():
        commands.add_parser(name, help=subcommand.help, add_help=False)
    args, rest = parser.parse_known_args(argv)
    subcommand = subcommands[args.command]
    try:
        module = importlib.import_module(subcommand.module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.partition(".")[0] == "fusedbn":
            raise
        print(
            f"fusedbn {args.command} needs the '{subcommand.extra}' extra: "
            f"pip install '.[{subcommand.extra}]' in a clone of fusedbn (no module named {error.name!r})",
            file=sys.stderr,
        )
        return MISSING_EXTRA_EXIT_CODE
    parser = OneLineErrorParser(prog=f"fusedbn {args.command}", description=module.__doc__)
    module.add_arguments(parser)
    options = parser.parse_args(rest)
    try:
        return module.run(options)
    except KeyboardInterrupt:  # a subcommand that has more to say about Ctrl-C says it in run()
        print(f"fusedbn {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
