"""One trial, as named steps: sample → duplicates → static measures → constraints → train with
pruning → latency's second half → record → more seeds (``study.repeats``).

Each step is a function of the Optuna trial and what the earlier steps gave, so each can be run
and tested alone; ``Objective`` only chains them. A step that ends the trial early either returns
the objective values (infeasible arch, repeat of a complete arch) or raises ``optuna.TrialPruned``
(impossible arch, divergence, pruner, repeat of a pruned arch). Everything a user needs later is
stored on the trial as user attributes, so a study is self-describing in optuna-dashboard.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .arch import Arch, arch_hash
from .artifacts import save_trial_artifacts
from .data import Splits
from .errors import ArchError
from .measure import (STATIC_ATTRS, SplitLatency, StaticMetrics, StaticSizes, finish_static, start_static,
                      static_sizes, stored_latency)
from .models import build_model
from .optuna_compat import fail_running_trial, set_user_attrs
from .pruning import MultiObjectivePruner, TrialView
from .seeds import SeedResult, measure_seed, repeat_seeds, seed_attrs, train_seed
from .spec import Spec
from .train import DivergenceError, EpochResult, TrainRecipe, TrainResult, train

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Attributes of an original that a duplicate does not copy: they describe that run, not the arch.
_NOT_COPIED = ("train_seconds", "train_seconds_seeds", "train_seconds_std", "retry_of", "retries", "reason", "pruned_reason", "pruned_epoch")


class Reporter:
    """Progress hooks for a run; the CLI shows them with rich, tests may record them."""

    def data_loaded(self, splits: Splits) -> None: ...
    def study_opened(self, finished: int, target: int) -> None: ...
    def warning(self, text: str) -> None: ...
    def trial_started(self, number: int, arch: Arch) -> None: ...
    def epoch_done(self, number: int, result: EpochResult, epochs: int) -> None: ...
    def trial_finished(self, trial: FrozenTrial) -> None: ...


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def identity(arch: Arch, recipe: TrainRecipe) -> str:
    """Arch hash plus recipe: the same arch trained another way is not a duplicate."""
    recipe_text = json.dumps(recipe.to_dict(), sort_keys=True)
    return arch_hash(arch) + "-" + hashlib.sha1(recipe_text.encode()).hexdigest()[:8]


def prune(trial: optuna.Trial, reason: str, epoch: int, result: TrainResult | None = None):
    """End the trial as PRUNED, saying why and at which epoch."""
    attrs = training_attrs(result) if result is not None else {}
    set_user_attrs(trial, {**attrs, "pruned_reason": reason, "pruned_epoch": epoch})
    raise optuna.TrialPruned(reason)


# -- 1. sample -----------------------------------------------------------------------------------

@dataclass
class Sampled:
    arch: Arch
    recipe: TrainRecipe
    identity: str
    sizes: StaticSizes  # params, FLOPs and memory, counted without allocating the model


def sample(trial: optuna.Trial, spec: Spec, splits: Splits) -> Sampled:
    """Ask the trial for an arch and a recipe and record them; an impossible arch is pruned."""
    try:
        arch = spec.space.sample(trial, splits.input_shape, splits.num_classes)
        sizes = static_sizes(arch, splits.input_shape, spec.measure.latency_batch_size)  # over a limit: impossible
    except ArchError as exc:
        prune(trial, f"impossible arch: {exc}", 0)
    recipe = spec.sample_recipe(trial)
    key = identity(arch, recipe)
    set_user_attrs(trial, {"arch": arch.to_dict(), "arch_summary": arch.describe(), "family": arch.family,
                           "arch_hash": key, "recipe": recipe.to_dict()})
    return Sampled(arch, recipe, key, sizes)


# -- 2. static measures --------------------------------------------------------------------------

def build_and_measure(trial: optuna.Trial, sampled: Sampled, spec: Spec, splits: Splits, seed: int,
                      latency_machine: str | None = None) -> tuple[torch.nn.Module, StaticMetrics, SplitLatency | None]:
    """Build the model from the trial's seed and record its static figures on the trial.

    The latency is its first half's; the timing that is returned takes the second (``finish_latency``).
    ``latency_machine``: this machine's line where it is not the study's (``study.foreign_machine``),
    stored on a trial whose latency it times."""
    torch.manual_seed(seed)
    model = build_model(sampled.arch)
    try:  # a repeat of an arch (any recipe) reuses its latency; an arch ONNX cannot express is impossible
        static, split = start_static(sampled.arch, model, splits.input_shape, spec.measure,
                                     with_latency=spec.times_latency, sizes=sampled.sizes,
                                     stored=stored_latency(trial.study, arch_hash(sampled.arch)),
                                     reference_ms=trial.study.user_attrs.get("latency_reference_ms"))
    except ArchError as exc:
        prune(trial, f"impossible arch: {exc}", 0)
    attrs = {"seed": seed, **static.to_dict()}  # `mixsearch train` repeats the trial with its seed
    if split is not None and latency_machine is not None:
        attrs["latency_machine"] = latency_machine
    set_user_attrs(trial, attrs)
    return model, static, split


def finish_latency(trial: optuna.Trial, static: StaticMetrics, split: SplitLatency | None) -> StaticMetrics:
    """Time the latency's second half and store the figure (the faster half) on the trial.

    Called once training has ended, however it ended: seconds apart from the first half, so that a
    slow spell of the machine rarely spoils both (``measure.latency.SplitLatency``)."""
    if split is None:
        return static
    static = finish_static(static, split)
    set_user_attrs(trial, {"latency_ms": static.latency_ms, "latency_iqr_ms": static.latency_iqr_ms})
    return static


def objective_values(spec: Spec, accuracy: float, static: StaticMetrics) -> list[float]:
    return [accuracy if name == "accuracy" else float(static.objective(name)) for name in spec.objectives]


def static_objectives(spec: Spec, static: StaticMetrics) -> dict[str, float]:
    return {name: float(static.objective(name)) for name in spec.objectives if name != "accuracy"}


# -- 3. constraints ------------------------------------------------------------------------------

def constraint_violations(constraints: dict[str, float], static: StaticMetrics) -> list[str]:
    violations = []
    for name, bound in constraints.items():
        value = float(static.objective(name))
        if value > bound:
            violations.append(f"{name} {value:g} > {bound:g}")
    return violations


def check_constraints(trial: optuna.Trial, constraints: dict[str, float], static: StaticMetrics) -> list[str]:
    """Record each constraint on the trial; a violated one marks it infeasible. Returns the violations."""
    for name, bound in constraints.items():
        value = float(static.objective(name))
        # Relative violation: the sampler compares constraints of different units.
        trial.set_constraint(name, (value - bound) / bound if bound else value)
    violations = constraint_violations(constraints, static)
    if violations:
        set_user_attrs(trial, {"infeasible_reason": "; ".join(violations), "epochs_run": 0})
    return violations


# -- 4. duplicates -------------------------------------------------------------------------------

def find_duplicate(study: optuna.Study, key: str) -> FrozenTrial | None:
    """The finished original of this arch and recipe: a complete one first, else a pruned one."""
    originals = [other for other in study.get_trials(deepcopy=False, states=FINISHED)
                 if other.user_attrs.get("arch_hash") == key and "duplicate_of" not in other.user_attrs]
    originals.sort(key=lambda other: other.state != TrialState.COMPLETE)
    return originals[0] if originals else None


def reuse(trial: optuna.Trial, original: FrozenTrial) -> list[float]:
    """A repeat of a finished arch: copy its results, train nothing.

    A repeat of a pruned arch is pruned at once: its original was stopped as hopeless (or
    diverged), and training it again from another seed would mostly pay for the same answer.
    """
    copied = {key: value for key, value in original.user_attrs.items()
              if key not in trial.user_attrs and key not in _NOT_COPIED}
    set_user_attrs(trial, {"duplicate_of": original.number, **copied, "epochs_run": 0})
    for key, value in original.constraints.items():
        trial.set_constraint(key, value)
    if original.state == TrialState.PRUNED:
        prune(trial, f"duplicate of trial {original.number}, pruned at epoch "
                     f"{original.user_attrs.get('pruned_epoch', 0)}: {original.user_attrs.get('pruned_reason')}", 0)
    return list(original.values)


# -- 5. train with pruning -----------------------------------------------------------------------

def epoch_dict(result: EpochResult) -> dict[str, float]:
    return {"epoch": result.epoch, "train_loss": round(result.train_loss, 5),
            "val_accuracy": round(result.val_accuracy, 5), "seconds": round(result.seconds, 3)}


def training_attrs(result: TrainResult) -> dict[str, Any]:
    return {"curve": [epoch_dict(r) for r in result.curve], "epochs_run": result.epochs_run,
            "train_seconds": round(result.train_seconds, 3)}


def record_training(trial: optuna.Trial, result: TrainResult) -> None:
    set_user_attrs(trial, training_attrs(result))


def finished_views(study: optuna.Study, objectives: list[str]) -> list[TrialView]:
    """What the pruner compares a running trial with: the trained finished trials' curves."""
    views = []
    for other in study.get_trials(deepcopy=False, states=FINISHED):
        curve = [e["val_accuracy"] for e in other.user_attrs.get("curve", [])]
        if not curve or "duplicate_of" in other.user_attrs:
            continue
        static = {name: float(other.user_attrs[key]) for name, key in STATIC_ATTRS.items()
                  if name in objectives and other.user_attrs.get(key) is not None}
        views.append(TrialView(other.number, curve, static, finished=other.state == TrialState.COMPLETE))
    return views


# A trial writes its running curve and reads the finished trials at the end of an epoch once at
# least this many seconds of training have passed since it last did (and at its first epoch). The
# two cost 5-7 ms together, where a small arch's epoch lasts 0.3-0.7 s: at every epoch they were
# 1-2% of its training. The pruner still decides at every epoch.
STORAGE_EVERY_SECONDS = 1.0


def train_with_pruning(trial: optuna.Trial, model: torch.nn.Module, spec: Spec, splits: Splits,
                       recipe: TrainRecipe, static: StaticMetrics, pruner: MultiObjectivePruner, seed: int,
                       reporter: Reporter, trainer: Callable[..., TrainResult] | None = None) -> TrainResult:
    """Train, asking the pruner after each epoch; a pruned or diverged trial raises TrialPruned."""
    model.to(splits.train_x.device)
    curve: list[EpochResult] = []
    views: list[TrialView] = []
    since_storage = math.inf  # seconds of training since the last epoch-end storage work
    pruned_reason = None

    def on_epoch(result: EpochResult) -> bool:
        nonlocal views, since_storage, pruned_reason
        curve.append(result)
        reporter.epoch_done(trial.number, result, recipe.epochs)
        if result.epoch >= recipe.epochs:
            return False  # the whole curve is stored with the result
        since_storage += result.seconds
        if since_storage >= STORAGE_EVERY_SECONDS:
            since_storage = 0.0
            # The running curve, for the dashboard; and the finished trials read afresh: other
            # workers' trials finish while this one trains, and a pruner that judged against the
            # trials known at its first epoch would prune less.
            trial.set_user_attr("curve", [epoch_dict(r) for r in curve])
            views = finished_views(trial.study, list(spec.objectives))
        pruned_reason = pruner.prune_reason(
            TrialView(trial.number, [r.val_accuracy for r in curve], static_objectives(spec, static)),
            views, recipe.epochs)
        return bool(pruned_reason)

    try:
        result = (trainer or train)(model, splits, recipe, seed=seed, on_epoch=on_epoch)
    except DivergenceError as exc:
        prune(trial, f"diverged: {exc}", exc.epoch, exc.partial)
    if result.stopped_early:
        prune(trial, pruned_reason or "pruned", result.epochs_run, result)  # stores the training with the reason
    record_training(trial, result)
    return result


# -- 6. more seeds -------------------------------------------------------------------------------

def train_more_seeds(trial: optuna.Trial, sampled: Sampled, splits: Splits, seeds: list[int], reporter: Reporter,
                     trainer: Callable[..., TrainResult] | None = None) -> list[SeedResult]:
    """``study.repeats`` > 1: the same arch and recipe from each further seed, trained to the end.

    The pruner has already judged the first seed's curve; these are not pruned. A seed that
    diverges prunes the trial (its mean would mean nothing)."""
    results = []
    for seed in seeds:
        def on_epoch(result: EpochResult) -> bool:
            reporter.epoch_done(trial.number, result, sampled.recipe.epochs)
            return False
        try:
            results.append(train_seed(sampled.arch, sampled.recipe, splits, seed, on_epoch, trainer))
        except DivergenceError as exc:
            prune(trial, f"diverged with seed {seed}: {exc}", exc.epoch)
    return results


# -- 7. record -----------------------------------------------------------------------------------

def record_result(trial: optuna.Trial, model: torch.nn.Module, arch: Arch, splits: Splits,
                  result: TrainResult, artifact_store: Any = None) -> SeedResult:
    """The first seed's accuracies and trained model's files: what export and the dashboard show."""
    first = measure_seed(model, splits, trial.user_attrs["seed"], result)
    record_seeds(trial, [first])
    if artifact_store is not None:
        save_trial_artifacts(trial, artifact_store, arch, model, trial.user_attrs["curve"])
    return first


def record_seeds(trial: optuna.Trial, results: list[SeedResult]) -> float:
    """Store the seeds' results (means, and per-seed lists and std for several); return the mean
    validation accuracy, the trial's accuracy objective."""
    attrs = seed_attrs(results)
    set_user_attrs(trial, attrs)
    return attrs["val_accuracy"]


# -- the chain -----------------------------------------------------------------------------------

@dataclass
class Objective:
    """Callable for ``study.optimize``: one trial from sample to objective values."""

    spec: Spec
    splits: Splits
    pruner: MultiObjectivePruner
    seed: int
    reporter: Reporter = field(default_factory=Reporter)
    trainer: Callable[..., TrainResult] | None = None  # None: the module's ``train``
    on_start: Callable[[optuna.Trial], None] | None = None  # first thing once the trial is RUNNING
    current: optuna.Trial | None = None  # the trial this process runs now
    artifact_store: Any = None  # an Optuna artifact store: arch, curve and weights of trained trials
    repeats: int = 1  # seeds per trial; the accuracy objective is their mean
    latency_machine: str | None = None  # this machine, where it is not the one of the study's latencies

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.current = trial
        trial.set_user_attr("worker", worker_name())
        if self.on_start is not None:
            self.on_start(trial)
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted")  # Optuna then marks the trial FAIL
            raise

    def fail_current(self, study: optuna.Study, reason: str) -> None:
        """Mark this process's trial FAIL if an interrupt left it RUNNING (outside the objective)."""
        if self.current is not None:
            fail_running_trial(study, self.current, reason)

    def _run(self, trial: optuna.Trial) -> list[float]:
        spec, splits = self.spec, self.splits
        sampled = sample(trial, spec, splits)
        self.reporter.trial_started(trial.number, sampled.arch)
        original = find_duplicate(trial.study, sampled.identity)
        if original is not None:
            return reuse(trial, original)
        seed = self.seed + trial.number
        model, static, split = build_and_measure(trial, sampled, spec, splits, seed, self.latency_machine)
        if split is not None and constraint_violations(spec.constraints, static):
            # Out of bounds on the first half alone: the whole measurement decides, and its second
            # half can only lower the figure.
            static, split = finish_latency(trial, static, split), None
        if check_constraints(trial, spec.constraints, static):
            # The sampler learns from a complete trial marked infeasible; accuracy 0 keeps it
            # off any front, and best_trials ignores infeasible trials anyway.
            return objective_values(spec, 0.0, static)
        try:
            result = train_with_pruning(trial, model, spec, splits, sampled.recipe, static, self.pruner, seed,
                                        self.reporter, self.trainer)
        except optuna.TrialPruned:
            finish_latency(trial, static, split)  # pruned trials keep a figure, as the pruner compares them
            raise
        static = finish_latency(trial, static, split)
        first = record_result(trial, model, sampled.arch, splits, result, self.artifact_store)
        if self.repeats == 1:
            return objective_values(spec, first.val_accuracy, static)
        more = train_more_seeds(trial, sampled, splits, repeat_seeds(seed, self.repeats - 1, start=1),
                                self.reporter, self.trainer)
        return objective_values(spec, record_seeds(trial, [first, *more]), static)
