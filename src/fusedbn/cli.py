"""The ``fusedbn`` command: ``fusedbn tune`` runs a tuning study, ``fusedbn bench`` the benchmarks,
``fusedbn science`` the experiments on the tuning advice."""

import argparse
import sys

from fusedbn.bench import cli as bench_cli
from fusedbn.science import cli as science_cli
from fusedbn.tuning import cli as tune_cli


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv) and run the chosen subcommand; returns the exit code."""
    parser = argparse.ArgumentParser(prog="fusedbn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in (("tune", tune_cli), ("bench", bench_cli), ("science", science_cli)):
        sub = commands.add_parser(name, help=module.__doc__.splitlines()[0],
                                  description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
