"""Steps of one trial, each run alone on a real SQLite study."""

from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import TINY_SPEC, merge
from mixsearch.measure import StaticMetrics
from mixsearch.measure.memory import MemoryProfile
from mixsearch.optuna_compat import set_user_attrs, storage_of, unwrap_storage
from mixsearch.pruning import ParetoPruner
from mixsearch.spec import parse_spec
from mixsearch.train import EpochResult, TrainRecipe, TrainResult
from mixsearch.trial import Reporter, check_constraints, find_duplicate, train_with_pruning


def sqlite_study(tmp_path, directions=("maximize", "minimize")):
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="steps",
                               directions=list(directions))


def finished_trial(study, key, state=TrialState.COMPLETE, **attrs):
    trial = study.ask()
    trial.set_user_attr("arch_hash", key)
    for name, value in attrs.items():
        trial.set_user_attr(name, value)
    study.tell(trial, [0.9, 100.0] if state == TrialState.COMPLETE else None, state=state)
    return trial.number


def test_duplicate_step_finds_the_finished_trial_with_the_same_arch_hash(tmp_path):
    study = sqlite_study(tmp_path)
    pruned = finished_trial(study, "abc-1", state=TrialState.PRUNED)
    complete = finished_trial(study, "abc-1")
    finished_trial(study, "abc-1", duplicate_of=complete)  # a repeat is never an original
    finished_trial(study, "xyz-2")
    running = study.ask()
    running.set_user_attr("arch_hash", "run-3")

    reopened = optuna.load_study(study_name="steps", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert find_duplicate(reopened, "abc-1").number == complete  # a complete original before a pruned one
    assert find_duplicate(reopened, "xyz-2").number == 3
    assert find_duplicate(reopened, "run-3") is None  # a running trial has no result to reuse
    assert find_duplicate(reopened, "new-4") is None
    assert pruned == 0


def test_the_attrs_of_one_step_reach_a_database_in_one_commit_and_a_journal_one_by_one(tmp_path):
    from optuna.storages.journal import JournalFileBackend
    from sqlalchemy import event

    attrs = {"arch": {"layers": 2, "channels": [16, 32]}, "arch_summary": "mixer L2", "epochs_run": 0, "ms": 0.25}
    study = sqlite_study(tmp_path)
    commits = []
    event.listen(unwrap_storage(storage_of(study)).engine, "commit", lambda connection: commits.append(1))
    trial = study.ask()
    commits.clear()
    set_user_attrs(trial, attrs)
    assert len(commits) == 1  # where Trial.set_user_attr commits once per attr:
    trial.set_user_attr("one", 1)
    trial.set_user_attr("two", 2)
    assert len(commits) == 3
    assert trial.user_attrs == {**attrs, "one": 1, "two": 2}  # the trial's own copy, as set_user_attr keeps it
    reopened = optuna.load_study(study_name="steps", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert reopened.trials[0].user_attrs == {**attrs, "one": 1, "two": 2}
    study.tell(trial, [0.5, 10.0])
    with pytest.raises(RuntimeError, match="finished"):  # as set_user_attr refuses, and nothing is written
        set_user_attrs(trial, {"epochs_run": 3, "late": True})
    assert reopened.trials[0].user_attrs == {**attrs, "one": 1, "two": 2}

    journal = optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))),
                                  study_name="steps", directions=["maximize", "minimize"])
    trial = journal.ask()
    set_user_attrs(trial, attrs)
    again = optuna.load_study(study_name="steps", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(tmp_path / "j.log"))))
    assert again.trials[0].user_attrs == attrs == trial.user_attrs


# The figures of a linear classifier of 28x28 images: 7,850 params.
LINEAR = StaticMetrics(params=7850, flops=15680, inference_params=7850, inference_flops=15680,
                       memory=MemoryProfile(31400, 3176, 3176, "linear", ("linear",)))


def test_constraints_step_marks_an_arch_infeasible_with_its_reason(tmp_path):
    static = LINEAR
    study = sqlite_study(tmp_path)

    tight = study.ask()
    assert check_constraints(tight, {"params": 5000.0}, static) == ["params 7850 > 5000"]
    assert tight.user_attrs["infeasible_reason"] == "params 7850 > 5000"
    assert tight.user_attrs["epochs_run"] == 0
    study.tell(tight, [0.0, 7850.0])

    loose = study.ask()
    assert check_constraints(loose, {"params": 10000.0}, static) == []
    assert "infeasible_reason" not in loose.user_attrs
    study.tell(loose, [0.5, 7850.0])

    first, second = study.get_trials()
    assert first.constraints == {"params": (7850 - 5000) / 5000}  # relative violation, > 0: infeasible
    assert second.constraints == {"params": (7850 - 10000) / 10000}


def finish_rivals(study, accuracies):
    """Two of another worker's trials, with 2,000 and 3,000 params: smaller than the running one."""
    for params in (2_000, 3_000):
        theirs = study.ask()
        theirs.set_user_attr("curve", [{"epoch": e, "val_accuracy": a} for e, a in enumerate(accuracies, 1)])
        theirs.set_user_attr("params", params)
        study.tell(theirs, [accuracies[-1], params])


def train_pruned_by_rivals(study, accuracies, seconds, after_epoch):
    """Train the study's first trial on scripted epochs (``accuracies``, ``seconds`` each) under the
    pareto pruner, calling ``after_epoch(epoch)`` once each epoch is judged; it must end pruned."""
    spec = parse_spec(merge(TINY_SPEC, {"train": {"epochs": len(accuracies)}}), "tiny.yaml")
    ours = study.ask()

    def trainer(model, splits, recipe, seed, on_epoch):
        result = TrainResult()
        for epoch, accuracy in enumerate(accuracies, 1):
            result.curve.append(EpochResult(epoch, 1.0, accuracy, seconds))
            stop = on_epoch(result.curve[-1])
            after_epoch(epoch)
            if stop:
                result.stopped_early = True
                break
        return result

    pruner = ParetoPruner(warmup_epochs=1, margin=0.01, min_finished=2)
    with pytest.raises(optuna.TrialPruned, match="dominated by trial"):
        train_with_pruning(ours, torch.nn.Linear(1, 1), spec, SimpleNamespace(train_x=torch.zeros(1)),
                           TrainRecipe(epochs=len(accuracies)), LINEAR, pruner, 0, Reporter(), trainer)
    return ours


def test_the_pruner_sees_the_trials_other_workers_finish_while_this_one_trains(tmp_path):
    """With several workers, trials finish while one trains; each epoch's decision counts them."""
    study = sqlite_study(tmp_path)

    def after_epoch(epoch):  # after this trial's first pruning decision, with nothing finished before
        if epoch == 1:
            finish_rivals(study, [0.80, 0.85, 0.88, 0.90])

    # epochs of a second: the finished trials are read afresh at each (STORAGE_EVERY_SECONDS)
    ours = train_pruned_by_rivals(study, [0.30, 0.31, 0.32, 0.33], 1.0, after_epoch)
    assert ours.user_attrs["epochs_run"] == 2 and ours.user_attrs["pruned_epoch"] == 2


def test_short_epochs_store_their_curve_and_read_the_finished_trials_once_a_second_of_training(tmp_path):
    """Epochs of 0.25 s: the running curve is written and the finished trials read at the first
    epoch and then at every fourth; the pruner decides at every epoch with what was last read."""
    study = sqlite_study(tmp_path)
    stored_curves = []

    def after_epoch(epoch):
        stored_curves.append(len(study.trials[0].user_attrs.get("curve", [])))
        if epoch == 1:  # finished while ours trains: the pruner learns of them at its next read
            finish_rivals(study, [0.9] * 8)

    ours = train_pruned_by_rivals(study, [0.3] * 8, 0.25, after_epoch)
    # epoch 1 stores its curve; epochs 2-4 add 0.75 s and store nothing; epoch 5 stores, reads
    # the two finished trials and is pruned; the pruned trial's whole curve is stored with it
    assert stored_curves == [1, 1, 1, 1, 5]
    assert ours.user_attrs["pruned_epoch"] == 5 and len(study.trials[0].user_attrs["curve"]) == 5
