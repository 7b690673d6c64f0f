"""A tiny real search on bundled MNIST images into a real SQLite file."""

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY_SPEC, merge
from mixsearch.cli import main
from mixsearch.models import build_model, count_params
from mixsearch.arch import arch_from_dict
from mixsearch.spec import parse_spec
from mixsearch.study import pareto_trials, run_study

# conftest's tiny spec at another seed and data size, with latency as a third objective.
TINY = merge(TINY_SPEC, {"study": {"seed": 3}, "data": {"train_size": 400, "val_size": 200, "test_size": 200},
                         "train": {"batch_size": 32}, "objectives": ["accuracy", "params", "latency"]})


def tiny_spec(**study):
    data = {**TINY, "study": {**TINY["study"], **study}}
    return parse_spec(data, "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('study') / 'tiny.db'}"
    summary = run_study(tiny_spec(), storage_url=url)
    return url, summary


def test_run_stores_a_complete_multi_objective_study(tiny_run):
    url, summary = tiny_run
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.metric_names == ["accuracy", "params", "latency"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4 and summary.added == 4
    for trial in trials:
        attrs = trial.user_attrs
        if "duplicate_of" in attrs:
            continue
        arch = arch_from_dict(attrs["arch"])
        assert trial.values[1] == attrs["params"] == count_params(build_model(arch))
        assert trial.values[2] == pytest.approx(attrs["latency_ms"]) and attrs["latency_iqr_ms"] >= 0
        assert attrs["flops"] > 0 and attrs["epochs_run"] == 2 and attrs["train_seconds"] > 0
        assert [e["epoch"] for e in attrs["curve"]] == [1, 2]
        assert trial.values[0] == attrs["curve"][-1]["val_accuracy"]
        assert 0.0 <= attrs["test_accuracy"] <= 1.0
        # Real digits: even 2 epochs on 400 images beat chance clearly.
        assert trial.values[0] > 0.2


def test_pareto_trials_are_mutually_non_dominated(tiny_run):
    url, _ = tiny_run
    study = optuna.load_study(study_name="tiny", storage=url)
    front = pareto_trials(study)
    assert front
    signs = [-1, 1, 1]  # accuracy maximized
    for a in front:
        for b in front:
            if a is b:
                continue
            dominates = all(s * x <= s * y for s, x, y in zip(signs, b.values, a.values)) and b.values != a.values
            assert not dominates


def test_resume_adds_only_the_missing_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    run_study(tiny_spec(), storage_url=url, trials=2)
    summary = run_study(tiny_spec(), storage_url=url, trials=3)
    assert summary.added == 1 and summary.finished == 3
    again = run_study(tiny_spec(), storage_url=url, trials=3)
    assert again.added == 0
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 3


def test_a_resumed_study_draws_new_params_instead_of_its_first_trials_again(tmp_path):
    data = merge(TINY_SPEC, {"study": {"sampler": "random"}})
    url = f"sqlite:///{tmp_path / 'draws.db'}"
    for trials in (1, 2, 3):
        run_study(parse_spec(data, "draws.yaml"), storage_url=url, trials=trials)
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    assert not any("duplicate_of" in t.user_attrs for t in trials)


def test_same_seed_same_trials(tmp_path, tiny_run):
    url, _ = tiny_run
    other = f"sqlite:///{tmp_path / 'again.db'}"
    run_study(tiny_spec(), storage_url=other)
    first = optuna.load_study(study_name="tiny", storage=url).trials
    second = optuna.load_study(study_name="tiny", storage=other).trials
    assert [t.params for t in first] == [t.params for t in second]
    # Latency is measured, so only it may differ between the two runs.
    assert [t.values[:2] for t in first] == [t.values[:2] for t in second]
    assert [t.user_attrs.get("test_accuracy") for t in first] == [t.user_attrs.get("test_accuracy") for t in second]


def test_cli_run_then_show(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    spec = {**TINY, "study": {**TINY["study"], "trials": 2}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", "tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front of tiny" in out and "2 finished of 2 wanted" in out
    assert (tmp_path / "studies" / "tiny.db").is_file()
    assert main(["show", "studies/tiny.db"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front of tiny" in out and "2 complete" in out
    assert main(["validate", "tiny.yaml"]) == 0
    # 1 layer: 2 channels x 2 patches x 2 dilations = 8 (nothing to share);
    # 2 layers: 8 x 3 plans (none | all with tied or separate bias) for each of 4 sites = 648.
    assert "space size: 656 configurations" in capsys.readouterr().out


@pytest.mark.parametrize("changes, timed", [
    ({}, False),  # auto: latency neither searched nor bounded
    ({"measure": {"latency": "always"}}, True),
    ({"constraints": {"latency": 100.0}}, True),  # a bound needs the figure
], ids=["auto", "always", "constraint"])
def test_latency_is_timed_only_where_the_spec_searches_bounds_or_asks_for_it(tmp_path, changes, timed):
    url = f"sqlite:///{tmp_path / 'timed.db'}"
    run_study(parse_spec(merge(TINY_SPEC, {"study": {"trials": 2}, **changes}), "timed.yaml"), storage_url=url)
    study = optuna.load_study(study_name="tiny", storage=url)
    assert ("latency_reference_ms" in study.user_attrs) == timed
    assert ("latency_runtime" in study.user_attrs) == timed
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and all(t.user_attrs["params"] > 0 for t in trials)
    for trial in trials:
        latency = trial.user_attrs["latency_ms"]
        assert (latency is not None and latency > 0) if timed else latency is None


def test_a_study_resumed_by_a_spec_that_times_latency_gets_its_reference_then(tmp_path):
    url = f"sqlite:///{tmp_path / 'later.db'}"
    run_study(parse_spec(merge(TINY_SPEC, {"study": {"trials": 1}}), "later.yaml"), storage_url=url)
    assert "latency_reference_ms" not in optuna.load_study(study_name="tiny", storage=url).user_attrs
    always = merge(TINY_SPEC, {"study": {"trials": 2}, "measure": {"latency": "always"}})
    run_study(parse_spec(always, "later.yaml"), storage_url=url)
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.user_attrs["latency_reference_ms"] > 0
    first, second = study.get_trials(states=(TrialState.COMPLETE,))
    assert first.user_attrs["latency_ms"] is None and second.user_attrs["latency_ms"] > 0
