"""Every access to Optuna internals, in one place: the first file to read when Optuna changes.

Each function says why no public API serves. Everything else in the package uses Optuna's
public API only (``grep -rn "\\._storage\\|_trial_id\\|optuna\\._" mixsearch`` hits only this file).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study was opened on.

    ``Study`` has no public accessor for its storage; the trial-slot lock needs the storage's
    engine, and ``optuna.artifacts.get_all_artifact_meta`` wants the storage as an argument.
    """
    return study._storage


def unwrap_storage(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage itself, without the cache Optuna puts around an ``RDBStorage``.

    A study opened on an ``RDBStorage`` holds it inside the private ``_CachedStorage``, which
    has no public way back to the database engine that the trial-slot lock takes its lock on.
    """
    backend = getattr(storage, "_backend", None)
    return backend if type(storage).__name__ == "_CachedStorage" and backend is not None else storage


def fail_running_trial(study: optuna.Study, trial: FrozenTrial | optuna.Trial, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with user attribute ``reason``; False when it is no longer running.

    Used for this process's trial after an interrupt and for the trials of dead workers. The
    public ``study.tell(number, state=FAIL)`` also runs the sampler's ``after_trial`` hook, which
    for a trial of another process is wrong (``GridSampler`` calls ``study.stop()``, which raises
    outside ``optimize``), and ``FrozenTrial`` offers no way to set a user attribute. So this
    writes the storage directly, the way Optuna's own ``fail_stale_trials`` does; the storage
    calls need the trial's internal id, which only ``_trial_id`` gives.
    """
    storage, trial_id = study._storage, trial._trial_id
    try:
        if storage.get_trial(trial_id).state != TrialState.RUNNING:
            return False
        storage.set_trial_user_attr(trial_id, "reason", reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except Exception:  # finished meanwhile, or failed by another worker
        return False
    return True


def compute_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of minimization points dominated up to ``reference``.

    Optuna exports no public hypervolume function (its plots compute it internally); this one is
    exact and fast, where a hand-written one would be neither for more than two objectives.
    """
    from optuna._hypervolume import compute_hypervolume as compute

    return float(compute(points, reference))


def study_id(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """The storage's internal id of a study: optuna-dashboard's page URLs are built from it.

    The call is public storage API; it lives here because the id itself is a storage internal
    (``Study`` keeps it as ``_study_id``) that only the dashboard's URL scheme needs.
    """
    return storage.get_study_id_from_name(study_name)


def enqueued_params(trial: FrozenTrial) -> dict[str, Any]:
    """The params a trial was enqueued with, even when it died before sampling any of them.

    ``trial.params`` holds only what was suggested; the enqueued values wait in the system
    attribute ``fixed_params`` (how ``study.enqueue_trial`` hands them to the trial), which no
    public API exposes.
    """
    return dict(trial.system_attrs.get("fixed_params") or {})


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a running trial: in one transaction on a database storage.

    ``Trial.set_user_attr`` commits each attribute on its own, and on SQLite a commit waits for
    the file to reach the disk (2-4 ms): a trial stored 34 attributes, and those waits were about
    a fifth of its time outside training. ``RDBStorage`` has no public call for several, so its
    own step for one attribute runs here once per attribute inside one session; the trial's
    cached copy is updated as ``set_user_attr`` does. Any other storage, or an Optuna whose
    internals moved, gets one ``set_user_attr`` per attribute (the journal's log entries hold one
    attribute each in any case).
    """
    storage = unwrap_storage(trial.storage)
    write_one = getattr(storage, "_set_trial_attr_without_commit", None)
    if isinstance(storage, optuna.storages.RDBStorage) and write_one is not None and len(attrs) > 1:
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session
        except ImportError:
            pass
        else:
            with _create_scoped_session(storage.scoped_session, True) as session:
                for key, value in attrs.items():
                    write_one(session, models.TrialUserAttributeModel, trial._trial_id, key, value)
            trial._cached_frozen_trial.user_attrs.update(attrs)
            return
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
