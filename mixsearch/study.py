"""The search loop: sampler, the objective of one trial, user attributes, resuming.

One trial: sample an arch and a recipe → measure the static objectives → check constraints and
duplicates (both cost no training) → train, asking the pruner after each epoch → evaluate on the
test split → return the objective values. Everything a user needs later is stored on the trial
as user attributes, so a study is self-describing in optuna-dashboard.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .arch import Arch, arch_hash
from .artifacts import refresh_plots, save_trial_artifacts, should_refresh, study_artifact_store
from .data import Splits, dataset_info, load_splits
from .errors import ArchError, MixsearchError, UsageError
from .measure import StaticMetrics, measure_static
from .models import build_model, inference_model
from .pruning import MultiObjectivePruner, TrialView, make_pruner
from .space import count_space
from .spec import Spec
from .storage import (GRACE_SECONDS, TrialSlotLock, _env_seconds, default_storage_url, mask_password,
                      open_storage, quiet_experimental)
from .train import (DivergenceError, EpochResult, TrainRecipe, TrainResult, evaluate, resolve_device,
                    train)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_RETRIES = 3  # a trial whose params failed this often is not queued again
POLL_SECONDS = 2.0  # how often a worker with nothing to start looks at the others' trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Optuna logs every failed trial with its traceback; ours say why in user attrs (an interrupt, a
# dead worker), and a real error propagates out of run_study with its traceback anyway.
logging.getLogger("optuna.study._optimize").setLevel(logging.ERROR)


class Reporter:
    """Progress hooks for a run; the CLI shows them with rich, tests may record them."""

    def data_loaded(self, splits: Splits) -> None: ...
    def study_opened(self, finished: int, target: int) -> None: ...
    def trial_started(self, number: int, arch: Arch) -> None: ...
    def epoch_done(self, number: int, result: EpochResult, epochs: int) -> None: ...
    def trial_finished(self, trial: FrozenTrial) -> None: ...


def make_sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    name = spec.study.sampler
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=16)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.GridSampler(grid_search_space(spec), seed=seed)


def grid_search_space(spec: Spec) -> dict[str, list[Any]]:
    """Every parameter name the space can ask, with all its values, for ``GridSampler``."""
    from .space import _EnumeratingTrial  # the same walker that counts the space

    input_shape, num_classes = dataset_info(spec.data)
    if count_space(spec.space, input_shape, num_classes) is None:
        raise UsageError(f"{spec.source}: study.sampler: grid needs a space without continuous ranges (give a step)")
    grid: dict[str, list[Any]] = {}
    pending: list[dict[str, Any]] = [{}]
    seen: set[tuple] = set()
    while pending:
        fixed = pending.pop()
        trial = _EnumeratingTrial(fixed)
        try:
            spec.space.sample(trial, input_shape, num_classes)
            spec.sample_recipe(trial)
        except ArchError:
            pass
        for name in trial.order:
            grid.setdefault(name, trial.options[name])
            for value in trial.options[name]:
                key = (name, value)
                if key not in seen:
                    seen.add(key)
                    pending.append({**fixed, name: value})
    return grid


def _identity(arch: Arch, recipe: TrainRecipe) -> str:
    """Arch hash plus recipe: the same arch trained another way is not a duplicate."""
    recipe_text = json.dumps(recipe.to_dict(), sort_keys=True)
    return arch_hash(arch) + "-" + hashlib.sha1(recipe_text.encode()).hexdigest()[:8]


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
    current: int | None = None  # trial id of the trial this process runs now
    artifact_store: Any = None  # an Optuna artifact store: arch, curve and weights of trained trials

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.current = trial._trial_id
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
        if self.current is None:
            return
        storage = study._storage
        try:
            if storage.get_trial(self.current).state == TrialState.RUNNING:
                storage.set_trial_user_attr(self.current, "reason", reason)
                storage.set_trial_state_values(self.current, TrialState.FAIL)
        except Exception:  # another worker may have failed it as stale meanwhile
            pass

    def _run(self, trial: optuna.Trial) -> list[float]:
        spec = self.spec
        try:
            arch = spec.space.sample(trial, self.splits.input_shape, self.splits.num_classes)
        except ArchError as exc:
            self._prune(trial, f"impossible arch: {exc}", 0)
        recipe = spec.sample_recipe(trial)
        identity = _identity(arch, recipe)
        trial.set_user_attr("arch", arch.to_dict())
        trial.set_user_attr("arch_summary", arch.describe())
        trial.set_user_attr("family", arch.family)
        trial.set_user_attr("arch_hash", identity)
        trial.set_user_attr("recipe", recipe.to_dict())
        self.reporter.trial_started(trial.number, arch)

        original = self._find_duplicate(trial, identity)
        if original is not None:
            return self._reuse(trial, original)

        trial.set_user_attr("seed", self.seed + trial.number)  # `mixsearch train` repeats the trial with it
        torch.manual_seed(self.seed + trial.number)
        model = build_model(arch)
        static = measure_static(model, inference_model(model), self.splits.input_shape, spec.measure,
                                with_latency=True)
        self._record_static(trial, static)
        violations = self._check_constraints(trial, static)
        if violations:
            trial.set_user_attr("infeasible_reason", "; ".join(violations))
            trial.set_user_attr("epochs_run", 0)
            # The sampler learns from a complete trial marked infeasible; accuracy 0 keeps it
            # off any front, and best_trials ignores infeasible trials anyway.
            return self._values(0.0, static)

        device = self.splits.train_x.device
        model.to(device)
        views = None

        def on_epoch(result: EpochResult) -> bool:
            nonlocal views
            curve.append(result)
            trial.set_user_attr("curve", [_epoch_dict(r) for r in curve])
            self.reporter.epoch_done(trial.number, result, recipe.epochs)
            if result.epoch >= recipe.epochs:
                return False
            if views is None:  # the finished trials do not change while one worker trains
                views = self._finished_views(trial)
            reason = self.pruner.prune_reason(
                TrialView(trial.number, [r.val_accuracy for r in curve], self._static_objectives(static)),
                views, recipe.epochs)
            if reason:
                trial.set_user_attr("pruned_reason", reason)
            return bool(reason)

        curve: list[EpochResult] = []
        try:
            result = (self.trainer or train)(model, self.splits, recipe, seed=self.seed + trial.number, on_epoch=on_epoch)
        except DivergenceError as exc:
            self._prune(trial, f"diverged: {exc}", exc.epoch, exc.partial)
        self._record_training(trial, result)
        if result.stopped_early:
            self._prune(trial, trial.user_attrs.get("pruned_reason", "pruned"), result.epochs_run, result)
        test_accuracy = evaluate(model, self.splits.test_x, self.splits.test_y)
        trial.set_user_attr("test_accuracy", test_accuracy)
        trial.set_user_attr("val_accuracy", result.val_accuracy)
        if self.artifact_store is not None:
            save_trial_artifacts(trial, self.artifact_store, arch, model, trial.user_attrs["curve"])
        return self._values(result.val_accuracy, static)

    # -- pieces of one trial ---------------------------------------------------------------

    def _values(self, accuracy: float, static: StaticMetrics) -> list[float]:
        return [accuracy if name == "accuracy" else float(static.objective(name)) for name in self.spec.objectives]

    def _static_objectives(self, static: StaticMetrics) -> dict[str, float]:
        return {name: float(static.objective(name)) for name in self.spec.objectives if name != "accuracy"}

    def _record_static(self, trial: optuna.Trial, static: StaticMetrics) -> None:
        for key, value in static.to_dict().items():
            trial.set_user_attr(key, value)

    def _record_training(self, trial: optuna.Trial, result: TrainResult) -> None:
        trial.set_user_attr("curve", [_epoch_dict(r) for r in result.curve])
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("train_seconds", round(result.train_seconds, 3))

    def _check_constraints(self, trial: optuna.Trial, static: StaticMetrics) -> list[str]:
        violations = []
        for name, bound in self.spec.constraints.items():
            value = float(static.objective(name))
            # Relative violation: the sampler compares constraints of different units.
            trial.set_constraint(name, (value - bound) / bound if bound else value)
            if value > bound:
                violations.append(f"{name} {value:g} > {bound:g}")
        return violations

    def _prune(self, trial: optuna.Trial, reason: str, epoch: int, result: TrainResult | None = None):
        if result is not None:
            self._record_training(trial, result)
        trial.set_user_attr("pruned_reason", reason)
        trial.set_user_attr("pruned_epoch", epoch)
        raise optuna.TrialPruned(reason)

    def _find_duplicate(self, trial: optuna.Trial, identity: str) -> FrozenTrial | None:
        """The finished original of this arch and recipe: a complete one first, else a pruned one."""
        originals = [other for other in trial.study.get_trials(deepcopy=False, states=FINISHED)
                     if other.user_attrs.get("arch_hash") == identity and "duplicate_of" not in other.user_attrs]
        originals.sort(key=lambda other: other.state != TrialState.COMPLETE)
        return originals[0] if originals else None

    def _reuse(self, trial: optuna.Trial, original: FrozenTrial) -> list[float]:
        """A repeat of a finished arch: copy its results, train nothing.

        A repeat of a pruned arch is pruned at once: its original was stopped as hopeless (or
        diverged), and training it again from another seed would mostly pay for the same answer.
        """
        trial.set_user_attr("duplicate_of", original.number)
        for key, value in original.user_attrs.items():
            if key not in trial.user_attrs and key not in ("train_seconds", "retry_of", "retries", "reason",
                                                           "pruned_reason", "pruned_epoch"):
                trial.set_user_attr(key, value)
        trial.set_user_attr("epochs_run", 0)
        for key, value in original.constraints.items():
            trial.set_constraint(key, value)
        if original.state == TrialState.PRUNED:
            self._prune(trial, f"duplicate of trial {original.number}, pruned at epoch "
                               f"{original.user_attrs.get('pruned_epoch', 0)}: {original.user_attrs.get('pruned_reason')}", 0)
        return list(original.values)

    def _finished_views(self, trial: optuna.Trial) -> list[TrialView]:
        views = []
        for other in trial.study.get_trials(deepcopy=False, states=FINISHED):
            curve = [e["val_accuracy"] for e in other.user_attrs.get("curve", [])]
            if not curve or "duplicate_of" in other.user_attrs:
                continue
            static = {name: float(other.user_attrs[key]) for name, key in _STATIC_ATTRS.items()
                      if name in self.spec.objectives and other.user_attrs.get(key) is not None}
            views.append(TrialView(other.number, curve, static, finished=other.state == TrialState.COMPLETE))
        return views


_STATIC_ATTRS = {"params": "params", "flops": "flops", "latency": "latency_ms"}


def _epoch_dict(result: EpochResult) -> dict[str, float]:
    return {"epoch": result.epoch, "train_loss": round(result.train_loss, 5),
            "val_accuracy": round(result.val_accuracy, 5), "seconds": round(result.seconds, 3)}


@dataclass
class RunSummary:
    study: optuna.Study
    storage_url: str
    added: int
    finished: int
    seconds: float
    data_source: str
    interrupted: bool = False


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def open_study(spec: Spec, storage_url: str, seed: int, create: bool = True) -> optuna.Study:
    """Create the study, or load it to resume; a study with other objectives is refused."""
    storage = open_storage(storage_url, create=create)
    shown = mask_password(storage_url)
    try:
        study = optuna.create_study(study_name=spec.study.name, storage=storage, sampler=make_sampler(spec, seed),
                                    directions=spec.directions, load_if_exists=True)
    except ValueError as exc:
        raise UsageError(f"storage {shown}: study {spec.study.name!r} exists with other objectives ({exc})") from None
    if study.metric_names is None:
        with quiet_experimental():
            study.set_metric_names(list(spec.objectives))
        study.set_user_attr("spec_file", spec.source)
        study.set_user_attr("spec", json.loads(json.dumps(spec.raw, default=str)))
    elif list(study.metric_names) != list(spec.objectives):
        raise UsageError(f"{spec.source}: objectives {list(spec.objectives)} differ from the existing study "
                         f"{spec.study.name!r} in {shown} ({list(study.metric_names)}); use another study.name")
    return study


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():  # a RUNNING trial of "this" pid while none runs here: an earlier process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_trials(study: optuna.Study) -> list[int]:
    """Fail the trials of dead workers, then queue the params of failed trials again.

    RDB storages find dead workers by their missing heartbeat; a worker on this machine is also
    found by its process id (the journal storage has no heartbeat). A failed trial is queued
    once; a trial that failed ``MAX_RETRIES`` times in a row is left alone. Returns the numbers
    of the trials queued again.
    """
    storage = study._storage
    host = socket.gethostname()
    grace = _env_seconds("MIXSEARCH_HEARTBEAT_GRACE", GRACE_SECONDS)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        # A worker writes its name first thing in a trial; a trial without one after the grace
        # lost its worker between creation and that write (no pid to check, no heartbeat yet).
        unclaimed = "worker" not in trial.user_attrs and trial.datetime_start is not None and \
            (datetime.datetime.now() - trial.datetime_start).total_seconds() > grace
        if unclaimed or where == host and pid.isdigit() and _process_gone(int(pid)):
            try:
                storage.set_trial_user_attr(trial._trial_id, "reason", "worker died")
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except Exception:  # finished meanwhile, or failed by another worker
                pass
    with quiet_experimental():  # then the trials of workers elsewhere whose heartbeat stopped
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for trial in trials:
        retries = trial.user_attrs.get("retries", 0)
        # A queued retry that died before it sampled anything still holds its params as fixed ones.
        params = trial.params or trial.system_attrs.get("fixed_params")
        if trial.state != TrialState.FAIL or trial.number in retried or not params or retries >= MAX_RETRIES:
            continue
        study.enqueue_trial(params, user_attrs={"retry_of": trial.number, "retries": retries + 1})
        queued.append(trial.number)
    return queued


def run_study(spec: Spec, storage_url: str | None = None, trials: int | None = None,
              timeout: float | None = None, seed: int | None = None,
              reporter: Reporter | None = None, sampler_seed: int | None = None,
              artifacts: str | None = None) -> RunSummary:
    """Run (or resume) the study until ``trials`` finished trials exist in total.

    Several processes may run this on one study at once (``--jobs``, ``mixsearch worker``): each
    starts a trial only while finished plus running trials fall short of ``trials``, then waits
    for the others, so the study ends with exactly ``trials`` finished trials. Trials of dead
    workers are failed and their params tried again first. Ctrl-C fails the running trial with
    reason "interrupted" and returns a summary with ``interrupted`` set. Trained trials upload
    their files to the artifact store in ``artifacts`` (default: see ``artifacts.artifact_dir``).
    """
    reporter = reporter or Reporter()
    storage_url = storage_url or spec.study.storage or default_storage_url(spec.study.name)
    seed = spec.study.seed if seed is None else seed
    target = trials or spec.study.trials
    timeout = timeout if timeout is not None else spec.study.timeout
    device = resolve_device(_fixed_device(spec))
    # Load data before touching the storage: a missing data set must leave nothing behind.
    try:
        splits = load_splits(spec.data, device=device)
    except MixsearchError as exc:  # data errors name the field; say which spec file it is in
        if not str(exc).startswith(spec.source):
            exc.args = (f"{spec.source}: {exc}",)
        raise
    reporter.data_loaded(splits)
    study = open_study(spec, storage_url, seed if sampler_seed is None else sampler_seed)
    pruner = make_pruner(spec.study.pruner, spec.study.pruner_settings)
    lock = TrialSlotLock(study._storage, storage_url, spec.study.name)
    objective = Objective(spec, splits, pruner, seed, reporter, on_start=lambda trial: lock.release(),
                          artifact_store=study_artifact_store(study, storage_url, artifacts, record=True))

    def trial_finished(study: optuna.Study, trial: FrozenTrial) -> None:
        reporter.trial_finished(trial)
        if should_refresh(finished_count(study)):
            refresh_plots(study)
    before = finished_count(study)
    reporter.study_opened(before, target)
    started = time.perf_counter()
    interrupted = False
    try:
        while timeout is None or time.perf_counter() - started < timeout:
            lock.acquire()
            try:
                recover_trials(study)
                finished = finished_count(study)
                if finished >= target:
                    break
                running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                if finished + running >= target:  # enough trials under way; one may still fail
                    lock.release()
                    time.sleep(POLL_SECONDS)
                    continue
                study.optimize(objective, n_trials=1, callbacks=[trial_finished], catch=())
            finally:
                lock.release()
            if study._stop_flag:  # the grid sampler has run every point
                break
    except KeyboardInterrupt:
        interrupted = True
        objective.fail_current(study, "interrupted")
    refresh_plots(study)
    return RunSummary(study, storage_url, finished_count(study) - before, finished_count(study),
                      time.perf_counter() - started, splits.source, interrupted)


def _fixed_device(spec: Spec) -> str:
    choice = spec.train["device"]
    if not choice.is_fixed:
        raise UsageError(f"{spec.source}: train.device cannot be searched (data lives on one device)")
    return choice.extremes()[0]


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Pareto-optimal feasible complete trials, originals only (a duplicate repeats its original)."""
    best = [t for t in study.best_trials if "duplicate_of" not in t.user_attrs
            and "infeasible_reason" not in t.user_attrs]
    return sorted(best, key=lambda t: t.values[0], reverse=study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts
