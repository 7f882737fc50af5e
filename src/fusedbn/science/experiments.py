"""The experiments of ``fusedbn science``, one function each; every one returns a :class:`Finding`.

All run on the built-in digits task (:mod:`fusedbn.tuning.digits`) through the tuning harness itself
(in-memory studies, no pruner, so every trial trains to the end), with paired arms: the two arms of a
comparison share their sampling seed (hence their configurations, where the space allows) and their
training seed (initial weights and batch order). Accuracy is validation accuracy unless said otherwise;
"test" is the held-out test split, read only to score configurations chosen on validation.
"""

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

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
from fusedbn.tuning.digits import digits_task
from fusedbn.tuning.importance import Importances
from fusedbn.tuning.report import importances
from fusedbn.tuning.search import SearchConfig, TuningResult, derive_seed, tune
from fusedbn.tuning.space import default_space, with_scales
from fusedbn.tuning.training import Diverged, Task, evaluate

GOOD_ACCURACY = 0.95
CHANCE_ACCURACY = 0.1
TWO_PARAMS = ("learning_rate", "momentum")
FOUR_PARAMS = ("learning_rate", "momentum", "hidden_units", "batch_size")
BN_PARAMS = ("learning_rate", "momentum", "hidden_units", "batch_size", "num_layers")
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


PRESETS = {
    "full": Preset("full", 20, 8, 4, 2, 3, 6, 12, 100, (16, 32, 64, 128, 256), 200, 2000, 30),
    "quick": Preset("quick", 5, 4, 2, 2, 2, 4, 8, 40, (16, 64, 256), 50, 500, 8),
    "smoke": Preset("smoke", 2, 1, 2, 2, 2, 2, 3, 12, (32, 128), 20, 200, 3, train_examples=300),
}


@dataclass
class Finding:
    """One experiment's outcome: the claim, the setup, the numbers, the tests and the verdict.

    ``rows`` are the table of numbers; ``test_verdicts`` holds one verdict per test in ``tests`` (the
    importance experiment has no paired test and gives one verdict per optimizer instead). ``figure``
    is the figure's file name and ``figure_data`` what :mod:`fusedbn.science.figures` draws it from:
    its ``kind`` and plain JSON values.
    """

    key: str
    title: str
    claim: str
    setup: str
    rows: list[dict[str, object]]
    tests: list[PairedTest]
    test_verdicts: list[str]
    verdict: str
    explanation: str
    figure: str
    figure_data: dict[str, object] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Context:
    """What every experiment needs: the preset, a progress callback, cached tasks and searches."""

    preset: Preset
    progress: Callable[[str], None]
    tasks: dict[tuple[str, bool], Task] = field(default_factory=dict)
    searches: dict[tuple, TuningResult] = field(default_factory=dict)

    def task(self, optimizer: str = "sgd", batchnorm: bool = True) -> Task:
        """The digits task (cut to ``preset.train_examples`` training images when set)."""
        key = (optimizer, batchnorm)
        if key not in self.tasks:
            task = digits_task(epochs=self.preset.epochs, optimizer=optimizer, batchnorm=batchnorm)
            if self.preset.train_examples is not None:
                task.train = tuple(t[: self.preset.train_examples] for t in task.train)
            self.tasks[key] = task
        return self.tasks[key]

    def rng(self, key: str) -> np.random.Generator:
        """A generator for ``key``'s statistics, the same on every run."""
        return np.random.default_rng(derive_seed(len(key), *key.encode()))

    def seeds(self) -> range:
        return range(self.preset.seeds)

    def search(
        self,
        names: Sequence[str],
        seed: int,
        trials: int,
        *,
        sampler: str = "random",
        stages: int = 1,
        linear: Sequence[str] = (),
        optimizer: str = "sgd",
        batchnorm: bool = True,
    ) -> TuningResult:
        """A search over the parameters ``names`` (the others at their defaults), cached by its arguments."""
        key = (tuple(names), seed, trials, sampler, stages, tuple(linear), optimizer, batchnorm)
        if key not in self.searches:
            space = [replace(p, tier=1 if p.name in names else 2) for p in default_space(optimizer)]
            space = with_scales(space, dict.fromkeys(linear, "linear"))
            config = SearchConfig(
                study_name="science",
                storage="memory",
                trials=trials,
                stages=stages,
                tiers=1,
                sampler=sampler,
                seed=seed,
                train_seed=seed,
                pruner="none",
                progress=False,
            )
            self.searches[key] = tune(self.task(optimizer, batchnorm), space, config)
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


def _trial_accuracies(result: TuningResult) -> list[float]:
    """Each trial's validation accuracy in :func:`_trials` order; NaN for a diverged trial."""
    return [t.value if t.state == TrialState.COMPLETE else math.nan for t in _trials(result)]


def _plain(value: object) -> object:
    """``value`` as JSON can hold it: arrays as lists, numpy numbers as Python's, dataclasses as dicts."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot keep {type(value).__name__} in science.json")


def _figure_data(kind: str, **data: object) -> dict[str, object]:
    """A figure's kind and data in plain JSON values, the same after science.json is read back."""
    return {"kind": kind, **json.loads(json.dumps(data, default=_plain))}


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
    preset, rng = ctx.preset, ctx.rng("random_vs_grid")
    rows, tests, verdicts, panels = [], [], [], []
    for names, points in ((TWO_PARAMS, preset.grid_points_2d), (FOUR_PARAMS, preset.grid_points_4d)):
        trials = points ** len(names)
        scores = {"random": [], "grid": []}
        for seed in ctx.seeds():
            ctx.progress(f"random vs grid: {len(names)} parameters, seed {seed + 1}/{preset.seeds}")
            for sampler in scores:
                scores[sampler].append(_chosen(ctx.search(names, seed, trials, sampler=sampler)))
        valid = {s: np.array([v for v, _ in scores[s]]) for s in scores}
        test = {s: np.array([t for _, t in scores[s]]) for s in scores}
        for sampler in scores:
            rows.append(
                {
                    "parameters": len(names),
                    "sampler": sampler,
                    "trials": trials,
                    "best validation": _mean_sd(valid[sampler]),
                    "test of chosen": _mean_sd(test[sampler]),
                }
            )
        primary = wilcoxon(
            f"{len(names)} parameters: best validation, random - grid",
            valid["random"],
            valid["grid"],
            rng,
            preset.bootstrap,
        )
        tests += [
            primary,
            wilcoxon(
                f"{len(names)} parameters: test of chosen, random - grid",
                test["random"],
                test["grid"],
                rng,
                preset.bootstrap,
            ),
        ]
        verdicts += [verdict(primary, +1), verdict(tests[-1], +1)]
        title = f"{len(names)} parameters, {trials} trials: {verdicts[-2]}"
        panels.append(_panel(title, valid["random"], valid["grid"], primary))
    overall = _overall(verdicts[0::2])
    return Finding(
        key="random_vs_grid",
        title="Random search vs grid search at equal budget",
        claim="Random search finds better configurations than a grid of the same size, because a grid "
        "tries only a few distinct values of the parameter that matters.",
        setup=f"SGD, {preset.epochs} epochs per trial, no pruning. Tuned: {', '.join(TWO_PARAMS)} "
        f"({preset.grid_points_2d}x{preset.grid_points_2d} grid) and {', '.join(FOUR_PARAMS)} "
        f"({preset.grid_points_4d}^4 grid); random search draws as many trials on the same scales. "
        f"Grid points are the centres of equal cells on each parameter's scale. {preset.seeds} seeds, "
        "paired (same seed: same training seeds).",
        rows=rows,
        tests=tests,
        test_verdicts=verdicts,
        verdict=overall,
        explanation=_explain(overall, "random search beat the grid on validation accuracy")
        + f" Random minus grid, best validation: {_points(tests[0].mean_difference)} with 2 parameters, "
        f"{_points(tests[2].mean_difference)} with 4.",
        figure="random_vs_grid.png",
        figure_data=_figure_data(
            "paired_panels", panels=panels, arms=["random", "grid"], ylabel="best validation accuracy"
        ),
    )


def coarse_to_fine(ctx: Context) -> Finding:
    """Coarse-to-fine stages against one stage of random search with the same number of trials."""
    preset, rng = ctx.preset, ctx.rng("coarse_to_fine")
    total = preset.stages * preset.stage_trials
    arms = {"coarse-to-fine": [], "one stage": []}
    for seed in ctx.seeds():
        ctx.progress(f"coarse-to-fine: seed {seed + 1}/{preset.seeds}")
        staged = ctx.search(FOUR_PARAMS, seed, preset.stage_trials, stages=preset.stages)
        arms["coarse-to-fine"].append(_chosen(staged))
        arms["one stage"].append(_chosen(ctx.search(FOUR_PARAMS, seed, total)))
    valid = {a: np.array([v for v, _ in arms[a]]) for a in arms}
    test = {a: np.array([t for _, t in arms[a]]) for a in arms}
    tests = [
        wilcoxon("best validation, staged - one stage", *valid.values(), rng, preset.bootstrap),
        wilcoxon("test of chosen, staged - one stage", *test.values(), rng, preset.bootstrap),
    ]
    verdicts = [verdict(t, +1) for t in tests]
    rows = [
        {
            "search": a,
            "trials": total,
            "best validation": _mean_sd(valid[a]),
            "test of chosen": _mean_sd(test[a]),
        }
        for a in arms
    ]
    panels = [
        _panel(f"best validation: {verdicts[0]}", *valid.values(), tests[0]),
        _panel(f"test accuracy of the chosen: {verdicts[1]}", *test.values(), tests[1]),
    ]
    overall = _overall(verdicts)
    return Finding(
        key="coarse_to_fine",
        title="Coarse-to-fine vs one-stage random search",
        claim="Narrowing the ranges around the best trials (coarse to fine) finds better configurations "
        "than spending the same budget on one random stage.",
        setup=f"SGD, tuning {', '.join(FOUR_PARAMS)}; {preset.stages} stages of {preset.stage_trials} trials "
        f"(keep the best 25%, margin 10%) vs one stage of {total} trials. The staged search's first stage "
        f"draws the same configurations as the first trials of the one-stage search. {preset.seeds} seeds. "
        "Held needs both validation and test accuracy of the chosen configuration to improve.",
        rows=rows,
        tests=tests,
        test_verdicts=verdicts,
        verdict=overall,
        explanation=_explain(overall, "the staged search chose better configurations")
        + f" Staged minus one stage: {_points(tests[0].mean_difference)} on validation, "
        f"{_points(tests[1].mean_difference)} on test.",
        figure="coarse_to_fine.png",
        figure_data=_figure_data("paired_panels", panels=panels, arms=list(arms), ylabel="accuracy"),
    )


def log_vs_linear(ctx: Context) -> Finding:
    """The learning rate and the momentum beta sampled on their log scales vs on linear scales."""
    preset, rng = ctx.preset, ctx.rng("log_vs_linear")
    trials = preset.grid_points_2d**2
    shares, bests, points = {"log": [], "linear": []}, {"log": [], "linear": []}, {"log": [], "linear": []}
    for seed in ctx.seeds():
        ctx.progress(f"log vs linear: seed {seed + 1}/{preset.seeds}")
        for arm, linear in (("log", ()), ("linear", TWO_PARAMS)):
            result = ctx.search(TWO_PARAMS, seed, trials, linear=linear)
            accuracies = np.array(_trial_accuracies(result))
            shares[arm].append(float(np.mean(np.nan_to_num(accuracies, nan=0.0) >= GOOD_ACCURACY)))
            bests[arm].append(_chosen(result)[0])
            lr = next(p for p in result.tuned if p.name == "learning_rate")
            points[arm] += [
                (lr.value_from(t.params), a)
                for t, a in zip(_trials(result), accuracies, strict=True)
            ]
    tests = [
        wilcoxon(
            f"share of trials >= {GOOD_ACCURACY}, log - linear",
            shares["log"],
            shares["linear"],
            rng,
            preset.bootstrap,
        ),
        wilcoxon("best validation, log - linear", bests["log"], bests["linear"], rng, preset.bootstrap),
    ]
    verdicts = [verdict(t, +1) for t in tests]
    rows = [
        {
            "scales": arm,
            "trials": trials,
            f"share >= {GOOD_ACCURACY}": _mean_sd(shares[arm]),
            "best validation": _mean_sd(bests[arm]),
        }
        for arm in shares
    ]
    overall = verdicts[0]
    return Finding(
        key="log_vs_linear",
        title="Log scales vs linear scales for the learning rate and the momentum beta",
        claim="Sampling the learning rate on a log scale and the momentum on log10(1 - beta) puts more "
        "trials where good configurations are than sampling both linearly.",
        setup=f"SGD, random search over learning rate [1e-4, 1] and momentum [0.9, 0.999], {trials} trials, "
        f"{preset.seeds} seeds; the same seeds draw on log scales or on linear scales. The primary measure "
        f"is the share of trials reaching {GOOD_ACCURACY:.0%} validation accuracy.",
        rows=rows,
        tests=tests,
        test_verdicts=verdicts,
        verdict=overall,
        explanation=_explain(overall, "log scales put more trials above the threshold")
        + f" Share of trials reaching {GOOD_ACCURACY:.0%}: {np.mean(shares['log']):.0%} on log scales, "
        f"{np.mean(shares['linear']):.0%} on linear ones.",
        figure="log_vs_linear.png",
        figure_data=_figure_data("accuracy_vs_learning_rate", points=points),
    )


def batchnorm_vs_none(ctx: Context) -> Finding:
    """The same random configurations trained with and without BatchNorm: reach, spread, divergence, depth."""
    preset, rng = ctx.preset, ctx.rng("batchnorm_vs_none")
    arms = {"BatchNorm": [], "no BatchNorm": []}
    depths = []
    for seed in ctx.seeds():
        ctx.progress(f"BatchNorm vs none: seed {seed + 1}/{preset.seeds}")
        for arm, batchnorm in (("BatchNorm", True), ("no BatchNorm", False)):
            result = ctx.search(BN_PARAMS, seed, preset.bn_configs, batchnorm=batchnorm)
            arms[arm] += _trial_accuracies(result)
            if batchnorm:
                depth = next(p for p in result.tuned if p.name == "num_layers")
                depths += [depth.value_from(t.params) for t in _trials(result)]
    accuracy = {arm: np.array(values) for arm, values in arms.items()}
    reached = {arm: np.nan_to_num(a, nan=0.0) >= GOOD_ACCURACY for arm, a in accuracy.items()}
    diverged = {arm: np.isnan(a) for arm, a in accuracy.items()}
    tests = [
        mcnemar(
            f"reaches {GOOD_ACCURACY}, BN - none",
            reached["BatchNorm"],
            reached["no BatchNorm"],
            rng,
            preset.bootstrap,
        ),
        mcnemar(
            "diverges, none - BN", diverged["no BatchNorm"], diverged["BatchNorm"], rng, preset.bootstrap
        ),
    ]
    verdicts = [verdict(tests[0], +1), verdict(tests[1], +1)]
    depths = np.array(depths)
    rows = []
    for arm, values in accuracy.items():
        finite = values[~np.isnan(values)]
        quartiles = np.percentile(finite, [25, 75]) if len(finite) else (math.nan, math.nan)
        rows.append(
            {
                "network": arm,
                "configurations": len(values),
                f"share >= {GOOD_ACCURACY}": f"{reached[arm].mean():.3f}",
                "median accuracy (not diverged)": f"{np.median(finite):.4f}" if len(finite) else "-",
                "interquartile range": f"{quartiles[1] - quartiles[0]:.4f}",
                "diverged": int(diverged[arm].sum()),
                **{
                    f"share >= {GOOD_ACCURACY}, {d} layer(s)": f"{reached[arm][depths == d].mean():.2f}"
                    for d in sorted(set(depths.tolist()))
                },
            }
        )
    overall = verdicts[0]
    return Finding(
        key="batchnorm_vs_none",
        title="With vs without BatchNorm over the same random configurations",
        claim="BatchNorm makes tuning easier: more random configurations reach a good accuracy, fewer "
        "diverge, and depth hurts less.",
        setup=f"SGD, {preset.bn_configs} random configurations per seed over {', '.join(BN_PARAMS)} (default "
        f"ranges), {preset.seeds} seeds; each configuration trains once with FusedBatchNorm1d after every "
        "hidden Linear and once without (Linear with bias), same initial seed. Paired per configuration: "
        "exact McNemar tests. Diverged trials count as not reaching the threshold.",
        rows=rows,
        tests=tests,
        test_verdicts=verdicts,
        verdict=overall,
        explanation=_explain(overall, f"more configurations reached {GOOD_ACCURACY:.0%} with BatchNorm")
        + f" {reached['BatchNorm'].mean():.0%} of the configurations reached it with BatchNorm, "
        f"{reached['no BatchNorm'].mean():.0%} without; {int(diverged['BatchNorm'].sum())} vs "
        f"{int(diverged['no BatchNorm'].sum())} diverged. From the shallowest to the deepest network the "
        f"share went from {reached['BatchNorm'][depths == depths.min()].mean():.0%} to "
        f"{reached['BatchNorm'][depths == depths.max()].mean():.0%} with BatchNorm and from "
        f"{reached['no BatchNorm'][depths == depths.min()].mean():.0%} to "
        f"{reached['no BatchNorm'][depths == depths.max()].mean():.0%} without.",
        figure="batchnorm_vs_none.png",
        figure_data=_figure_data(
            "batchnorm_comparison", accuracy=accuracy, depths=depths, good=GOOD_ACCURACY
        ),
    )


def _default_params(**changes: float) -> dict[str, float]:
    return {**{p.name: p.default for p in default_space("sgd")}, "learning_rate": 0.05, **changes}


def _normalised_spread(
    model: nn.Module, inputs: torch.Tensor, batch: int, draws: int, rng: np.random.Generator, example: int
) -> float:
    """Standard deviation, over ``draws`` random mini-batches of size ``batch`` that contain ``example``,
    of that example's batch-normalised first-layer value, averaged over the layer's channels."""
    with torch.no_grad():
        hidden = model[0](inputs).double()
    others = np.delete(np.arange(len(inputs)), example)
    values = []
    for _ in range(draws):
        rows = np.concatenate([[example], rng.choice(others, size=batch - 1, replace=False)])
        h = hidden[torch.from_numpy(rows)]
        values.append(((h[0] - h.mean(dim=0)) / torch.sqrt(h.var(dim=0, unbiased=False) + 1e-5)).numpy())
    return float(np.std(np.array(values), axis=0).mean())


def batchnorm_noise(ctx: Context) -> Finding:
    """BatchNorm's noise against the mini-batch size: its mechanism, and the train-test gap."""
    preset, rng = ctx.preset, ctx.rng("batchnorm_noise")
    task = ctx.task()
    sizes = np.array(preset.batch_sizes)
    spreads, gaps = [], []
    for seed in ctx.seeds():
        ctx.progress(f"BatchNorm noise: seed {seed + 1}/{preset.seeds}")
        gap_row = []
        for size in sizes:
            model = task.train_model(
                _default_params(batch_size=float(size)), seed=derive_seed(seed, int(size))
            )
            scores = task.scores(model)
            gap_row.append(scores["train_accuracy"] - scores["test_accuracy"])
            if size == sizes[len(sizes) // 2]:
                example = int(rng.integers(len(task.train[0])))
                spreads.append(
                    [
                        _normalised_spread(model, task.train[0], int(b), preset.noise_draws, rng, example)
                        for b in sizes
                    ]
                )
        gaps.append(gap_row)
    spreads, gaps = np.array(spreads), np.array(gaps)
    noise_slopes = np.array([log_log_slope(sizes, row) for row in spreads])
    gap_slopes = np.array([np.polyfit(np.log2(sizes), row, 1)[0] for row in gaps])
    zeros = np.zeros_like(noise_slopes)
    tests = [
        wilcoxon(
            "log-log slope of the noise vs batch size (vs 0)", noise_slopes, zeros, rng, preset.bootstrap
        ),
        wilcoxon("slope of the noise + 0.5 (vs B^-1/2)", noise_slopes + 0.5, zeros, rng, preset.bootstrap),
        wilcoxon("train-test gap per doubling of the batch (vs 0)", gap_slopes, zeros, rng, preset.bootstrap),
    ]
    verdicts = [
        verdict(tests[0], -1),
        equivalence_verdict(tests[1], SLOPE_MARGIN),
        verdict(tests[2], +1),
    ]
    rows = [
        {
            "batch size": int(b),
            "spread of one example's normalised value": _mean_sd(spreads[:, i]),
            "train - test accuracy": _mean_sd(gaps[:, i]),
        }
        for i, b in enumerate(sizes)
    ]
    overall = _overall([verdicts[0], verdicts[2]])
    return Finding(
        key="batchnorm_noise",
        title="BatchNorm's noise vs mini-batch size",
        claim="BatchNorm normalises with mini-batch statistics, so an example's normalised value is noisy, "
        "the more so the smaller the batch (about B^-1/2); this noise regularises, so smaller batches "
        "leave a smaller train-test gap.",
        setup=f"SGD at a fixed configuration (learning rate 0.05, momentum 0.9, 2 x 64 units), "
        f"{preset.epochs} epochs, batch sizes {', '.join(map(str, sizes))}, {preset.seeds} seeds. Mechanism: "
        f"one training example's first-layer normalised value over {preset.noise_draws} random batches "
        "containing it (model trained at the middle batch size); slope of log spread vs log batch size "
        "per seed. Gap: train accuracy - test accuracy (eval mode) per batch size, slope per doubling. "
        "The batch size also changes the number of steps, so the gap mixes both effects.",
        rows=rows,
        tests=tests,
        test_verdicts=verdicts,
        verdict=overall,
        explanation=f"Mechanism {verdicts[0]}: the spread fell as B^{noise_slopes.mean():.3f} (B^-1/2 "
        f"would be -0.5; within +-{SLOPE_MARGIN} of it: {verdicts[1]}). Regularisation {verdicts[2]}: the "
        f"train-test gap changed by {_points(gap_slopes.mean())} per doubling of the batch. "
        f"Overall: {overall}.",
        figure="batchnorm_noise.png",
        figure_data=_figure_data("noise_and_gap", sizes=sizes, spreads=spreads, gaps=gaps),
    )


def importance_ranking(ctx: Context) -> Finding:
    """fANOVA importances on sampled scales, with bootstrap intervals, for SGD and for Adam."""
    preset = ctx.preset
    measured: dict[str, Importances] = {}
    tiers: dict[str, dict[str, int]] = {}
    for optimizer in ("sgd", "adam"):
        ctx.progress(f"importances: {optimizer}, {preset.importance_trials} trials")
        space = default_space(optimizer)
        names = [p.name for p in space]
        result = ctx.search(names, 0, preset.importance_trials, optimizer=optimizer)
        measured[optimizer] = importances(result, preset.importance_resamples)
        tiers[optimizer] = {p.name: p.tier for p in space}
    rows, verdicts = [], []
    for optimizer, found in measured.items():
        if found is None:
            verdicts.append(NOT_SHOWN)
            continue
        others = [n for n in found.values if n != "learning_rate"]
        if all(found.ranks_above("learning_rate", n) for n in others):
            verdicts.append(HELD)
        elif any(found.ranks_above(n, "learning_rate") for n in others):
            verdicts.append(CONTRADICTED)
        else:
            verdicts.append(NOT_SHOWN)
        for name in found.order():
            low, high = found.intervals[name]
            rows.append(
                {
                    "optimizer": optimizer,
                    "parameter": name,
                    "tier": tiers[optimizer][name],
                    "importance": f"{found.values[name]:.3f}",
                    "90% interval": f"[{low:.3f}, {high:.3f}]",
                    "above noise": "yes" if found.ranks_above(name, "noise") else "no",
                }
            )
        rows.append(
            {
                "optimizer": optimizer,
                "parameter": "noise (dummy)",
                "tier": "-",
                "importance": f"{found.noise:.3f}",
                "90% interval": f"[{found.noise_interval[0]:.3f}, {found.noise_interval[1]:.3f}]",
                "above noise": "-",
            }
        )
    overall = _overall(verdicts)
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
        rows=rows,
        tests=[],
        test_verdicts=verdicts,
        verdict=overall,
        explanation=_explain(overall, "the learning rate ranked first for both optimizers")
        + _above_noise(measured),
        figure="importances.png",
        figure_data=_figure_data("importance_bars", measured=measured, tiers=tiers),
        extra={
            optimizer: None if found is None else {"above_noise": found.above_noise(), "trials": found.trials}
            for optimizer, found in measured.items()
        },
    )


def test_time_statistics(ctx: Context) -> Finding:
    """Exponential moving averages of the batch statistics vs exact statistics recomputed after training."""
    preset, rng = ctx.preset, ctx.rng("test_time_statistics")
    task = ctx.task()
    x_train = task.train[0]
    results = {beta: {"ema": [], "exact": []} for beta in EMA_BETAS}
    check = 0.0
    for seed in ctx.seeds():
        ctx.progress(f"test-time statistics: seed {seed + 1}/{preset.seeds}")
        for beta in EMA_BETAS:
            try:
                model = task.train_model(_default_params(bn_beta=beta), seed=derive_seed(seed, 7))
            except Diverged:
                continue
            results[beta]["ema"].append(evaluate(model, *task.test))
            update_bn([x_train], model)
            check = max(check, _update_bn_error(model, x_train))
            results[beta]["exact"].append(evaluate(model, *task.test))
    tests, verdicts, rows, panels = [], [], [], []
    for beta, arms in results.items():
        test = wilcoxon(
            f"beta {beta} (momentum {1 - beta:.3g}): test accuracy, EMA - exact",
            arms["ema"],
            arms["exact"],
            rng,
            preset.bootstrap,
        )
        tests.append(test)
        verdicts.append(equivalence_verdict(test, EQUIVALENCE_MARGIN))
        claim = f" (the claim): {verdicts[-1]}" if beta == EMA_BETAS[0] else ""
        panels.append(_panel(f"beta {beta}{claim}", arms["ema"], arms["exact"], test))
        rows.append(
            {
                "bn_beta": beta,
                "momentum": round(1 - beta, 4),
                "test, EMA statistics": _mean_sd(arms["ema"]),
                "test, exact statistics": _mean_sd(arms["exact"]),
            }
        )
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
        rows=rows,
        tests=tests,
        test_verdicts=verdicts,
        verdict=overall,
        explanation=f"{overall.capitalize()}: with beta 0.9 the moving averages scored "
        f"{_points(tests[0].mean_difference)} against the exact statistics (95% interval "
        f"{_points(tests[0].ci_low)} to {_points(tests[0].ci_high)}; the margin is "
        f"+-{100 * EQUIVALENCE_MARGIN:.1f}). With beta 0.99 and 0.999 the averages span ~100 and ~1000 "
        f"steps, as long as or longer than this training run, so they still carry the initial statistics and "
        f"those of early weights: {_points(tests[1].mean_difference)} and "
        f"{_points(tests[2].mean_difference)}.",
        figure="test_time_statistics.png",
        figure_data=_figure_data(
            "paired_panels", panels=panels, arms=["EMA", "exact"], ylabel="test accuracy"
        ),
        extra={"update_bn_max_error": check},
    )


def _update_bn_error(model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest gap between the first BatchNorm's statistics and a float64 recomputation over ``inputs``."""
    with torch.no_grad():
        hidden = model[0](inputs).double()
    norm = model[1]
    mean_error = (norm.running_mean.double() - hidden.mean(dim=0)).abs().max()
    var_error = (norm.running_var.double() - hidden.var(dim=0, unbiased=True)).abs().max()
    return float(max(mean_error, var_error))


def _above_noise(measured: dict[str, Importances | None]) -> str:
    """Which parameters each optimizer's importances put above the noise floor, as a sentence."""
    found = [
        f"{optimizer.upper()}: {', '.join(importance.above_noise()) or 'none'}"
        for optimizer, importance in measured.items()
        if importance is not None
    ]
    if not found:
        return " Too few trials to compute importances."
    return (
        f" Above the noise floor in 95% of the resamples: {'; '.join(found)}. Any other ordering of the "
        "tiers is within the noise at this number of trials."
    )


def _points(fraction: float) -> str:
    """An accuracy difference in percentage points."""
    return f"{100 * fraction:+.2f} points"


def _explain(outcome: str, what: str) -> str:
    if outcome == HELD:
        return f"Held: {what}, beyond what chance explains."
    if outcome == CONTRADICTED:
        return f"Contradicted: the data point the other way, beyond chance (expected: {what})."
    return f"Not shown: this data cannot tell the difference from chance (expected: {what})."


EXPERIMENTS: tuple[Callable[[Context], Finding], ...] = (
    random_vs_grid,
    coarse_to_fine,
    log_vs_linear,
    batchnorm_vs_none,
    batchnorm_noise,
    importance_ranking,
    test_time_statistics,
)
