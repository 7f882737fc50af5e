"""The experiments of ``fusedbn science``, one function each; every one returns a :class:`Finding`.

All run on a built-in task through the tuning harness itself (in-memory studies, no pruner), with paired arms
that share their sampling and training seeds. Accuracy is validation accuracy unless said otherwise; "test" is
the held-out test split, read only to score configurations chosen on validation.
"""

import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn
from torch.optim.swa_utils import update_bn

from fusedbn.science.stats import (
    CONTRADICTED,
    HELD,
    NOT_SHOWN,
    PairedTest,
    equivalence_verdict,
    log_log_slope,
    mcnemar,
    verdict,
    wilcoxon,
)
from fusedbn.tuning import mnist1d
from fusedbn.tuning.report import importances
from fusedbn.tuning.search import SearchConfig, TuningResult, derive_seed, score_chosen, tune
from fusedbn.tuning.space import with_scales
from fusedbn.tuning.tasks import TASKS, TaskDefinition
from fusedbn.tuning.training import Diverged, HeldOutScores, Task, evaluate

CHANCE_ACCURACY = 0.1
TWO_PARAMS = ("learning_rate", "momentum")
REPRODUCTION_MARGIN = 0.03  # three points of accuracy
EMA_BETAS = (0.9, 0.99, 0.999)
EQUIVALENCE_MARGIN = 0.005  # half a point of accuracy
SLOPE_MARGIN = 0.1


@dataclass(frozen=True)
class Preset:
    """How much each experiment runs: seeds (paired repetitions), epochs per training, budgets."""

    name: str
    seeds: int
    epochs: int
    grid_points_2d: int
    grid_points_4d: int
    stages: int
    stage_trials: int
    bn_configs: int
    importance_trials: int
    batch_sizes: tuple[int, ...]
    noise_draws: int
    bootstrap: int
    importance_resamples: int
    train_examples: int | None = None
    paper_seeds: int = 0
    paper_steps: int = mnist1d.PAPER_STEPS
    tuned_trials: int = 0
    tuned_stages: int = 0
    tuned_epochs: int | None = None


PRESETS = {
    "full": Preset("full", 20, 8, 4, 2, 3, 6, 12, 100, (16, 32, 64, 128, 256), 200, 2000, 30),
    "quick": Preset("quick", 5, 4, 2, 2, 2, 4, 8, 40, (16, 64, 256), 50, 500, 8),
    "smoke": Preset("smoke", 2, 1, 2, 2, 2, 2, 3, 12, (32, 128), 20, 200, 3, train_examples=300),
}


@dataclass
class Finding:
    """One experiment's outcome: the claim, the setup, the table of numbers (``rows``), the tests and the
    verdicts (one per test, or per optimizer for the importances), and the figure's file name (default
    ``<key>.png``) and data (its ``kind`` and plain JSON values, for :mod:`fusedbn.science.figures`)."""

    key: str
    title: str
    claim: str
    setup: str
    rows: list[dict[str, object]]
    tests: list[PairedTest]
    test_verdicts: list[str]
    verdict: str
    explanation: str
    figure: str = ""
    figure_data: dict[str, object] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.figure = self.figure or f"{self.key}.png"


Experiment = Callable[["Context"], "Finding"]


@dataclass(frozen=True)
class ScienceTask:
    """What the experiments need from a task beyond its :class:`TaskDefinition`: ``experiments`` in the
    report's order, split into ``groups`` for worker processes (experiments that share searches in one
    group; ``workers`` by default); ``good_accuracy``: the validation accuracy of a good configuration; the
    fixed-configuration experiments train the SGD defaults changed by ``fixed`` (``fixed_label`` in words);
    ``depth_label`` says what ``num_layers`` counts."""

    definition: TaskDefinition
    presets: dict[str, Preset]
    experiments: tuple[Experiment, ...]
    groups: tuple[tuple[Experiment, ...], ...]
    workers: int
    good_accuracy: float
    fixed: dict[str, float]
    fixed_label: str
    depth_label: str

    def __post_init__(self) -> None:
        grouped = [experiment for group in self.groups for experiment in group]
        if sorted(grouped, key=id) != sorted(self.experiments, key=id):
            raise ValueError(f"{self.definition.name}: the groups must hold every experiment exactly once")


@dataclass
class Context:
    """What every experiment needs, and the tasks and searches built so far."""

    preset: Preset
    progress: Callable[[str], None]
    science: ScienceTask = field(default_factory=lambda: SCIENCE_TASKS["digits"])
    data_seed: int | None = None
    tasks: dict[tuple[str, bool, bool], Task] = field(default_factory=dict)
    searches: dict[tuple, TuningResult] = field(default_factory=dict)

    def build(self, **options: object) -> Task:
        """A new task built with ``options`` on this data seed, cut to ``preset.train_examples`` when set."""
        task = self.science.definition.build(data_seed=self.data_seed, **options)
        task.train = tuple(t[: self.preset.train_examples] for t in task.train)  # all of them for None
        return task

    def task(self, optimizer: str = "sgd", batchnorm: bool = True, bias: bool = False) -> Task:
        """The task, built once (``bias`` before each BatchNorm); its trials also score the test split."""
        key = (optimizer, batchnorm, bias)
        if key not in self.tasks:
            self.tasks[key] = self.build(epochs=self.preset.epochs, optimizer=optimizer, batchnorm=batchnorm,
                                         bias=bias)  # fmt: skip
            self.tasks[key].score_test = True
        return self.tasks[key]

    @property
    def four_params(self) -> tuple[str, ...]:
        """The learning rate, the momentum, the width and the batch size."""
        return (*TWO_PARAMS, self.science.definition.width, "batch_size")

    @property
    def bn_params(self) -> tuple[str, ...]:
        """:attr:`four_params` and the depth."""
        return (*self.four_params, "num_layers")

    def fixed_params(self, **changes: float) -> dict[str, float]:
        """The fixed configuration (SGD defaults changed by the task's ``fixed``), changed by ``changes``."""
        defaults = {p.name: p.default for p in self.science.definition.space("sgd")}
        return {**defaults, **self.science.fixed, **changes}

    def rng(self, key: str) -> np.random.Generator:
        """A generator for ``key``'s statistics, the same on every run."""
        return np.random.default_rng(derive_seed(len(key), *key.encode()))

    def paired(self, rng: np.random.Generator) -> Callable[..., PairedTest]:
        """``wilcoxon(name, first, second)`` drawing the preset's bootstrap resamples from ``rng``."""
        return functools.partial(wilcoxon, rng=rng, resamples=self.preset.bootstrap)

    def seeds(self, label: str) -> Iterator[int]:
        """Each seed of the preset, telling ``progress`` "<label>: seed k/n" first."""
        for seed in range(self.preset.seeds):
            self.progress(f"{label}: seed {seed + 1}/{self.preset.seeds}")
            yield seed

    def search(
        self, names: Sequence[str], seed: int, trials: int, *, sampler: str = "random", stages: int = 1,
        linear: Sequence[str] = (), optimizer: str = "sgd", batchnorm: bool = True, bias: bool = False,
    ) -> TuningResult:  # fmt: skip
        """A search over the parameters ``names`` (the others at their defaults), cached by its arguments."""
        key = (tuple(names), seed, trials, sampler, stages, tuple(linear), optimizer, batchnorm, bias)
        if key not in self.searches:
            space = [replace(p, tier=1 if p.name in names else 2)
                     for p in self.science.definition.space(optimizer)]  # fmt: skip
            space = with_scales(space, dict.fromkeys(linear, "linear"))
            config = SearchConfig("science", "memory", trials=trials, stages=stages, tiers=1, sampler=sampler,
                                  seed=seed, pruner="none", progress=False)  # fmt: skip
            self.searches[key] = tune(self.task(optimizer, batchnorm, bias), space, config)
        return self.searches[key]


def _chosen(result: TuningResult) -> tuple[float, float]:
    """(validation, test) accuracy of the configuration the search chose; chance when none completed."""
    best = result.best()
    if best is None:
        return CHANCE_ACCURACY, CHANCE_ACCURACY
    return best[1].value, best[1].user_attrs["test_accuracy"]


def _trials(result: TuningResult) -> list[FrozenTrial]:
    """Every trial in trial order, stage after stage: the order all per-trial lists share."""
    return [t for stage in result.stages for t in sorted(stage.trials(), key=lambda t: t.number)]


def _values(result: TuningResult, name: str) -> list[float]:
    """Each trial's value of the tuned parameter ``name``, in :func:`_trials` order."""
    param = next(p for p in result.tuned if p.name == name)
    return [param.value_from(t.params) for t in _trials(result)]


def _trial_accuracies(result: TuningResult) -> list[float]:
    """Each trial's validation accuracy in :func:`_trials` order; NaN for a diverged trial."""
    return [t.value if t.state == TrialState.COMPLETE else math.nan for t in _trials(result)]


def _figure_data(kind: str, **data: object) -> dict[str, object]:
    """A figure's kind and data in plain JSON values (numpy arrays and numbers as lists and numbers,
    dataclasses as dicts), the same after science.json is read back."""
    plain = json.dumps(data, default=lambda v: v.tolist() if hasattr(v, "tolist") else asdict(v))
    return {"kind": kind, **json.loads(plain)}


def _panel(title: str, first: Sequence[float], second: Sequence[float], test: PairedTest) -> dict:
    """One panel of a paired figure: per-seed values of both arms and the test of their differences."""
    return {"title": title, "first": first, "second": second, "test": test}


def _overall(verdicts: Sequence[str]) -> str:
    """One verdict from the primary tests': contradicted if any is, held if all are, else not shown."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return HELD if verdicts and all(v == HELD for v in verdicts) else NOT_SHOWN


def _mean_sd(values: Sequence[float]) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.4f} +- {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}"


def random_vs_grid(ctx: Context) -> Finding:
    """Random search against a grid at the same budget, tuning 2 and then 4 parameters."""
    preset, paired = ctx.preset, ctx.paired(ctx.rng("random_vs_grid"))
    rows, tests, verdicts, panels = [], [], [], []
    for names, points in ((TWO_PARAMS, preset.grid_points_2d), (ctx.four_params, preset.grid_points_4d)):
        trials = points ** len(names)
        scores = {"random": [], "grid": []}
        for seed in ctx.seeds(f"random vs grid: {len(names)} parameters"):
            for sampler in scores:
                scores[sampler].append(_chosen(ctx.search(names, seed, trials, sampler=sampler)))
        valid, test = ({s: np.array(pairs)[:, split] for s, pairs in scores.items()} for split in (0, 1))
        rows += [{"parameters": len(names), "sampler": sampler, "trials": trials,
                  "best validation": _mean_sd(valid[sampler]), "test of chosen": _mean_sd(test[sampler])}
                 for sampler in scores]  # fmt: skip
        pair = [paired(f"{len(names)} parameters: {measure}, random - grid", *values.values())
                for measure, values in (("best validation", valid), ("test of chosen", test))]  # fmt: skip
        tests += pair
        verdicts += [verdict(t, +1) for t in pair]
        title = f"{len(names)} parameters, {trials} trials: {verdicts[-2]}"
        panels.append(_panel(title, *valid.values(), pair[0]))
    overall = _overall(verdicts[0::2])
    return Finding(
        key="random_vs_grid",
        title="Random search vs grid search at equal budget",
        claim="Random search finds better configurations than a grid of the same size, because a grid "
        "tries only a few distinct values of the parameter that matters.",
        setup=f"SGD, {preset.epochs} epochs per trial, no pruning. Tuned: {', '.join(TWO_PARAMS)} "
        f"({preset.grid_points_2d}x{preset.grid_points_2d} grid) and {', '.join(ctx.four_params)} "
        f"({preset.grid_points_4d}^4 grid); random search draws as many trials on the same scales. "
        f"Grid points are the centres of equal cells on each parameter's scale. {preset.seeds} seeds, "
        "paired (same seed: same training seeds).",
        rows=rows, tests=tests, test_verdicts=verdicts, verdict=overall,
        explanation=_explain(overall, "random search beat the grid on validation accuracy")
        + f" Random minus grid, best validation: {_points(tests[0].mean_difference)} with 2 parameters, "
        f"{_points(tests[2].mean_difference)} with 4.",
        figure_data=_figure_data("paired_panels", panels=panels, arms=["random", "grid"],
                                 ylabel="best validation accuracy"),  # fmt: skip
    )


def coarse_to_fine(ctx: Context) -> Finding:
    """Coarse-to-fine stages against one stage of random search with the same number of trials."""
    preset, paired = ctx.preset, ctx.paired(ctx.rng("coarse_to_fine"))
    total = preset.stages * preset.stage_trials
    arms = {"coarse-to-fine": [], "one stage": []}
    for seed in ctx.seeds("coarse-to-fine"):
        staged = ctx.search(ctx.four_params, seed, preset.stage_trials, stages=preset.stages)
        arms["coarse-to-fine"].append(_chosen(staged))
        arms["one stage"].append(_chosen(ctx.search(ctx.four_params, seed, total)))
    valid, test = ({a: np.array(pairs)[:, split] for a, pairs in arms.items()} for split in (0, 1))
    tests = [paired("best validation, staged - one stage", *valid.values()),
             paired("test of chosen, staged - one stage", *test.values())]
    verdicts = [verdict(t, +1) for t in tests]
    rows = [{"search": a, "trials": total, "best validation": _mean_sd(valid[a]),
             "test of chosen": _mean_sd(test[a])} for a in arms]  # fmt: skip
    panels = [_panel(f"best validation: {verdicts[0]}", *valid.values(), tests[0]),
              _panel(f"test accuracy of the chosen: {verdicts[1]}", *test.values(), tests[1])]
    overall = _overall(verdicts)
    return Finding(
        key="coarse_to_fine",
        title="Coarse-to-fine vs one-stage random search",
        claim="Narrowing the ranges around the best trials (coarse to fine) finds better configurations "
        "than spending the same budget on one random stage.",
        setup=f"SGD, tuning {', '.join(ctx.four_params)}; {preset.stages} stages of {preset.stage_trials} "
        f"trials (keep the best 25%, margin 10%) vs one stage of {total} trials. The staged search's first "
        f"stage draws the same configurations as the first trials of the one-stage search. {preset.seeds} "
        "seeds. Held needs both validation and test accuracy of the chosen configuration to improve.",
        rows=rows, tests=tests, test_verdicts=verdicts, verdict=overall,
        explanation=_explain(overall, "the staged search chose better configurations")
        + f" Staged minus one stage: {_points(tests[0].mean_difference)} on validation, "
        f"{_points(tests[1].mean_difference)} on test.",
        figure_data=_figure_data("paired_panels", panels=panels, arms=list(arms), ylabel="accuracy"),
    )


def log_vs_linear(ctx: Context) -> Finding:
    """The learning rate and the momentum beta sampled on their log scales vs on linear scales."""
    preset, paired, good = ctx.preset, ctx.paired(ctx.rng("log_vs_linear")), ctx.science.good_accuracy
    trials = preset.grid_points_2d**2
    shares, bests, points = {"log": [], "linear": []}, {"log": [], "linear": []}, {"log": [], "linear": []}
    for seed in ctx.seeds("log vs linear"):
        for arm, linear in (("log", ()), ("linear", TWO_PARAMS)):
            result = ctx.search(TWO_PARAMS, seed, trials, linear=linear)
            accuracies = np.array(_trial_accuracies(result))
            shares[arm].append(float(np.mean(np.nan_to_num(accuracies, nan=0.0) >= good)))
            bests[arm].append(_chosen(result)[0])
            points[arm] += list(zip(_values(result, "learning_rate"), accuracies, strict=True))
    tests = [paired(f"share of trials >= {good}, log - linear", shares["log"], shares["linear"]),
             paired("best validation, log - linear", bests["log"], bests["linear"])]
    verdicts = [verdict(t, +1) for t in tests]
    rows = [{"scales": arm, "trials": trials, f"share >= {good}": _mean_sd(shares[arm]),
             "best validation": _mean_sd(bests[arm])} for arm in shares]  # fmt: skip
    overall = verdicts[0]
    return Finding(
        key="log_vs_linear",
        title="Log scales vs linear scales for the learning rate and the momentum beta",
        claim="Sampling the learning rate on a log scale and the momentum on log10(1 - beta) puts more "
        "trials where good configurations are than sampling both linearly.",
        setup=f"SGD, random search over learning rate [1e-4, 1] and momentum [0.9, 0.999], {trials} trials, "
        f"{preset.seeds} seeds; the same seeds draw on log scales or on linear scales. The primary measure "
        f"is the share of trials reaching {good:.0%} validation accuracy.",
        rows=rows, tests=tests, test_verdicts=verdicts, verdict=overall,
        explanation=_explain(overall, "log scales put more trials above the threshold")
        + f" Share of trials reaching {good:.0%}: {np.mean(shares['log']):.0%} on log scales, "
        f"{np.mean(shares['linear']):.0%} on linear ones.",
        figure_data=_figure_data("accuracy_vs_learning_rate", points=points),
    )


def batchnorm_vs_none(ctx: Context) -> Finding:
    """The same random configurations trained with and without BatchNorm: reach, spread, divergence, depth."""
    preset, rng, good = ctx.preset, ctx.rng("batchnorm_vs_none"), ctx.science.good_accuracy
    layer = ctx.science.definition.layer
    arms, depths = {"BatchNorm": [], "no BatchNorm": []}, []
    for seed in ctx.seeds("BatchNorm vs none"):
        for arm, batchnorm in (("BatchNorm", True), ("no BatchNorm", False)):
            result = ctx.search(ctx.bn_params, seed, preset.bn_configs, batchnorm=batchnorm)
            arms[arm] += _trial_accuracies(result)
            if batchnorm:
                depths += _values(result, "num_layers")
    accuracy = {arm: np.array(values) for arm, values in arms.items()}
    reached = {arm: np.nan_to_num(a, nan=0.0) >= good for arm, a in accuracy.items()}
    diverged = {arm: np.isnan(a) for arm, a in accuracy.items()}
    paired = functools.partial(mcnemar, rng=rng, resamples=preset.bootstrap)
    tests = [paired(f"reaches {good}, BN - none", reached["BatchNorm"], reached["no BatchNorm"]),
             paired("diverges, none - BN", diverged["no BatchNorm"], diverged["BatchNorm"])]
    verdicts = [verdict(tests[0], +1), verdict(tests[1], +1)]
    depths = np.array(depths)
    rows = []
    for arm, values in accuracy.items():
        finite = values[~np.isnan(values)]
        quartiles = np.percentile(finite, [25, 75]) if len(finite) else (math.nan, math.nan)
        by_depth = {f"share >= {good}, {d} layer(s)": f"{reached[arm][depths == d].mean():.2f}"
                    for d in sorted(set(depths.tolist()))}  # fmt: skip
        rows.append({"network": arm, "configurations": len(values),
                     f"share >= {good}": f"{reached[arm].mean():.3f}",
                     "median accuracy (not diverged)": f"{np.median(finite):.4f}" if len(finite) else "-",
                     "interquartile range": f"{quartiles[1] - quartiles[0]:.4f}",
                     "diverged": int(diverged[arm].sum()), **by_depth})  # fmt: skip
    overall = verdicts[0]
    return Finding(
        key="batchnorm_vs_none",
        title="With vs without BatchNorm over the same random configurations",
        claim="BatchNorm makes tuning easier: more random configurations reach a good accuracy, fewer "
        "diverge, and depth hurts less.",
        setup=f"SGD, {preset.bn_configs} random configurations per seed over {', '.join(ctx.bn_params)} "
        f"(default ranges), {preset.seeds} seeds; each configuration trains once with FusedBatchNorm1d after "
        f"every hidden {layer} and once without ({layer} with bias), same initial seed. Paired per "
        "configuration: exact McNemar tests. Diverged trials count as not reaching the threshold.",
        rows=rows, tests=tests, test_verdicts=verdicts, verdict=overall,
        explanation=_explain(overall, f"more configurations reached {good:.0%} with BatchNorm")
        + f" {reached['BatchNorm'].mean():.0%} of the configurations reached it with BatchNorm, "
        f"{reached['no BatchNorm'].mean():.0%} without; {int(diverged['BatchNorm'].sum())} vs "
        f"{int(diverged['no BatchNorm'].sum())} diverged. From the shallowest to the deepest network the "
        f"share went from {reached['BatchNorm'][depths == depths.min()].mean():.0%} to "
        f"{reached['BatchNorm'][depths == depths.max()].mean():.0%} with BatchNorm and from "
        f"{reached['no BatchNorm'][depths == depths.min()].mean():.0%} to "
        f"{reached['no BatchNorm'][depths == depths.max()].mean():.0%} without.",
        figure_data=_figure_data("batchnorm_comparison", accuracy=accuracy, depths=depths, good=good,
                                 depth_label=ctx.science.depth_label),  # fmt: skip
    )


def _normalised_spread(
    model: nn.Module, inputs: torch.Tensor, batch: int, draws: int, rng: np.random.Generator, example: int
) -> float:
    """Standard deviation, over ``draws`` random mini-batches of size ``batch`` containing ``example``, of
    that example's batch-normalised first-layer value, averaged over the channels (and positions)."""
    hidden, dims = _first_layer(model, inputs)
    others = np.delete(np.arange(len(inputs)), example)
    values = []
    for _ in range(draws):
        rows = np.concatenate([[example], rng.choice(others, size=batch - 1, replace=False)])
        h = hidden[torch.from_numpy(rows)]
        mean, var = h.mean(dim=dims, keepdim=True)[0], h.var(dim=dims, unbiased=False, keepdim=True)[0]
        values.append(((h[0] - mean) / torch.sqrt(var + 1e-5)).numpy())
    return float(np.std(np.array(values), axis=0).mean())


def _first_layer(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The first layer's float64 output on ``inputs``, and the dims of BatchNorm's statistics (all but 1)."""
    with torch.no_grad():
        hidden = model[0](inputs).double()
    return hidden, [0, *range(2, hidden.dim())]


def batchnorm_noise(ctx: Context) -> Finding:
    """BatchNorm's noise against the mini-batch size: its mechanism, and the train-test gap."""
    preset, rng, task = ctx.preset, ctx.rng("batchnorm_noise"), ctx.task()
    paired = ctx.paired(rng)
    inputs = task.train[0]  # the mechanism's examples
    sizes = np.array(preset.batch_sizes)
    spreads, gaps = [], []
    for seed in ctx.seeds("BatchNorm noise"):
        gaps.append([])
        for size in sizes:
            params = ctx.fixed_params(batch_size=float(size))
            model = task.train_model(params, seed=derive_seed(seed, int(size)))
            scores = task.scores(model)
            gaps[-1].append(scores["train_accuracy"] - scores["test_accuracy"])
            if size == sizes[len(sizes) // 2]:
                example = int(rng.integers(len(inputs)))
                spreads.append([_normalised_spread(model, inputs, int(b), preset.noise_draws, rng, example)
                                for b in sizes])  # fmt: skip
    spreads, gaps = np.array(spreads), np.array(gaps)
    noise_slopes = np.array([log_log_slope(sizes, row) for row in spreads])
    gap_slopes = np.array([np.polyfit(np.log2(sizes), row, 1)[0] for row in gaps])
    zeros = np.zeros_like(noise_slopes)
    tests = [paired("log-log slope of the noise vs batch size (vs 0)", noise_slopes, zeros),
             paired("slope of the noise + 0.5 (vs B^-1/2)", noise_slopes + 0.5, zeros),
             paired("train-test gap per doubling of the batch (vs 0)", gap_slopes, zeros)]
    verdicts = [verdict(tests[0], -1), equivalence_verdict(tests[1], SLOPE_MARGIN), verdict(tests[2], +1)]
    rows = [{"batch size": int(b), "spread of one example's normalised value": _mean_sd(spreads[:, i]),
             "train - test accuracy": _mean_sd(gaps[:, i])} for i, b in enumerate(sizes)]  # fmt: skip
    overall = _overall([verdicts[0], verdicts[2]])
    return Finding(
        key="batchnorm_noise",
        title="BatchNorm's noise vs mini-batch size",
        claim="BatchNorm normalises with mini-batch statistics, so an example's normalised value is noisy, "
        "the more so the smaller the batch (about B^-1/2); this noise regularises, so smaller batches "
        "leave a smaller train-test gap.",
        setup=f"SGD at a fixed configuration ({ctx.science.fixed_label}), "
        f"{preset.epochs} epochs, batch sizes {', '.join(map(str, sizes))}, {preset.seeds} seeds. Mechanism: "
        f"one training example's first-layer normalised value over {preset.noise_draws} random batches "
        "containing it (model trained at the middle batch size); slope of log spread vs log batch size "
        "per seed. Gap: train accuracy - test accuracy (eval mode) per batch size, slope per doubling. "
        "The batch size also changes the number of steps, so the gap mixes both effects.",
        rows=rows, tests=tests, test_verdicts=verdicts, verdict=overall,
        explanation=f"Mechanism {verdicts[0]}: the spread fell as B^{noise_slopes.mean():.3f} (B^-1/2 "
        f"would be -0.5; within +-{SLOPE_MARGIN} of it: {verdicts[1]}). Regularisation {verdicts[2]}: the "
        f"train-test gap changed by {_points(gap_slopes.mean())} per doubling of the batch. "
        f"Overall: {overall}.",
        figure_data=_figure_data("noise_and_gap", sizes=sizes, spreads=spreads, gaps=gaps),
    )


def importance_ranking(ctx: Context) -> Finding:
    """fANOVA importances on sampled scales, with bootstrap intervals, for SGD and for Adam."""
    preset = ctx.preset
    measured, tiers = {}, {}  # per optimizer: its importances, and the tier of each parameter
    for optimizer in ("sgd", "adam"):
        ctx.progress(f"importances: {optimizer}, {preset.importance_trials} trials")
        tiers[optimizer] = {p.name: p.tier for p in ctx.science.definition.space(optimizer)}
        result = ctx.search(list(tiers[optimizer]), 0, preset.importance_trials, optimizer=optimizer)
        measured[optimizer] = importances(result, preset.importance_resamples)
    rows, verdicts, above_noise = [], [], []
    for optimizer, found in measured.items():
        if found is None:
            verdicts.append(NOT_SHOWN)
            continue
        above_noise.append(f"{optimizer.upper()}: {', '.join(found.above_noise()) or 'none'}")
        others = [n for n in found.values if n != "learning_rate"]
        first = all(found.ranks_above("learning_rate", n) for n in others)
        beaten = any(found.ranks_above(n, "learning_rate") for n in others)
        verdicts.append(HELD if first else CONTRADICTED if beaten else NOT_SHOWN)
        for name in found.order():
            low, high = found.intervals[name]
            rows.append({"optimizer": optimizer, "parameter": name, "tier": tiers[optimizer][name],
                         "importance": f"{found.values[name]:.3f}",
                         "90% interval": f"[{low:.3f}, {high:.3f}]",
                         "above noise": "yes" if found.ranks_above(name, "noise") else "no"})  # fmt: skip
        low, high = found.noise_interval
        rows.append({"optimizer": optimizer, "parameter": "noise (dummy)", "tier": "-",
                     "importance": f"{found.noise:.3f}", "90% interval": f"[{low:.3f}, {high:.3f}]",
                     "above noise": "-"})  # fmt: skip
    overall = _overall(verdicts)
    noise = " Too few trials to compute importances."
    if above_noise:
        noise = (f" Above the noise floor in 95% of the resamples: {'; '.join(above_noise)}. Any other "
                 "ordering of the tiers is within the noise at this number of trials.")  # fmt: skip
    return Finding(
        key="importances",
        title="Which parameters matter: fANOVA importances for SGD and Adam",
        claim="The learning rate matters most (tier 1), before the momentum, width and batch size (tier 2), "
        "depth and decay (tier 3) and the rest (tier 4).",
        setup="Random search over every parameter of the default space (tiers 1-4), "
        f"{preset.importance_trials} trials per optimizer, one sampling seed; fANOVA on each "
        "parameter's sampled coordinate, with a "
        f"dummy noise parameter and {preset.importance_resamples} bootstrap resamples of the trials (90% "
        "intervals). Diverged trials have no accuracy and are left out, as in `fusedbn tune`. Held needs "
        "the learning rate to rank above every other parameter in 95% of the resamples.",
        rows=rows, tests=[], test_verdicts=verdicts, verdict=overall,
        explanation=_explain(overall, "the learning rate ranked first for both optimizers") + noise,
        figure_data=_figure_data("importance_bars", measured=measured, tiers=tiers),
        extra={name: None if found is None else {"above_noise": found.above_noise(), "trials": found.trials}
               for name, found in measured.items()},  # fmt: skip
    )


def test_time_statistics(ctx: Context) -> Finding:
    """Exponential moving averages of the batch statistics vs exact statistics recomputed after training."""
    preset, paired, task = ctx.preset, ctx.paired(ctx.rng("test_time_statistics")), ctx.task()
    results = {beta: {"ema": [], "exact": []} for beta in EMA_BETAS}
    check = 0.0
    for seed in ctx.seeds("test-time statistics"):
        for beta in EMA_BETAS:
            try:
                model = task.train_model(ctx.fixed_params(bn_beta=beta), seed=derive_seed(seed, 7))
            except Diverged:
                continue
            results[beta]["ema"].append(evaluate(model, *task.test))
            update_bn([task.train[0]], model)
            check = max(check, _update_bn_error(model, task.train[0]))
            results[beta]["exact"].append(evaluate(model, *task.test))
    tests, verdicts, rows, panels = [], [], [], []
    for beta, arms in results.items():
        test = paired(f"beta {beta} (momentum {1 - beta:.3g}): test accuracy, EMA - exact", *arms.values())
        tests.append(test)
        verdicts.append(equivalence_verdict(test, EQUIVALENCE_MARGIN))
        claim = f" (the claim): {verdicts[-1]}" if beta == EMA_BETAS[0] else ""
        panels.append(_panel(f"beta {beta}{claim}", arms["ema"], arms["exact"], test))
        rows.append({"bn_beta": beta, "momentum": round(1 - beta, 4),
                     "test, EMA statistics": _mean_sd(arms["ema"]),
                     "test, exact statistics": _mean_sd(arms["exact"])})  # fmt: skip
    overall = verdicts[0]
    return Finding(
        key="test_time_statistics",
        title="Test-time statistics: moving averages vs exact population statistics",
        claim="An exponential moving average of the batch statistics (torch's default momentum 0.1, i.e. "
        "beta 0.9) is as good at test time as the exact statistics of the training set.",
        setup=f"SGD at a fixed configuration, {preset.epochs} epochs, BatchNorm beta 0.9, 0.99, 0.999, "
        f"{preset.seeds} seeds. After training, the test accuracy with the running averages, then with "
        "exact statistics from torch.optim.swa_utils.update_bn over the whole training split in one batch "
        f"(it works on FusedBatchNorm1d: the largest gap to a float64 recomputation was {check:.1e}). "
        f"Held: the 95% interval of the difference lies within +-{EQUIVALENCE_MARGIN} for beta 0.9.",
        rows=rows, tests=tests, test_verdicts=verdicts, verdict=overall,
        explanation=f"{overall.capitalize()}: with beta 0.9 the moving averages scored "
        f"{_points(tests[0].mean_difference)} against the exact statistics ({_interval(tests[0])}; the "
        f"margin is +-{100 * EQUIVALENCE_MARGIN:.1f}). With beta 0.99 and 0.999 the averages span ~100 and "
        "~1000 steps, as long as or longer than this training run, so they still carry the initial "
        f"statistics and those of early weights: {_points(tests[1].mean_difference)} and "
        f"{_points(tests[2].mean_difference)}.",
        figure_data=_figure_data("paired_panels", panels=panels, arms=["EMA", "exact"],
                                 ylabel="test accuracy", margin=EQUIVALENCE_MARGIN),  # fmt: skip
        extra={"update_bn_max_error": check},
    )


def _update_bn_error(model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest gap between the first BatchNorm's statistics and a float64 recomputation over ``inputs``."""
    hidden, dims = _first_layer(model, inputs)
    mean_error = (model[1].running_mean.double() - hidden.mean(dim=dims)).abs().max()
    var_error = (model[1].running_var.double() - hidden.var(dim=dims, unbiased=True)).abs().max()
    return float(max(mean_error, var_error))


PAPER_BASELINES = ("logistic regression", "MLP", "CNN")


def paper_table(ctx: Context) -> Finding:
    """MNIST-1D's published table: the paper's models trained its way, and a CNN tuned by the harness."""
    preset = ctx.preset
    data_seed = mnist1d.DATA_SEED if ctx.data_seed is None else ctx.data_seed
    data = mnist1d.generate(data_seed)
    accuracy, seconds = {}, {}  # per model: the test accuracy of each seed, the seconds per training
    for model in mnist1d.PAPER_MODELS:
        task = mnist1d.paper_task(model, data, steps=preset.paper_steps)
        accuracy[model] = []
        began = time.perf_counter()
        for seed in range(preset.paper_seeds):
            ctx.progress(f"paper table: {model}, seed {seed + 1}/{preset.paper_seeds}")
            accuracy[model].append(evaluate(task.train_model(mnist1d.PAPER_PARAMS, seed), *task.test))
        seconds[model] = (time.perf_counter() - began) / max(1, preset.paper_seeds)
    ctx.progress(f"paper table: tuning the fusedbn CNN, {preset.tuned_stages} x {preset.tuned_trials} trials")
    definition, tuned_task = ctx.science.definition, ctx.build(epochs=preset.tuned_epochs)
    config = SearchConfig("tuned", "memory", trials=preset.tuned_trials, stages=preset.tuned_stages,
                          tiers=definition.tiers, seed=0, progress=False)  # fmt: skip
    tuned = score_chosen(tuned_task, tune(tuned_task, definition.space(definition.optimizer), config))
    verdicts, rows = [], []
    for model, (_, published) in mnist1d.PAPER_MODELS.items():
        values = np.array(accuracy[model])
        off = values.mean() - published
        if model in PAPER_BASELINES:
            verdicts.append(HELD if abs(off) <= REPRODUCTION_MARGIN else CONTRADICTED)
        rows.append({"model": model, "published": f"{published:.2f}", "reproduced": _mean_sd(values),
                     "each seed": ", ".join(f"{v:.3f}" for v in values),
                     "reproduced - published": _points(off),
                     "within 3 points": "yes" if abs(off) <= REPRODUCTION_MARGIN else "no",
                     "seconds per training": f"{seconds[model]:.1f}"})  # fmt: skip
    rows.append(dict.fromkeys(rows[0], "-") | {
        "model": "fusedbn CNN (BatchNorm, max pooling), tuned",
        "reproduced": f"{tuned.test_accuracy_all:.4f}",
        "each seed": f"trained on the search's {tuned.train_examples} examples: {tuned.test_accuracy:.4f}",
    })  # fmt: skip
    overall = _overall(verdicts)
    return Finding(
        key="paper_table",
        title="The MNIST-1D paper's table, reproduced",
        claim="On MNIST-1D (generator seed 42), the paper's models trained its way reach the published test "
        "accuracies: logistic regression 32%, MLP 68%, CNN 94% (reproduced within 3 points).",
        setup=f"Data generated here with mnist1d's make_dataset (seed {data_seed}; nothing downloaded): "
        f"{len(data['y'])} training and {len(data['y_test'])} test examples. Models as published: logistic "
        "regression Linear(40, 10); MLP h = relu(Linear(40, 100) x), h = h + relu(Linear(100, 100) h), "
        "Linear(100, 10); CNN three Conv1d of 25 channels (kernels 5, 3, 3, stride 2, padding 1, bias, "
        "ReLU) then Linear(125, 10); and the MLP with 256 hidden units, the default of the authors' "
        "training script. Training as published: Adam, learning rate 1e-2, no weight decay, batches of 100 "
        f"taken in order through the training set, {preset.paper_steps} steps; test accuracy at the end, "
        f"{preset.paper_seeds} seeds (initial weights). The fusedbn CNN is the one `fusedbn tune --task "
        f"mnist1d` chooses with its defaults ({preset.tuned_stages} stages x {preset.tuned_trials} trials, "
        "sampling seed 0, chosen on validation), retrained on all training examples and scored once on the "
        "test split. The paper also lists a GRU (91%) and a human expert (96%); neither is run here.",
        rows=rows, tests=[], test_verdicts=verdicts, verdict=overall,
        explanation=_paper_explanation(accuracy, tuned),
        figure_data=_figure_data(
            "published_vs_reproduced",
            models={model: {"published": published, "seeds": accuracy[model]}
                    for model, (_, published) in mnist1d.PAPER_MODELS.items()},
            margin=REPRODUCTION_MARGIN,
            extra={"fusedbn CNN, tuned": tuned.test_accuracy_all},
        ),  # fmt: skip
        extra={"accuracy": accuracy, "seconds_per_training": seconds, "tuned": tuned},
    )


def _paper_explanation(accuracy: dict[str, list[float]], tuned: HeldOutScores) -> str:
    """Which baselines reproduced within 3 points, why the MLP may not, and the tuned CNN's accuracy."""
    parts = []
    for model in PAPER_BASELINES:
        published, measured = mnist1d.PAPER_MODELS[model][1], float(np.mean(accuracy[model]))
        within = "within" if abs(measured - published) <= REPRODUCTION_MARGIN else "outside"
        parts.append(f"{model} {measured:.1%} against {published:.0%} ({within} 3 points)")
    text = "Reproduced: " + "; ".join(parts) + "."
    wide, narrow = float(np.mean(accuracy["MLP, 256 hidden units"])), float(np.mean(accuracy["MLP"]))
    text += (f" The MLP with 256 hidden units, the default of the authors' training script, reaches "
             f"{wide:.1%} against {narrow:.1%} with the 100 the paper describes")  # fmt: skip
    matches = abs(wide - 0.68) <= REPRODUCTION_MARGIN < abs(narrow - 0.68)
    text += ": the published 68% matches the wider network." if matches else "."
    return text + (f" The tuned fusedbn CNN (BatchNorm, global max pooling) reaches "
                   f"{tuned.test_accuracy_all:.1%} on the test split.")  # fmt: skip


def bias_equivalence(ctx: Context) -> Finding:
    """The same configurations with and without a bias in the layer before each BatchNorm."""
    preset, paired, layer = ctx.preset, ctx.paired(ctx.rng("bias_equivalence")), ctx.science.definition.layer
    arms = {"no bias": False, "bias": True}
    valid, test, learning_rates = {arm: [] for arm in arms}, {arm: [] for arm in arms}, []
    for seed in ctx.seeds("bias before BatchNorm"):
        for arm, bias in arms.items():
            result = ctx.search(ctx.bn_params, seed, preset.bn_configs, bias=bias)
            valid[arm] += _trial_accuracies(result)
            test[arm] += [t.user_attrs.get("test_accuracy", math.nan) for t in _trials(result)]
            if not bias:
                learning_rates += _values(result, "learning_rate")
    diverged = {arm: np.isnan(valid[arm]) for arm in arms}
    scored = {split: {arm: np.nan_to_num(np.array(values[arm]), nan=CHANCE_ACCURACY) for arm in arms}
              for split, values in (("validation", valid), ("test", test))}  # fmt: skip
    tests = [paired(f"{split} accuracy, bias - no bias", arm_values["bias"], arm_values["no bias"])
             for split, arm_values in scored.items()]
    verdicts = [equivalence_verdict(t, EQUIVALENCE_MARGIN) for t in tests]
    differences = {split: arm_values["bias"] - arm_values["no bias"] for split, arm_values in scored.items()}
    rows = [{"network": f"{layer}{' with' if bias else ' without'} bias -> FusedBatchNorm1d",
             "configurations": len(valid[arm]), "validation": _mean_sd(scored["validation"][arm]),
             "test": _mean_sd(scored["test"][arm]), "diverged": int(diverged[arm].sum())}
            for arm, bias in arms.items()]  # fmt: skip
    rows.append({"network": "difference (bias - no bias)",
                 "configurations": f"{int(np.sum(differences['validation'] == 0))} identical on validation",
                 "validation": f"largest |difference| {np.abs(differences['validation']).max():.4f}",
                 "test": f"largest |difference| {np.abs(differences['test']).max():.4f}",
                 "diverged": int(np.sum(diverged["bias"] != diverged["no bias"]))})  # fmt: skip
    decades = np.floor(np.log10(learning_rates)).astype(int)
    for decade in sorted(set(decades.tolist())):  # how far apart the paired runs ended, by learning rate
        inside = np.abs(differences["validation"][decades == decade])
        rows.append({"network": f"learning rate in [{10.0**decade:g}, {10.0 ** (decade + 1):g})",
                     "configurations": f"{len(inside)}, {int(np.sum(inside == 0))} identical on validation",
                     "validation": f"mean |difference| {100 * inside.mean():.2f} points, "
                     f"largest {100 * inside.max():.2f}",
                     "test": "-", "diverged": "-"})  # fmt: skip
    overall = _overall(verdicts)
    panels = [_panel(f"{split} accuracy: {outcome}", arm_values["bias"], arm_values["no bias"], test)
              for (split, arm_values), test, outcome in zip(scored.items(), tests, verdicts, strict=True)]
    return Finding(
        key="bias_equivalence",
        title="A bias before BatchNorm is redundant",
        claim=f"With BatchNorm after a {layer}, the {layer}'s bias b is redundant: the batch mean removes it "
        "(and the BatchNorm's shift takes its place), so a network with the bias trains to the same "
        "accuracy as one without.",
        setup=f"SGD, the {preset.bn_configs} random configurations per seed of the BatchNorm experiment "
        f"({', '.join(ctx.bn_params)}), {preset.seeds} seeds, {preset.epochs} epochs; each trains once "
        f"without and once with a bias in every {layer} before a BatchNorm. The biases are drawn (torch's "
        "default initialisation) after all weights, so both networks start from the same weights and "
        "batches. Diverged trials count at chance (0.1). Equivalence: held when the 95% bootstrap interval "
        f"of the mean difference lies within +-{100 * EQUIVALENCE_MARGIN:.1f} points, on validation and on "
        "test accuracy.",
        rows=rows, tests=tests, test_verdicts=verdicts, verdict=overall,
        explanation=f"{overall.capitalize()}: with the bias minus without, "
        f"{_points(tests[0].mean_difference)} on validation ({_interval(tests[0])}) and "
        f"{_points(tests[1].mean_difference)} on test ({_interval(tests[1])}); the margin is "
        f"+-{100 * EQUIVALENCE_MARGIN:.1f} points. {int(np.sum(differences['validation'] == 0))} of "
        f"{len(differences['validation'])} configurations scored exactly the same on validation; the "
        "others differ because the bias changes the rounding of every step and the runs drift apart "
        "(by learning rate in the last rows of the table).",
        figure_data=_figure_data("paired_panels", panels=panels, arms=["bias", "no bias"], ylabel="accuracy",
                                 margin=EQUIVALENCE_MARGIN, unit="configuration"),  # fmt: skip
    )


def _points(fraction: float) -> str:
    """An accuracy difference in percentage points."""
    return f"{100 * fraction:+.2f} points"


def _interval(test: PairedTest) -> str:
    """The 95% interval of ``test``'s mean difference, in percentage points."""
    return f"95% interval {_points(test.ci_low)} to {_points(test.ci_high)}"


def _explain(outcome: str, what: str) -> str:
    if outcome == HELD:
        return f"Held: {what}, beyond what chance explains."
    if outcome == CONTRADICTED:
        return f"Contradicted: the data point the other way, beyond chance (expected: {what})."
    return f"Not shown: this data cannot tell the difference from chance (expected: {what})."


EXPERIMENTS: tuple[Experiment, ...] = (random_vs_grid, coarse_to_fine, log_vs_linear, batchnorm_vs_none,
                                       batchnorm_noise, importance_ranking, test_time_statistics)  # fmt: skip

# MNIST-1D: each training costs ~10x a digits one, so fewer configurations per comparison (10 seeds in full).
MNIST1D_PRESETS = {
    "full": Preset("full", 10, 6, 3, 2, 3, 4, 6, 60, (16, 32, 64, 128, 256), 200, 2000, 30, paper_seeds=5,
                   tuned_trials=10, tuned_stages=3),
    "quick": Preset("quick", 3, 4, 2, 2, 2, 3, 4, 20, (16, 64, 256), 50, 500, 8, paper_seeds=1,
                    tuned_trials=4, tuned_stages=1, tuned_epochs=5),
    "smoke": Preset("smoke", 2, 1, 2, 2, 2, 2, 3, 12, (32, 128), 20, 200, 3, train_examples=300,
                    paper_seeds=1, paper_steps=40, tuned_trials=2, tuned_stages=1, tuned_epochs=1),
}  # fmt: skip

# Searches shared between experiments: log_vs_linear reuses random_vs_grid's random searches over two
# parameters, bias_equivalence the BatchNorm arm of batchnorm_vs_none.
DIGITS_GROUPS = (
    (random_vs_grid, log_vs_linear),
    (coarse_to_fine, batchnorm_vs_none, batchnorm_noise, importance_ranking, test_time_statistics),
)

SCIENCE_TASKS = {
    "digits": ScienceTask(
        definition=TASKS["digits"], presets=PRESETS, experiments=EXPERIMENTS, groups=DIGITS_GROUPS, workers=1,
        good_accuracy=0.95, fixed={"learning_rate": 0.05},
        fixed_label="learning rate 0.05, momentum 0.9, 2 x 64 units", depth_label="hidden layers",
    ),
    "mnist1d": ScienceTask(
        definition=TASKS["mnist1d"], presets=MNIST1D_PRESETS,
        experiments=(paper_table, *EXPERIMENTS, bias_equivalence),
        groups=((paper_table, *DIGITS_GROUPS[0]), (*DIGITS_GROUPS[1], bias_equivalence)), workers=2,
        good_accuracy=0.90, fixed={"learning_rate": 0.05},
        fixed_label="learning rate 0.05, momentum 0.9, 4 blocks of 32 channels, batch 64",
        depth_label="convolution blocks",
    ),
}
