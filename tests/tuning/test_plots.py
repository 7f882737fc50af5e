"""The PNG plots of a finished study (fusedbn.tuning.plots)."""

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import LineCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from optuna.trial import TrialState

from fusedbn.tuning.importance import Importances
from fusedbn.tuning.plots import accuracy_figure, beta_label, draw_importances, history_figure, write_plots
from fusedbn.tuning.report import Summary, summarize
from fusedbn.tuning.search import SearchConfig, TuningInterrupted, TuningResult, tune
from fusedbn.tuning.space import default_space, with_scales
from fusedbn.tuning.training import Task

ALL_PLOTS = ["history.png", "learning_rate.png", "beta.png", "learning_rate_beta.png", "importances.png"]


def assert_readable_png(path: Path) -> None:
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert width >= 600 and height >= 300, f"{path.name} is {width}x{height}"
    assert pixels[..., :3].std() > 0.05, f"{path.name} is blank"


def test_every_plot_is_written_for_a_study_with_learning_rate_and_beta(
    tiny_result: TuningResult, tiny_summary: Summary, tmp_path: Path
) -> None:
    written = write_plots(tiny_result, tiny_summary, tmp_path)
    assert [p.name for p in written] == ALL_PLOTS
    for path in written:
        assert_readable_png(path)


def test_plots_needing_a_beta_are_left_out_when_none_is_tuned(tmp_path: Path, tiny_task: Task) -> None:
    config = SearchConfig(
        study_name="lr", storage=f"sqlite:///{tmp_path}/lr.db", trials=3, stages=1, tiers=1, progress=False
    )
    result = tune(tiny_task, default_space(), config)
    written = write_plots(result, summarize(result), tmp_path)
    assert [p.name for p in written] == ["history.png", "learning_rate.png"]
    assert not (tmp_path / "beta.png").exists()


def test_plots_follow_linear_scales(tmp_path: Path, tiny_task: Task) -> None:
    space = with_scales(default_space(), {"learning_rate": "linear", "momentum": "linear"})
    config = SearchConfig(study_name="lin", storage="memory", trials=4, stages=1, progress=False)
    result = tune(tiny_task, space, config)
    written = write_plots(result, summarize(result), tmp_path)
    assert [p.name for p in written] == ALL_PLOTS[:-1]  # too few trials for importances
    for path in written:
        assert_readable_png(path)


def test_plots_leave_pyplot_and_the_backend_alone(
    tiny_result: TuningResult, tiny_summary: Summary, tmp_path: Path
) -> None:
    write_plots(tiny_result, tiny_summary, tmp_path)
    assert plt.get_fignums() == []
    # Importing the plots module must not switch the process's matplotlib backend.
    code = "import matplotlib; matplotlib.use('svg'); import fusedbn.tuning.plots; "
    code += "print(matplotlib.get_backend())"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "svg"


def legend_texts(fig: Figure) -> list[str]:
    return [text.get_text() for text in fig.axes[0].get_legend().get_texts()]


def test_history_puts_every_trial_at_its_number_as_the_summary_does_after_a_resume(
    tmp_path: Path, tiny_task: Task
) -> None:
    build_mlp, calls = tiny_task.build_model, []

    def build(params: dict) -> object:
        calls.append(params)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the second trial
        return build_mlp(params)

    tiny_task.build_model = build
    storage = f"sqlite:///{tmp_path}/h.db"
    settings = SearchConfig(study_name="h", storage=storage, trials=3, stages=2, pruner="none")
    with pytest.raises(TuningInterrupted):
        tune(tiny_task, default_space(), settings)
    result = tune(tiny_task, default_space(), settings)  # resumed: stage 1 holds trials 0, 2, 3 and failed 1
    assert [t.state for t in result.stages[0].trials()][1] == TrialState.FAIL
    ax = history_figure(result).axes[0]
    dots = [c for c in ax.collections if c.get_offset_transform() is ax.transData]
    (unscored,) = [c for c in ax.collections if c not in dots]  # placed along the bottom of the axes
    points = {tuple(point) for dot in dots for point in dot.get_offsets()}
    offsets = [0, 4]  # stage 2 starts after the 4 trials of stage 1
    expected = {
        (offsets[index] + trial.number, trial.value)
        for index, stage in enumerate(result.stages)
        for trial in stage.trials(TrialState.COMPLETE)
    }
    assert points == expected
    assert [x for x, _ in unscored.get_offsets()] == [1], "the interrupted trial, marked at its number"
    best = summarize(result).best
    assert (offsets[best.stage - 1] + best.trial, best.valid_accuracy) in points
    assert list(ax.get_xticks()) == list(range(7)), "a tick on every trial of a small study"
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels == ["0", "1", "2", "3", "0", "1", "2"], "numbered within the stage"
    assert legend_texts(ax.figure) == [
        "stage 1",
        "stage 2",
        "best so far",
        "no accuracy (failed, interrupted or diverged)",
    ], "no pruned entry: nothing was pruned"


def test_pruned_trials_are_in_the_legends_when_drawn_and_the_beta_plot_says_what_it_shows(
    tiny_result: TuningResult,
) -> None:
    assert any(t.state == TrialState.PRUNED for stage in tiny_result.stages for t in stage.trials())
    momentum = next(p for p in tiny_result.tuned if p.name == "momentum")
    figure = accuracy_figure(tiny_result, momentum)
    assert "pruned (last report)" in legend_texts(figure)
    assert "pruned (last report)" in legend_texts(history_figure(tiny_result))
    assert figure.axes[0].get_title() == "Validation accuracy of each trial vs momentum, SGD's momentum beta"


@pytest.mark.parametrize(
    ("one_minus_beta", "label"), [(0.1, "0.9"), (0.01, "0.99"), (0.001, "0.999"), (0.3, "0.7")]
)
def test_beta_axes_are_labelled_in_beta(one_minus_beta: float, label: str) -> None:
    assert beta_label(one_minus_beta) == label


def test_importances_draw_the_noise_floor_behind_the_bars_and_name_it_in_the_legend() -> None:
    measured = Importances(
        trials=30,
        resamples=20,
        values={"learning_rate": 0.5, "momentum": 0.3},
        # The fit on all trials may lie outside its bootstrap interval (momentum's does here).
        intervals={"learning_rate": (0.2, 0.7), "momentum": (0.05, 0.25)},
        noise=0.08,
        noise_interval=(0.02, 0.31),
        above={},
    )
    ax = Figure().subplots()
    draw_importances(ax, measured, {"learning_rate": 1, "momentum": 2})
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    band = [p for p in ax.patches if p not in bars]
    assert [round(b.get_width(), 3) for b in bars] == [0.5, 0.3]
    assert band and max(p.get_zorder() for p in band) < min(b.get_zorder() for b in bars), "band over bars"
    noise_lines = [line for line in ax.get_lines() if list(line.get_xdata()) == [0.08, 0.08]]
    assert noise_lines and noise_lines[0].get_linestyle() == "--"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "noise floor: dummy's 5-95% interval",
        "noise floor: dummy's importance",
    ]
    (whiskers,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    spans = sorted((float(seg[0][0]), float(seg[1][0])) for seg in whiskers.get_segments())
    assert spans == [pytest.approx((0.05, 0.25)), pytest.approx((0.2, 0.7))], "whiskers span the intervals"
