"""Crash and resume: a real ``mixsearch run`` killed mid-trial (SIGKILL) or interrupted (SIGINT)."""

from __future__ import annotations

import signal

import optuna
import pytest
from optuna.trial import TrialState

from conftest import interrupt_when, run_cli, start_cli

# Several seconds per trial (60 short epochs): a signal sent once an epoch is seen surely lands
# in the same trial.
LONG = {"train": {"epochs": 60}}


def running_trial_with_an_epoch(url: str, name: str = "tiny"):
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except Exception:  # not created yet
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if len(trial.user_attrs.get("curve", [])) >= 1:
            return trial
    return None


def finished(study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_sigkill_mid_trial_then_resume_keeps_every_trial(tmp_path, write_spec):
    spec = write_spec(**LONG)
    url = f"sqlite:///{tmp_path / 'studies' / 'tiny.db'}"
    process = start_cli(["run", spec, "--trials", "3"], tmp_path)

    def second_trial_running():  # one trial finished first, so that there is finished work to lose
        trial = running_trial_with_an_epoch(url)
        return trial if trial is not None and trial.number >= 1 else None

    victim, _, _ = interrupt_when(process, second_trial_running, "a RUNNING trial with an epoch after a finished one",
                                  signals=(signal.SIGKILL,))
    assert process.returncode == -signal.SIGKILL
    study = optuna.load_study(study_name="tiny", storage=url)
    before = {t.number: t.values for t in finished(study)}
    assert before and study.trials[victim.number].state == TrialState.RUNNING  # nothing cleaned up

    # The same command again, with a short heartbeat so a stale trial would also be found that way.
    result = run_cli(["run", spec, "--trials", "3"], tmp_path, timeout=80,
                     MIXSEARCH_HEARTBEAT_INTERVAL="1", MIXSEARCH_HEARTBEAT_GRACE="2")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["reason"] == "worker died"
    # Every trial that had finished is still there, unchanged.
    assert {t.number: t.values for t in finished(study) if t.number in before} == before
    assert len(finished(study)) == 3
    # The killed trial's params are the first thing the resumed run tried.
    retry = min((t for t in study.trials if t.number > victim.number or t.user_attrs.get("retry_of") is not None),
                key=lambda t: t.datetime_start)
    assert retry.user_attrs["retry_of"] == victim.number
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    assert "resuming: " in result.stdout


# The test plays a worker elsewhere by hand: a heartbeat storage outside Study.optimize.
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_stale_heartbeat_fails_a_trial_of_another_machine(tmp_path, write_spec):
    """A RUNNING trial of a worker elsewhere (no process id to check) is failed by its heartbeat."""
    spec = write_spec(train={"epochs": 1})
    url = f"sqlite:///{tmp_path / 'studies' / 'tiny.db'}"
    assert run_cli(["run", spec, "--trials", "1"], tmp_path).returncode == 0
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.load_study(study_name="tiny", storage=storage)
    ghost = study.ask()
    ghost.suggest_categorical("layers", [1, 2])
    ghost.set_user_attr("worker", "elsewhere:1")
    storage.record_heartbeat(ghost._trial_id)
    result = run_cli(["run", spec, "--trials", "3"], tmp_path, timeout=80,
                     MIXSEARCH_HEARTBEAT_INTERVAL="1", MIXSEARCH_HEARTBEAT_GRACE="2")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.trials[ghost.number].state == TrialState.FAIL
    assert len(finished(study)) == 3
    assert any(t.user_attrs.get("retry_of") == ghost.number for t in study.trials)


def test_ctrl_c_fails_the_running_trial_prints_the_summary_and_exits_130(tmp_path, write_spec):
    spec = write_spec(**LONG)
    url = f"sqlite:///{tmp_path / 'studies' / 'tiny.db'}"
    process = start_cli(["run", spec, "--trials", "3"], tmp_path)
    victim, stdout, stderr = interrupt_when(process, lambda: running_trial_with_an_epoch(url),
                                            "a RUNNING trial with an epoch")
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    assert "trials added" in stdout and "Pareto front of tiny" in stdout
    study = optuna.load_study(study_name="tiny", storage=url)
    trial = study.trials[victim.number]
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "interrupted"
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_second_ctrl_c_quits_at_once(tmp_path, write_spec):
    spec = write_spec(**LONG)
    url = f"sqlite:///{tmp_path / 'studies' / 'tiny.db'}"
    process = start_cli(["run", spec, "--trials", "3"], tmp_path)
    interrupt_when(process, lambda: running_trial_with_an_epoch(url), "a RUNNING trial with an epoch",
                   signals=(signal.SIGINT, signal.SIGINT))
    assert process.returncode == 130


def test_an_interrupted_trial_is_retried_first(tmp_path, write_spec):
    spec = write_spec(**LONG)
    url = f"sqlite:///{tmp_path / 'studies' / 'tiny.db'}"
    process = start_cli(["run", spec, "--trials", "2"], tmp_path)
    victim, _, _ = interrupt_when(process, lambda: running_trial_with_an_epoch(url), "a RUNNING trial with an epoch")
    result = run_cli(["run", spec, "--trials", "2"], tmp_path, timeout=80)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.trials[victim.number].user_attrs["reason"] == "interrupted"
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == study.trials[victim.number].params
    assert retries[0].state == TrialState.COMPLETE
    assert len(finished(study)) == 2


@pytest.mark.parametrize("queued_retry", [False, True], ids=["new-trial", "queued-retry"])
def test_a_trial_whose_worker_died_before_claiming_it_is_failed_and_the_study_ends(tmp_path, write_spec,
                                                                                   queued_retry):
    """SIGKILL between a trial's creation and the worker's first write leaves a RUNNING trial that
    names no worker and has no heartbeat; the study must not wait for it forever (found by
    bench/chaos.py on PostgreSQL). A queued retry that died so keeps its params for the next retry."""
    spec = write_spec(train={"epochs": 1})
    url = f"journal:{tmp_path / 'studies' / 'tiny.log'}"
    assert run_cli(["run", spec, "--trials", "1", "--storage", url], tmp_path).returncode == 0
    from mixsearch.storage import open_storage

    study = optuna.load_study(study_name="tiny", storage=open_storage(url, create=False))
    params = study.trials[0].params
    if queued_retry:
        study.enqueue_trial(params, user_attrs={"retry_of": 0, "retries": 1})
    orphan = study.ask()  # RUNNING, no params sampled, no worker named: its worker is gone
    result = run_cli(["run", spec, "--trials", "2", "--storage", url], tmp_path, timeout=90,
                     MIXSEARCH_HEARTBEAT_GRACE="1")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="tiny", storage=open_storage(url, create=False))
    assert study.trials[orphan.number].state == TrialState.FAIL
    assert study.trials[orphan.number].user_attrs["reason"] == "worker died"
    assert len(finished(study)) == 2
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retry) == (1 if queued_retry else 0)  # nothing was sampled, so nothing to retry
    if queued_retry:
        assert retry[0].params == params and retry[0].state == TrialState.COMPLETE
