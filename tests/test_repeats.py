"""``study.enqueue`` and ``study.repeats`` in a real study: bundled MNIST digits, a real SQLite file."""

import statistics

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY_SPEC, merge
from mixsearch.seeds import SEED_STRIDE, repeat_seeds
from mixsearch.spec import parse_spec
from mixsearch.study import run_study

ENQUEUED = [
    {"label": "small", "space": {"layers": 1, "channels": 8, "patch_size": 7, "dilation": 1,
                                 "sharing": {"mode": "none", "bias": "tied"}}},
    {"label": "shared", "space": {"layers": 2, "channels": 8, "patch_size": 7, "dilation": 1,
                                  "sharing": {"mode": "all", "bias": "tied"}}},
]


def spec_with(train=None, **study):
    data = merge(TINY_SPEC, {"study": study, "data": {"train_size": 200, "val_size": 100, "test_size": 100},
                             "train": train or {"epochs": 1}})
    return parse_spec(data, "tiny.yaml")


def test_enqueued_archs_run_first_and_resuming_does_not_queue_them_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'enqueue.db'}"
    spec = spec_with(enqueue=ENQUEUED, trials=3)
    run_study(spec, storage_url=url, trials=2)
    study = optuna.load_study(study_name="tiny", storage=url)
    first = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.user_attrs.get("label") for t in first] == ["small", "shared"]
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2
    assert first[0].user_attrs["arch"]["layers"] == 1 and first[1].user_attrs["arch"]["layers"] == 2
    assert first[0].params == spec.enqueued_params()[0]
    assert first[1].params == spec.enqueued_params()[1]

    summary = run_study(spec, storage_url=url, trials=3)
    assert summary.added == 1
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert len(trials) == 3  # no WAITING copies of the entries were queued on resume
    assert "label" not in trials[2].user_attrs
    assert sum(t.user_attrs.get("label") == "small" for t in trials) == 1


def test_repeats_train_each_arch_with_several_seeds_and_store_mean_and_spread(tmp_path):
    url = f"sqlite:///{tmp_path / 'repeats.db'}"
    spec = spec_with(enqueue=ENQUEUED[:1], trials=1, repeats=3, seed=5)
    run_study(spec, storage_url=url)
    trial = optuna.load_study(study_name="tiny", storage=url).trials[0]
    attrs = trial.user_attrs
    assert attrs["seeds"] == [5, 5 + SEED_STRIDE, 5 + 2 * SEED_STRIDE] == repeat_seeds(5, 3)
    for metric in ("train_accuracy", "val_accuracy", "test_accuracy", "train_seconds"):
        values = attrs[f"{metric}_seeds"]
        assert len(values) == 3
        assert attrs[metric] == pytest.approx(statistics.fmean(values))
        assert attrs[f"{metric}_std"] == pytest.approx(statistics.stdev(values), abs=1e-6)
    assert all(0.0 <= v <= 1.0 for v in attrs["train_accuracy_seeds"])
    assert trial.values[0] == pytest.approx(statistics.fmean(attrs["val_accuracy_seeds"]))
    # The curve (what the pruner saw) is the first seed's; its last epoch is that seed's value.
    assert attrs["curve"][-1]["val_accuracy"] == pytest.approx(attrs["val_accuracy_seeds"][0], abs=1e-5)
    # Different seeds: different initialisations and batch orders, so the values are not all equal.
    assert len(set(attrs["test_accuracy_seeds"] + attrs["val_accuracy_seeds"])) > 2


def test_one_seed_stores_plain_values_and_train_accuracy(tmp_path):
    url = f"sqlite:///{tmp_path / 'one.db'}"
    run_study(spec_with(enqueue=ENQUEUED[:1], trials=1, train={"epochs": 3, "batch_size": 20}), storage_url=url,
              repeats=1)
    attrs = optuna.load_study(study_name="tiny", storage=url).trials[0].user_attrs
    assert "seeds" not in attrs and "val_accuracy_seeds" not in attrs and "test_accuracy_std" not in attrs
    assert 0.15 < attrs["train_accuracy"] <= 1.0  # real digits: above chance (0.1) after 3 epochs
    assert attrs["val_accuracy"] == pytest.approx(attrs["curve"][-1]["val_accuracy"], abs=1e-5)


def test_repeats_option_overrides_the_spec(tmp_path):
    url = f"sqlite:///{tmp_path / 'override.db'}"
    run_study(spec_with(enqueue=ENQUEUED[:1], trials=1, repeats=3), storage_url=url, repeats=2)
    attrs = optuna.load_study(study_name="tiny", storage=url).trials[0].user_attrs
    assert attrs["seeds"] == repeat_seeds(0, 2) and len(attrs["test_accuracy_seeds"]) == 2


def test_repeats_must_be_a_positive_integer():
    from mixsearch.errors import SpecError

    with pytest.raises(SpecError, match=r"tiny.yaml: study.repeats: must be an integer >= 1, got 0"):
        spec_with(repeats=0)

