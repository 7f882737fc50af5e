"""The ``fusedbn`` command: version, the subcommand table, lazy imports and the missing-extra message."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import triton

import fusedbn
from fusedbn import cli


def test_version_prints_fusedbn_torch_and_triton(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == (
        f"fusedbn {fusedbn.__version__} (torch {torch.__version__}, triton {triton.__version__})\n"
    )


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for name, subcommand in cli.SUBCOMMANDS.items():
        assert name in out and subcommand.help.split()[0] in out


@pytest.mark.parametrize("name", list(cli.SUBCOMMANDS))
def test_subcommand_help_is_the_subcommand_module_s(name, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fusedbn {name} ")
    assert "--out" in out


@pytest.fixture
def subcommand_modules(tmp_path, monkeypatch):
    """Four throwaway subcommand modules: one that works, one that Ctrl-C stops, one whose
    third-party dependency is missing, one that imports a fusedbn module that does not exist (a bug,
    not a missing extra)."""
    works = '''
        """Echo the --value option."""
        def add_arguments(parser):
            parser.add_argument("--value", type=int, required=True)
        def run(args):
            print("value", args.value)
            return args.value
    '''
    files = {
        "cli_test_interrupted": "def add_arguments(parser): pass\ndef run(args): raise KeyboardInterrupt\n",
        "cli_test_works": works,
        "cli_test_needs_extra": "import fusedbn_no_such_dependency\n" + textwrap.dedent(works),
        "cli_test_broken": "import fusedbn.no_such_module\n" + textwrap.dedent(works),
    }
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield {
        "interrupted": cli.Subcommand(module="cli_test_interrupted", extra="one", help="Ctrl-C"),
        "works": cli.Subcommand(module="cli_test_works", extra="one", help="works"),
        "needs": cli.Subcommand(module="cli_test_needs_extra", extra="two", help="needs an extra"),
        "broken": cli.Subcommand(module="cli_test_broken", extra="three", help="broken"),
    }
    for name in files:
        sys.modules.pop(name, None)


def test_a_subcommand_parses_its_own_options_and_returns_its_exit_code(subcommand_modules, capsys):
    assert cli.main(["works", "--value", "7"], subcommand_modules) == 7
    assert capsys.readouterr().out == "value 7\n"
    with pytest.raises(SystemExit) as stop:
        cli.main(["works", "--value", "x"], subcommand_modules)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "fusedbn works: error: argument --value: invalid int value: 'x' (see fusedbn works --help)\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["works"], "fusedbn works: error: the following arguments are required: --value"),
        (["works", "--value", "1", "--extra"], "fusedbn works: error: unrecognized arguments: --extra"),
        (["nothing"], "fusedbn: error: argument COMMAND: invalid choice: 'nothing'"),
        ([], "fusedbn: error: the following arguments are required: COMMAND"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_code_2(subcommand_modules, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv, subcommand_modules)
    assert stop.value.code == 2
    errors = capsys.readouterr().err
    assert errors.startswith(message) and len(errors.splitlines()) == 1, errors


def test_ctrl_c_in_a_subcommand_is_one_line_and_exit_code_130(subcommand_modules, capsys):
    assert cli.main(["interrupted"], subcommand_modules) == cli.INTERRUPTED_EXIT_CODE == 130
    captured = capsys.readouterr()
    assert captured.err == "fusedbn interrupted: interrupted\n" and captured.out == ""


def test_a_missing_extra_is_one_line_naming_it_and_exit_code_2(subcommand_modules, capsys):
    assert cli.main(["needs", "--value", "1"], subcommand_modules) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "fusedbn needs needs the 'two' extra: pip install '.[two]' in a clone of fusedbn "
        "(no module named 'fusedbn_no_such_dependency')\n"
    )


def test_a_missing_fusedbn_module_is_a_bug_and_raises(subcommand_modules):
    with pytest.raises(ModuleNotFoundError, match="fusedbn.no_such_module"):
        cli.main(["broken", "--value", "1"], subcommand_modules)


def test_bench_runs_without_the_tuning_harness(tmp_path):
    """``fusedbn bench`` imports nothing of the tune extra: with optuna, scikit-learn and tqdm made
    unimportable, it lists its shapes."""
    blocked = ["optuna", "sklearn", "tqdm", "sqlalchemy"]
    script = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "from fusedbn.cli import main\n"
        "sys.exit(main(['bench', '--list']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "resnet50:" in result.stdout


def test_tune_without_optuna_names_the_tune_extra(tmp_path):
    script = (
        "import sys\n"
        "sys.modules['optuna'] = None\n"
        "from fusedbn.cli import main\n"
        f"sys.exit(main(['tune', '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("fusedbn tune needs the 'tune' extra: pip install '.[tune]' in a clone")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()
