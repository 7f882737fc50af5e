"""The built-in tasks as data (fusedbn.tuning.tasks): lookup, defaults, data seeds, range limits."""

import sys

import pytest

from fusedbn.tuning.digits import build_mlp
from fusedbn.tuning.space import SpaceError, default_space, with_ranges
from fusedbn.tuning.tasks import TASKS, TaskError, get_task


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(TaskError, match="unknown task 'mnist'; choose one of digits, mnist1d"):
        get_task("mnist")


def test_digits_definition_builds_todays_task() -> None:
    digits = get_task("digits")
    assert (digits.epochs, digits.optimizer, digits.tiers, digits.trials, digits.stages) == (
        8,
        "sgd",
        2,
        10,
        3,
    )
    assert digits.study_name(None) == "fusedbn-digits"
    assert [p.name for p in digits.space("sgd")] == [p.name for p in default_space("sgd")]
    task = digits.build()
    assert task.epochs == 8 and task.score_test and task.build_model.func is build_mlp


def test_digits_takes_no_data_seed() -> None:
    with pytest.raises(TaskError, match="task digits has fixed data and takes no data seed"):
        get_task("digits").build(data_seed=3)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_mnist1d_refuses_a_data_seed_the_generator_cannot_take(seed: int) -> None:
    with pytest.raises(TaskError, match=r"--data-seed must be an integer in \[0, 2\*\*32\)"):
        get_task("mnist1d").build(data_seed=seed)


def test_mnist1d_study_name_records_a_non_default_data_seed() -> None:
    task = get_task("mnist1d")
    assert task.study_name(None) == task.study_name(42) == "fusedbn-mnist1d"
    assert task.study_name(7) == "fusedbn-mnist1d-data7"


def test_a_missing_package_is_a_task_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(
        TaskError, match=r"--task mnist1d needs the mnist1d package: pip install '\.\[tune\]'"
    ):
        get_task("mnist1d").build()


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        (
            {"num_layers": (0, 3)},
            r"num_layers: range \[0, 3\] does not fit task mnist1d, which takes \[1, inf\]",
        ),
        ({"batch_size": (16, 4096)}, r"batch_size: range \[16, 4096\] does not fit task mnist1d"),
    ],
)
def test_ranges_outside_the_tasks_limits_are_refused(ranges: dict, message: str) -> None:
    task = get_task("mnist1d")
    space = with_ranges(task.space("adam"), ranges)
    with pytest.raises(SpaceError, match=message):
        task.check_ranges(space)
    task.check_ranges(task.space("adam"))  # its own ranges fit


def test_widths_name_a_parameter_of_each_space() -> None:
    for task in TASKS.values():
        for optimizer in ("sgd", "adam"):
            assert task.width in {p.name for p in task.space(optimizer)}
