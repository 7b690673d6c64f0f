"""Pruners on synthetic learning curves, and pruning, constraints, duplicates and divergence in real studies."""

import optuna
from optuna.trial import TrialState

from mixsearch.pruning import (MedianPruner, MOASHAPruner, ParetoPruner, TrialView, dominates,
                               nondominated_ranks)
from mixsearch.spec import parse_spec
from mixsearch.study import run_study

EPOCHS = 5


def finished(number, curve, params):
    return TrialView(number, curve, {"params": params}, finished=True)


# Two finished trials: a big accurate one and a small weaker one. Largest gain from epoch 1: 0.2.
FINISHED = [finished(0, [0.7, 0.8, 0.85, 0.88, 0.9], 10_000), finished(1, [0.5, 0.6, 0.65, 0.68, 0.7], 2_000)]


def test_dominates_and_ranks():
    assert dominates((1, 1), (1, 2)) and not dominates((1, 2), (1, 2)) and not dominates((0, 3), (1, 2))
    assert nondominated_ranks([(0, 0), (1, 1), (0, 2), (2, 2)]) == [0, 1, 1, 2]


class TestPareto:
    pruner = ParetoPruner(warmup_epochs=1, margin=0.01, min_finished=2)

    def test_prunes_a_large_hopeless_trial(self):
        trial = TrialView(9, [0.3], {"params": 20_000})  # 0.3 + 0.2 + 0.01 < 0.9 at twice the params
        reason = self.pruner.prune_reason(trial, FINISHED, EPOCHS)
        assert reason and "dominated by trial 0" in reason and "0.5100" in reason

    def test_keeps_a_trial_that_could_still_win(self):
        trial = TrialView(9, [0.75], {"params": 20_000})  # projected 0.96 > 0.9
        assert self.pruner.prune_reason(trial, FINISHED, EPOCHS) is None

    def test_never_prunes_a_trial_smaller_than_every_finished_one(self):
        trial = TrialView(9, [0.0, 0.0, 0.0], {"params": 1_000})
        assert self.pruner.prune_reason(trial, FINISHED, EPOCHS) is None

    def test_warmup_and_minimum_of_finished_trials(self):
        hopeless = TrialView(9, [0.1], {"params": 50_000})
        assert ParetoPruner(warmup_epochs=2).prune_reason(hopeless, FINISHED, EPOCHS) is None
        assert ParetoPruner(min_finished=3).prune_reason(hopeless, FINISHED, EPOCHS) is None
        pruned_only = [TrialView(t.number, t.curve[:2], t.static, finished=False) for t in FINISHED]
        assert self.pruner.prune_reason(hopeless, pruned_only, EPOCHS) is None

    def test_projection_uses_gain_from_the_same_epoch(self):
        # From epoch 4 the largest remaining gain is 0.02: 0.80 + 0.02 + 0.01 < 0.9 -> pruned.
        late = TrialView(9, [0.6, 0.7, 0.75, 0.80], {"params": 12_000})
        assert self.pruner.prune_reason(late, FINISHED, EPOCHS)
        # The same accuracy at epoch 1 could still gain 0.2 -> kept.
        early = TrialView(9, [0.80], {"params": 12_000})
        assert self.pruner.prune_reason(early, FINISHED, EPOCHS) is None


    def test_gain_quantile_ignores_one_late_climber(self):
        others = [finished(0, [0.85, 0.9], 5_000), finished(1, [0.8, 0.9], 9_000),
                  finished(2, [0.1, 0.7], 9_000)]  # started near chance: a gain of 0.6
        trial = TrialView(9, [0.6], {"params": 8_000})
        largest = ParetoPruner(min_finished=2, gain_quantile=1.0)
        assert largest.prune_reason(trial, others, 2) is None  # 0.6 + 0.6 reaches 1.0
        reason = ParetoPruner(min_finished=2).prune_reason(trial, others, 2)  # the median gain by default
        assert reason and "dominated by trial 0" in reason and "0.7100" in reason  # 0.6 + 0.1 + 0.01


class TestMedian:
    others = [finished(i, [a], 1) for i, a in enumerate([0.5, 0.6, 0.7])]

    def test_prunes_below_median_only(self):
        pruner = MedianPruner(warmup_epochs=1, min_trials=3)
        assert "below the median 0.6000" in pruner.prune_reason(TrialView(9, [0.55], {}), self.others, EPOCHS)
        assert pruner.prune_reason(TrialView(9, [0.65], {}), self.others, EPOCHS) is None

    def test_warmup_and_min_trials(self):
        assert MedianPruner(warmup_epochs=2).prune_reason(TrialView(9, [0.1], {}), self.others, EPOCHS) is None
        assert MedianPruner(min_trials=4).prune_reason(TrialView(9, [0.1], {}), self.others, EPOCHS) is None


class TestMOASHA:
    def test_rungs(self):
        pruner = MOASHAPruner(min_epochs=1, reduction_factor=3)
        assert [e for e in range(1, 30) if pruner.is_rung(e)] == [1, 3, 9, 27]

    def test_keeps_the_top_third_by_front_then_accuracy(self):
        pruner = MOASHAPruner(min_epochs=1, reduction_factor=3)
        # Peers at epoch 1: all with 5,000 params, accuracies 0.2..0.7.
        peers = [TrialView(i, [a], {"params": 5_000}) for i, a in enumerate([0.2, 0.3, 0.4, 0.5, 0.7])]
        best = TrialView(9, [0.8], {"params": 5_000})
        worst = TrialView(9, [0.1], {"params": 5_000})
        small = TrialView(9, [0.1], {"params": 100})  # weak but non-dominated: front 0
        assert pruner.prune_reason(best, peers, EPOCHS) is None
        assert "not in the top 2 of 6" in pruner.prune_reason(worst, peers, EPOCHS)
        assert pruner.prune_reason(small, peers, EPOCHS) is None

    def test_no_decision_between_rungs_or_without_peers(self):
        pruner = MOASHAPruner(min_epochs=1, reduction_factor=3)
        assert pruner.prune_reason(TrialView(9, [0.1, 0.1], {"params": 1}), [], EPOCHS) is None
        assert pruner.prune_reason(TrialView(9, [0.1], {"params": 9e9}), [finished(0, [0.9], 1)], EPOCHS) is None


def spec(tmp_path, **overrides):
    data = {
        "study": {"name": "p", "trials": 8, "seed": 0, "sampler": "random", "pruner": "none"},
        "data": {"source": "bundled", "train_size": 400, "val_size": 200, "test_size": 100},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01},
        "objectives": ["accuracy", "params"],
        "measure": {"latency_min_time": 0.01},
        "space": {"family": "mixer", "layers": [1, 2], "channels": [4, 16], "token_hidden": 8, "channel_hidden": 8,
                  "patch_size": [4, 7]},
    }
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return parse_spec(data, "p.yaml"), f"sqlite:///{tmp_path / 'p.db'}"


def trials_of(url, name="p"):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_real_study_prunes_with_reasons(tmp_path):
    # An aggressive pareto pruner (no margin, no warm-up) on a space with clear losers.
    s, url = spec(tmp_path, study={"pruner": {"type": "pareto", "warmup_epochs": 1, "margin": 0.0, "min_finished": 1},
                                   "trials": 10})
    run_study(s, storage_url=url)
    trials = trials_of(url)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and "duplicate_of" not in t.user_attrs]
    assert pruned, [t.values for t in trials]
    for trial in pruned:
        assert trial.user_attrs["pruned_reason"].startswith("dominated by trial")
        assert 1 <= trial.user_attrs["pruned_epoch"] < 3
        assert len(trial.user_attrs["curve"]) == trial.user_attrs["pruned_epoch"]
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 10


def test_constraint_rejects_without_training(tmp_path, monkeypatch):
    from mixsearch import trial as study_module

    calls = []
    monkeypatch.setattr(study_module, "train", lambda *a, **k: calls.append(1))
    s, url = spec(tmp_path, constraints={"params": 1.0}, study={"trials": 3})
    summary = run_study(s, storage_url=url)
    assert calls == []  # the trainer was never called
    trials = trials_of(url)
    assert summary.added == 3
    for trial in trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.user_attrs["epochs_run"] == 0 and "curve" not in trial.user_attrs
        assert trial.user_attrs["infeasible_reason"].startswith("params ")
        assert trial.constraints["params"] > 0
        assert trial.values[1] == trial.user_attrs["params"]


def test_duplicates_reuse_results(tmp_path):
    # Two possible archs, six trials: most trials repeat an arch and must not train again.
    s, url = spec(tmp_path, study={"trials": 6}, space={"layers": 1, "channels": [4, 8], "patch_size": 7})
    run_study(s, storage_url=url)
    trials = trials_of(url)
    originals = {t.number: t for t in trials if "duplicate_of" not in t.user_attrs}
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(originals) <= 2 and len(duplicates) >= 4
    for dup in duplicates:
        original = originals[dup.user_attrs["duplicate_of"]]
        assert dup.values == original.values and dup.user_attrs["epochs_run"] == 0
        assert dup.user_attrs["arch_hash"] == original.user_attrs["arch_hash"]


def test_a_repeat_of_a_pruned_arch_is_pruned_without_training(tmp_path, monkeypatch):
    from mixsearch import trial as study_module

    # One arch, a learning rate so large that training diverges: the first trial is pruned.
    s, url = spec(tmp_path, study={"trials": 3}, space={"layers": 1, "channels": 4, "patch_size": 7},
                  train={"lr": 1.0e6, "optimizer": "sgd", "schedule": "constant", "epochs": 2})
    calls = []
    real_train = study_module.train
    monkeypatch.setattr(study_module, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    run_study(s, storage_url=url)
    first, *repeats = sorted(trials_of(url), key=lambda t: t.number)
    assert calls == [1]  # only the original trained
    assert first.state == TrialState.PRUNED and "duplicate_of" not in first.user_attrs
    for repeat in repeats:
        assert repeat.state == TrialState.PRUNED
        assert repeat.user_attrs["duplicate_of"] == 0 and repeat.user_attrs["epochs_run"] == 0
        assert repeat.user_attrs["pruned_epoch"] == 0
        assert repeat.user_attrs["pruned_reason"] == (
            "duplicate of trial 0, pruned at epoch 1: " + first.user_attrs["pruned_reason"])


def test_divergent_trial_is_pruned_and_the_study_goes_on(tmp_path):
    s, url = spec(tmp_path, study={"trials": 2}, train={"lr": 1.0e6, "optimizer": "sgd", "schedule": "constant",
                                                        "epochs": 2})
    summary = run_study(s, storage_url=url)
    trials = trials_of(url)
    assert summary.finished == 2 and len(trials) == 2
    for trial in trials:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["pruned_reason"].startswith("diverged: loss is not finite at epoch 1")


def test_bench_bound_counts_warmup_for_trials_dominated_by_earlier_ones():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "pruning.py"
    module_spec = importlib.util.spec_from_file_location("bench_pruning", path)
    bench = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench)

    study = optuna.create_study(directions=["maximize", "minimize"])
    for accuracy, params, attrs in [(0.8, 100, {}), (0.7, 200, {}),  # trial 1 is dominated by trial 0
                                    (0.9, 300, {}), (0.8, 100, {"duplicate_of": 0}), (0.85, 50, {})]:
        study.add_trial(optuna.trial.create_trial(values=[accuracy, params],
                                                  user_attrs={"epochs_run": 0 if attrs else 10, **attrs}))
    assert bench.bound_for_front_keeping(study, warmup_epochs=1) == 10 + 1 + 10 + 0 + 10
    assert bench.bound_for_front_keeping(study, warmup_epochs=3) == 10 + 3 + 10 + 0 + 10
