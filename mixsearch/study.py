"""The search loop: opening (or resuming) a study, its sampler, recovering failed trials, and the
worker loop that starts trials until the study has enough.

What one trial does is in ``trial``; several worker processes at once are ``parallel``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .artifacts import PlotRefresher, refresh_plots, study_artifact_store
from .data import dataset_info, load_splits
from .errors import ArchError, MixsearchError, UsageError
from .measure import machine_description, reference_latency, runtime_description
from .optuna_compat import enqueued_params, fail_running_trial, storage_of
from .pruning import make_pruner
from .space import count_space
from .spec import Spec
from .storage import (GRACE_SECONDS, TrialSlotLock, default_storage_url, env_seconds, mask_password, open_storage,
                      quiet_experimental)
from .train import resolve_device
from .trial import FINISHED, Objective, Reporter

MAX_RETRIES = 3  # a trial whose params failed this often is not queued again
POLL_SECONDS = 0.5  # how often a worker with nothing to start looks at the others' trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Optuna logs every failed trial with its traceback; ours say why in user attrs (an interrupt, a
# dead worker), and a real error propagates out of run_study with its traceback anyway.
logging.getLogger("optuna.study._optimize").setLevel(logging.ERROR)


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


def slot_counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials, from one read of the study.

    Two reads would race with the other workers: a trial that finishes between them is counted in
    neither, and the study overshoots its target by a trial.
    """
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    return sum(state in FINISHED for state in states), states.count(TrialState.RUNNING)


def ended_last(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether ``trial`` is the study's most recently ended trial (of any state)."""
    ended = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None]
    return bool(ended) and max(ended, key=lambda t: t.datetime_complete).number == trial.number


def open_study(spec: Spec, storage_url: str, seed: int, create: bool = True) -> optuna.Study:
    """Create the study, or load it to resume; a study with other objectives is refused."""
    storage = open_storage(storage_url, create=create)
    shown = mask_password(storage_url)
    try:
        study = optuna.create_study(study_name=spec.study.name, storage=storage, sampler=make_sampler(spec, seed),
                                    directions=spec.directions, load_if_exists=True)
    except ValueError as exc:
        raise UsageError(f"storage {shown}: study {spec.study.name!r} exists with other objectives ({exc})") from None
    resumed_after = len(study.get_trials(deepcopy=False))
    if resumed_after:  # seeded as at the start, a sampler would propose the first trials' params again
        study.sampler = make_sampler(spec, seed + resumed_after)
    if study.metric_names is None:  # just created: set it up, the metric names last
        enqueue_entries(study, spec)
        study.set_user_attr("spec_file", spec.source)
        study.set_user_attr("spec", json.loads(json.dumps(spec.raw, default=str)))
        if spec.times_latency:
            time_reference(study, spec)
        with quiet_experimental():
            study.set_metric_names(list(spec.objectives))
    elif list(study.metric_names) != list(spec.objectives):
        raise UsageError(f"{spec.source}: objectives {list(spec.objectives)} differ from the existing study "
                         f"{spec.study.name!r} in {shown} ({list(study.metric_names)}); use another study.name")
    elif spec.times_latency and "latency_reference_ms" not in study.user_attrs:
        time_reference(study, spec)  # created by a spec that did not time latency; this one does
    return study


def time_reference(study: optuna.Study, spec: Spec) -> None:
    """Time the reference network and store it on the study, with the runtime's name and the
    machine's: every worker's latencies are ratios to the reference network times this one figure."""
    study.set_user_attr("latency_runtime", runtime_description(spec.measure.runtime))
    study.set_user_attr("latency_machine", machine_description())
    study.set_user_attr("latency_reference_ms", reference_latency(
        dataset_info(spec.data)[0], spec.measure.runtime, spec.measure.latency_batch_size,
        spec.measure.latency_threads, spec.measure.latency_min_time))


def foreign_machine(study: optuna.Study, spec: Spec) -> str | None:
    """This machine's line when this process would time latencies for a study whose latencies
    were measured on another machine (``latency_machine``); None otherwise, or when the study
    does not say (created before it was stored)."""
    study_machine = study.user_attrs.get("latency_machine")
    if not spec.times_latency or study_machine is None or study_machine == machine_description():
        return None
    return machine_description()


def enqueue_entries(study: optuna.Study, spec: Spec) -> None:
    """Queue the spec's ``study.enqueue`` entries, in order, so that they are the first trials.

    Called once, when the study is created: a resumed study has them already (run or not). The
    other workers of ``run --jobs`` start only once the metric names, set after this, exist.
    """
    for entry, params in zip(spec.enqueue, spec.enqueued_params()):
        study.enqueue_trial(params, user_attrs={"label": entry.label} if entry.label else None)


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
    host = socket.gethostname()
    grace = env_seconds("MIXSEARCH_HEARTBEAT_GRACE", GRACE_SECONDS)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        # A worker writes its name first thing in a trial; a trial without one after the grace
        # lost its worker between creation and that write (no pid to check, no heartbeat yet).
        unclaimed = "worker" not in trial.user_attrs and trial.datetime_start is not None and \
            (datetime.datetime.now() - trial.datetime_start).total_seconds() > grace
        if unclaimed or where == host and pid.isdigit() and _process_gone(int(pid)):
            fail_running_trial(study, trial, "worker died")
    with quiet_experimental():  # then the trials of workers elsewhere whose heartbeat stopped
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for trial in trials:
        retries = trial.user_attrs.get("retries", 0)
        # A queued retry that died before it sampled anything still holds its params as fixed ones.
        params = trial.params or enqueued_params(trial)
        if trial.state != TrialState.FAIL or trial.number in retried or not params or retries >= MAX_RETRIES:
            continue
        study.enqueue_trial(params, user_attrs={"retry_of": trial.number, "retries": retries + 1})
        queued.append(trial.number)
    return queued


def run_study(spec: Spec, storage_url: str | None = None, trials: int | None = None,
              timeout: float | None = None, seed: int | None = None,
              reporter: Reporter | None = None, sampler_seed: int | None = None,
              artifacts: str | None = None, jobs: int = 1, repeats: int | None = None,
              leave_when_all_started: bool = False):
    """Run (or resume) the study until ``trials`` finished trials exist in total.

    ``jobs`` > 1 runs that many worker processes instead (``parallel.run_parallel``, which needs
    a spec loaded from its file) and returns its ``ParallelSummary``; else a ``RunSummary``.

    Several processes may run this on one study at once (``--jobs``, ``mixsearch worker``): each
    starts a trial only while finished plus running trials fall short of ``trials``, then waits
    for the others, so the study ends with exactly ``trials`` finished trials. Trials of dead
    workers are failed and their params tried again first. Ctrl-C fails the running trial with
    reason "interrupted" and returns a summary with ``interrupted`` set. With
    ``leave_when_all_started`` a process returns once the trials under way would reach ``trials``,
    instead of waiting: a worker of ``run --jobs`` does, so that the workers still training take
    up its threads (``parallel.ThreadShare``); one whose trial fails starts the next itself.
    Trained trials upload their files to the artifact store in ``artifacts`` (default: see
    ``artifacts.artifact_dir``).
    ``repeats`` (default ``study.repeats``) trains each arch and recipe with that many seeds.
    """
    if jobs > 1:
        from .parallel import run_parallel

        return run_parallel(spec, jobs, storage_url, trials, timeout, seed, artifacts, repeats=repeats)
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
    lock = TrialSlotLock(storage_of(study), storage_url, spec.study.name)
    machine = foreign_machine(study, spec)
    if machine is not None:
        reporter.warning(f"this machine ({machine}) is not the one that timed the study's latencies "
                         f"({study.user_attrs['latency_machine']}): the latencies it times are stored with "
                         f"latency_machine on their trials and compare with the others' only roughly")
    objective = Objective(spec, splits, pruner, seed, reporter, on_start=lambda trial: lock.release(),
                          artifact_store=study_artifact_store(study, storage_url, artifacts, record=True),
                          repeats=repeats or spec.study.repeats, latency_machine=machine)

    plots = PlotRefresher()

    def trial_finished(study: optuna.Study, trial: FrozenTrial) -> None:
        reporter.trial_finished(trial)
        plots.after_trial(study)
    before = finished_count(study)
    reporter.study_opened(before, target)
    started = time.perf_counter()
    interrupted = False
    try:
        while timeout is None or time.perf_counter() - started < timeout:
            lock.acquire()
            try:
                recover_trials(study)
                finished, running = slot_counts(study)
                if finished >= target:
                    break
                if finished + running >= target:  # enough trials under way; one may still fail
                    if leave_when_all_started:
                        break
                    lock.release()
                    time.sleep(POLL_SECONDS)
                    continue
                study.optimize(objective, n_trials=1, callbacks=[trial_finished], catch=())
            finally:
                lock.release()
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                break
    except KeyboardInterrupt:
        interrupted = True
        objective.fail_current(study, "interrupted")
    # The plots are drawn a last time by the worker whose trial ended last, when every trial is
    # in; the others would only draw the same plots again, after the last trial (about a second
    # each with --jobs 2). A worker that ran no trial draws them: it may be the only one. One that
    # leaves while others' trials run does not: one of those ends last.
    others_running = leave_when_all_started and not interrupted and slot_counts(study)[1] > 0
    # ended_last reads every trial from the storage: asked only when its answer decides.
    if interrupted or (not others_running and (objective.current is None or ended_last(study, objective.current))):
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
