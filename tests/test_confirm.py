"""``mixsearch confirm`` and ``mixsearch report`` through the real command on a tiny SQLite study,
and the error bars that ``show``, ``export`` and the study plots then show."""

from __future__ import annotations

import csv
import statistics

import optuna
import pytest
import yaml

from conftest import TINY_SPEC, merge, run_cli
from mixsearch.artifacts import tradeoff_figure
from mixsearch.seeds import SEED_STRIDE
from mixsearch.study import pareto_trials

SPEC = merge(TINY_SPEC, {
    "study": {"name": "seeds", "trials": 2, "seed": 3, "enqueue": [
        {"label": "one layer", "space": {"layers": 1, "channels": 8, "patch_size": 7, "dilation": 1,
                                         "sharing": {"mode": "none", "bias": "tied"}}},
        {"label": "two layers", "space": {"layers": 2, "channels": 16, "patch_size": 7, "dilation": 1,
                                          "sharing": {"mode": "none", "bias": "tied"}}}]},
    "data": {"train_size": 200, "val_size": 100, "test_size": 100},
    "train": {"epochs": 1},
})


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory):
    """A two-trial study (one seed each), then ``confirm --seeds 2``."""
    folder = tmp_path_factory.mktemp("confirm")
    (folder / "seeds.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    run = run_cli(["run", "seeds.yaml"], folder)
    assert run.returncode == 0, run.stderr
    done = run_cli(["confirm", "studies/seeds.db", "--seeds", "2"], folder)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="seeds", storage=f"sqlite:///{folder / 'studies' / 'seeds.db'}")
    return folder, study, done.stdout


def test_confirm_records_more_seeds_of_each_pareto_trial(confirmed):
    _, study, out = confirmed
    front = pareto_trials(study)
    assert front and "confirmed" in out
    for trial in front:
        record = study.user_attrs[f"confirm:{trial.number}"]
        first = trial.user_attrs["seed"]
        assert first == 3 + trial.number
        # The trial ran seed k = 0; confirm continues the same sequence with k = 1, 2.
        assert record["seeds"] == [first + SEED_STRIDE, first + 2 * SEED_STRIDE]
        tests = [trial.user_attrs["test_accuracy"], *record["test_accuracy_seeds"]]
        assert record["n"] == 3 and len(record["val_accuracy_seeds"]) == 2
        assert record["test_accuracy"] == pytest.approx(statistics.fmean(tests))
        assert record["test_accuracy_std"] == pytest.approx(statistics.stdev(tests))
        assert f"{record['test_accuracy']:.4f} ± {record['test_accuracy_std']:.4f}" in out


def test_confirm_again_adds_further_seeds(confirmed, tmp_path):
    folder, study, _ = confirmed
    number = pareto_trials(study)[0].number
    before = study.user_attrs[f"confirm:{number}"]["seeds"]
    again = run_cli(["confirm", "seeds.yaml", "--seeds", "1"], folder)
    assert again.returncode == 0, again.stderr
    record = optuna.load_study(study_name="seeds", storage=study._storage).user_attrs[f"confirm:{number}"]
    assert record["seeds"] == before + [before[-1] + SEED_STRIDE] and record["n"] == 4


def test_show_export_and_plots_show_the_spread(confirmed):
    folder, study, _ = confirmed
    study = optuna.load_study(study_name="seeds", storage=study._storage)
    trial = pareto_trials(study)[0]
    record = study.user_attrs[f"confirm:{trial.number}"]
    shown = run_cli(["show", "studies/seeds.db"], folder)
    assert shown.returncode == 0, shown.stderr
    assert f"{record['test_accuracy']:.4f} ± {record['test_accuracy_std']:.4f}" in shown.stdout
    assert "mean ± sample std over the trial's seeds" in shown.stdout

    exported = run_cli(["export", "studies/seeds.db", "-o", "out"], folder)
    assert exported.returncode == 0, exported.stderr
    data = yaml.safe_load((folder / "out" / f"trial-{trial.number:03d}.yaml").read_text())
    assert data["seeds"]["n"] == record["n"]
    assert data["seeds"]["seeds"] == [trial.user_attrs["seed"], *record["seeds"]]
    assert data["seeds"]["test_accuracy"]["mean"] == pytest.approx(record["test_accuracy"])
    assert data["seeds"]["test_accuracy"]["std"] == pytest.approx(record["test_accuracy_std"])
    rows = {int(r["trial"]): r for r in csv.DictReader((folder / "out" / "index.csv").open())}
    assert int(rows[trial.number]["seeds"]) == record["n"]
    assert float(rows[trial.number]["test_acc_std"]) == pytest.approx(record["test_accuracy_std"])
    assert "test_acc_std" in (folder / "out" / "index.md").read_text()

    figure = tradeoff_figure(study)
    points = {n: (y, e) for scatter in figure.data for n, y, e in
              zip([int(t.split(":")[0].split()[1]) for t in scatter.hovertext], scatter.y, scatter.error_y.array)}
    mean, std = points[trial.number]
    values = [trial.user_attrs["val_accuracy"], *record["val_accuracy_seeds"]]
    assert mean == pytest.approx(statistics.fmean(values)) and std == pytest.approx(statistics.stdev(values))


def test_report_writes_a_table_of_all_seeds(confirmed, tmp_path):
    folder, study, _ = confirmed
    study = optuna.load_study(study_name="seeds", storage=study._storage)
    out = tmp_path / "table.md"
    done = run_cli(["report", "seeds.yaml", "--by", "label", "--baseline", "label=one layer", "-o", out], folder)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text in done.stdout.replace("\r", "") or text.splitlines()[0] in done.stdout
    lines = text.splitlines()
    assert lines[0].startswith("| label | archs | seeds |") and "Δ test acc" in lines[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:] if line.startswith("|")}
    assert set(rows) == {"one layer", "two layers"}
    for trial in study.get_trials():
        label = trial.user_attrs["label"]
        confirmation = study.user_attrs.get(f"confirm:{trial.number}")
        tests = [trial.user_attrs["test_accuracy"], *(confirmation or {}).get("test_accuracy_seeds", [])]
        cells = rows[label].split(" | ")
        assert cells[2] == str(len(tests))
        expected = f"{statistics.fmean(tests):.4f}" + (f" ± {statistics.stdev(tests):.4f}" if len(tests) > 1 else "")
        assert expected in rows[label]
    assert "baseline" in rows["one layer"] and "Welch's t-test" in text and "Baseline: label = one layer." in text


def test_report_bad_field_is_one_line(confirmed):
    folder, _, _ = confirmed
    done = run_cli(["report", "studies/seeds.db", "--by", "colour"], folder)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --by: no field 'colour' in trial 0's arch, recipe or attrs"
    bad = run_cli(["report", "studies/seeds.db", "--by", "label", "--baseline", "label"], folder)
    assert bad.returncode == 2 and "expected FIELD=VALUE, got 'label'" in bad.stderr
