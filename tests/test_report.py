"""Ablation reports from a real SQLite study built by hand with known per-seed numbers."""

import math
import warnings

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats

from mixsearch.arch import MixerArch
from mixsearch.report import bias_mode, build_report, render_markdown, sharing_pattern


def mixer(sharing=None, bias=None, dilation=1):
    return MixerArch(in_channels=1, image_size=(28, 28), num_classes=10, layers=4, channels=16,
                     token_hidden=64, channel_hidden=64, patch_size=4, dilation=dilation,
                     sharing=sharing or {}, bias=bias or {}).validate().to_dict()


UNSHARED = mixer()
ALL_TIED = mixer({s: (0, 0, 0, 0) for s in ("token.fc1", "token.fc2", "channel.fc1", "channel.fc2")})
TOKEN_SEPARATE = mixer({"token.fc1": (0, 0, 0, 0), "token.fc2": (0, 0, 0, 0)},
                       {"token.fc1": "separate", "token.fc2": "separate"})


def add(study, arch, key, state=TrialState.COMPLETE, **attrs):
    attrs = {"arch": arch, "arch_hash": key, "recipe": {"lr": 0.003}, **attrs}
    values = [attrs.get("val_accuracy", 0.9), attrs.get("params", 1)] if state == TrialState.COMPLETE else None
    study.add_trial(create_trial(state=state, values=values, user_attrs=attrs,
                                 params={"x": key}, distributions={"x": CategoricalDistribution(["a", "b", "c", "d"])}))


@pytest.fixture
def study(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'r.db'}", study_name="ablation",
                                    directions=["maximize", "minimize"])
    # The unshared arch: one trial trained with three seeds.
    add(study, UNSHARED, "a", params=34782, seeds=[0, 1, 2], test_accuracy=0.96,
        test_accuracy_seeds=[0.95, 0.96, 0.97], val_accuracy=0.965, val_accuracy_seeds=[0.96, 0.965, 0.97],
        train_seconds=20.0, train_seconds_seeds=[19.0, 20.0, 21.0])
    # All four sites shared: three seeds, five points lower.
    add(study, ALL_TIED, "b", params=10000, seeds=[0, 1, 2], test_accuracy=0.91,
        test_accuracy_seeds=[0.90, 0.91, 0.92], val_accuracy=0.92, train_seconds=10.0)
    # Token MLPs shared, separate biases: three single-seed trials of one arch + recipe, which are
    # repeats of one arch; a reused copy, a pruned and an infeasible trial add nothing.
    for number, accuracy in enumerate([0.955, 0.965, 0.960]):
        add(study, TOKEN_SEPARATE, "c", params=20000, seed=number, test_accuracy=accuracy, val_accuracy=0.96)
    add(study, TOKEN_SEPARATE, "c", params=20000, test_accuracy=0.5, duplicate_of=2)
    add(study, TOKEN_SEPARATE, "c", state=TrialState.PRUNED, test_accuracy=0.1)
    add(study, TOKEN_SEPARATE, "d", params=20000, test_accuracy=0.0, infeasible_reason="params > 1")
    return optuna.load_study(study_name="ablation", storage=f"sqlite:///{tmp_path / 'r.db'}")


def test_named_fields_read_sharing_pattern_and_bias():
    assert (sharing_pattern(UNSHARED), bias_mode(UNSHARED)) == ("none", "-")
    assert (sharing_pattern(ALL_TIED), bias_mode(ALL_TIED)) == ("all", "tied")
    assert (sharing_pattern(TOKEN_SEPARATE), bias_mode(TOKEN_SEPARATE)) == ("token", "separate")
    fc2 = mixer({"token.fc2": (0, 0, 0, 0), "channel.fc2": (0, 0, 0, 0)})
    assert sharing_pattern(fc2) == "fc2"
    assert sharing_pattern(mixer({"channel.fc1": (0, 0, 0, 0)})) == "channel.fc1"
    assert sharing_pattern(mixer({"token.fc1": (0, 1, 1, 2)})) == "token.fc1 token.fc1=0112"


def test_groups_pool_seeds_and_compare_with_welch(study):
    report = build_report(study.get_trials(), by=["sharing", "bias"], baseline={"sharing": "none"})
    groups = {g.key: g for g in report.groups}
    assert list(groups) == [("none", "-"), ("all", "tied"), ("token", "separate")]

    base = groups[("none", "-")]
    assert base.is_baseline and base.comparison is None and base.seeds == 3
    assert base.summaries["test_accuracy"].mean == pytest.approx(0.96)
    assert base.summaries["test_accuracy"].std == pytest.approx(0.01)
    assert base.summaries["train_seconds"].mean == pytest.approx(20.0)
    assert base.summaries["params"].mean == 34782 and base.summaries["params"].std == 0

    # Welch: t = 0.05 / sqrt(0.01²/3 + 0.01²/3) = 6.124 with 4 degrees of freedom.
    shared = groups[("all", "tied")]
    t = 0.05 / math.sqrt(2 * 0.01 ** 2 / 3)
    assert shared.comparison.delta == pytest.approx(-0.05)
    assert shared.comparison.p_value == pytest.approx(2 * stats.t.sf(t, 4), rel=1e-6)
    assert shared.comparison.p_value < 0.01 and shared.comparison.differs is True
    # A metric stored without its per-seed list is one value, with no spread to show.
    assert shared.summaries["val_accuracy"].n == 1 and shared.summaries["val_accuracy"].std is None

    # Three single-seed trials of one arch hash are one arch with three seeds; copies,
    # pruned and infeasible trials are not seeds.
    token = groups[("token", "separate")]
    assert len(token.runs) == 1 and token.runs[0].trials == [2, 3, 4] and token.seeds == 3
    assert token.summaries["test_accuracy"].mean == pytest.approx(0.96)
    assert token.summaries["test_accuracy"].std == pytest.approx(0.005)
    assert token.comparison.delta == pytest.approx(0.0, abs=1e-12)
    assert token.comparison.differs is False and token.comparison.p_value == pytest.approx(1.0)


def test_markdown_table_shows_spread_and_verdicts(study):
    text = render_markdown(build_report(study.get_trials(), by=["sharing"], baseline={"sharing": "none"}))
    lines = text.splitlines()
    assert lines[0] == ("| sharing | archs | seeds | params | val acc | test acc | train s | Δ test acc "
                        "| vs baseline (p < 0.05) |")
    assert lines[2].startswith("| none | 1 | 3 | 34,782 | 0.9650 ± 0.0050 | 0.9600 ± 0.0100 | 20 ± 1 |")
    assert lines[2].endswith("| baseline |")
    assert lines[3].startswith("| all | 1 | 3 | 10,000 |") and "| -5.00 pt | differs (p = 0.00" in lines[3]
    assert "| token | 1 | 3 |" in lines[4] and lines[4].endswith("| +0.00 pt | within noise (p = 1) |")
    assert "Welch's t-test" in text and "α = 0.05" in text


def test_group_by_arch_and_recipe_fields_and_bad_names(study):
    report = build_report(study.get_trials(), by=["dilation", "train.lr"])
    assert [g.key for g in report.groups] == [("1", "0.003")] and report.groups[0].seeds == 9
    assert report.baseline is None and report.groups[0].comparison is None
    with pytest.raises(ValueError, match="no field 'colour'"):
        build_report(study.get_trials(), by=["colour"])
    with pytest.raises(ValueError, match="matches 0 groups"):
        build_report(study.get_trials(), by=["sharing"], baseline={"sharing": "fc1"})
    with pytest.raises(ValueError, match="not one of the grouping fields"):
        build_report(study.get_trials(), by=["sharing"], baseline={"bias": "tied"})
