"""Taking archs away: artifacts of a real tiny study, export, load_model, ONNX, train, evaluate."""

from __future__ import annotations

import csv

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

import mixsearch
from conftest import TINY_SPEC, merge
from mixsearch.arch import MixerArch
from mixsearch.artifacts import ARCH_FILE, CURVE_FILE, PLOT_IDS, WEIGHTS_FILE, load_weights, save_weights
from mixsearch.cli import main
from mixsearch.data import load_splits
from mixsearch.errors import UsageError
from mixsearch.export import read_export
from mixsearch.models import build_model, count_params
from mixsearch.spec import parse_spec
from mixsearch.study import pareto_trials, run_study
from mixsearch.train import evaluate

# conftest's tiny spec as its own study, with latency as a third objective.
SPEC = merge(TINY_SPEC, {"study": {"name": "takeaway", "seed": 5},
                         "data": {"train_size": 500, "val_size": 200, "test_size": 200},
                         "objectives": ["accuracy", "params", "latency"]})


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    url = f"sqlite:///{folder / 'takeaway.db'}"
    spec = parse_spec(SPEC, "takeaway.yaml")
    run_study(spec, storage_url=url)
    study = optuna.load_study(study_name="takeaway", storage=url)
    return folder, url, study


@pytest.fixture(scope="module")
def exported(study_run, tmp_path_factory):
    folder, _, _ = study_run
    out = tmp_path_factory.mktemp("exports")
    assert main(["export", str(folder / "takeaway.db"), "-o", str(out), "--onnx"]) == 0
    return out


def trained(study):
    return [t for t in study.get_trials(states=(TrialState.COMPLETE,))
            if "duplicate_of" not in t.user_attrs and "infeasible_reason" not in t.user_attrs]


def test_every_trained_trial_stores_arch_curve_and_weights(study_run):
    folder, _, study = study_run
    store = optuna.artifacts.FileSystemArtifactStore(str(folder / "artifacts" / "takeaway"))
    assert study.user_attrs["artifact_dir"] == str((folder / "artifacts" / "takeaway").resolve())
    assert trained(study)
    for trial in trained(study):
        assert trial.user_attrs["seed"] == 5 + trial.number
        metas = {m.filename: m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)}
        assert set(metas) == {ARCH_FILE, CURVE_FILE, WEIGHTS_FILE}
        with store.open_reader(metas[ARCH_FILE]) as reader:
            assert yaml.safe_load(reader.read()) == trial.user_attrs["arch"]
        with store.open_reader(metas[CURVE_FILE]) as reader:
            rows = list(csv.DictReader(reader.read().decode().splitlines()))
        assert [float(r["val_accuracy"]) for r in rows] == [e["val_accuracy"] for e in trial.user_attrs["curve"]]
    # The study-level plots are stored for optuna-dashboard.
    system = study._storage.get_study_system_attrs(study._study_id)
    for plot_id in PLOT_IDS.values():
        assert any(plot_id in key for key in system), plot_id


def test_export_writes_the_pareto_front_with_weights_and_index(study_run, exported):
    _, _, study = study_run
    front = pareto_trials(study)
    files = sorted(exported.glob("trial-*.yaml"))
    assert [f.name for f in files] == [f"trial-{t.number:03d}.yaml" for t in sorted(front, key=lambda t: t.number)]
    with (exported / "index.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(r["trial"]) for r in rows) == sorted(t.number for t in front)
    assert list(rows[0])[:5] == ["trial", "file", "accuracy", "params", "latency"]
    index_md = (exported / "index.md").read_text()
    for trial in front:
        assert f"trial-{trial.number:03d}.yaml" in index_md
    for trial in front:
        record = yaml.safe_load((exported / f"trial-{trial.number:03d}.yaml").read_text())
        assert record["study"] == "takeaway" and record["trial"] == trial.number
        assert record["objectives"] == pytest.approx(dict(zip(study.metric_names, trial.values)))
        assert record["test_accuracy"] == trial.user_attrs["test_accuracy"]
        assert record["recipe"] == trial.user_attrs["recipe"] and record["seed"] == 5 + trial.number
        assert record["data"]["train_size"] == 500 and record["data"]["seed"] == 5
        assert (exported / record["weights"]).is_file()


def test_load_model_gives_the_stored_test_accuracy(study_run, exported):
    _, _, study = study_run
    spec = parse_spec(SPEC, "takeaway.yaml")
    splits = load_splits(spec.data)
    for trial in pareto_trials(study):
        model = mixsearch.load_model(exported / f"trial-{trial.number:03d}.yaml")
        assert not model.training
        assert evaluate(model, splits.test_x, splits.test_y) == trial.user_attrs["test_accuracy"]
        assert evaluate(model, splits.val_x, splits.val_y) == trial.values[0]


def test_onnx_export_runs_in_onnxruntime_like_torch(study_run, exported):
    onnxruntime = pytest.importorskip("onnxruntime")
    _, _, study = study_run
    trial = pareto_trials(study)[0]
    path = exported / f"trial-{trial.number:03d}.yaml"
    record = yaml.safe_load(path.read_text())
    session = onnxruntime.InferenceSession(str(exported / record["onnx"]), providers=["CPUExecutionProvider"])
    images = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    (logits,) = session.run(None, {"image": images.numpy()})
    with torch.inference_mode():
        expected = mixsearch.load_model(path)(images)
    assert logits.shape == (5, 10)
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)


def test_train_with_the_recorded_seed_repeats_the_trial(study_run, exported, tmp_path, capsys):
    _, _, study = study_run
    trial = pareto_trials(study)[0]
    source = exported / f"trial-{trial.number:03d}.yaml"
    assert main(["train", str(source), "-o", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "params" in out and "latency" in out
    record = yaml.safe_load((tmp_path / "again" / source.name).read_text())
    assert record["metrics"]["val_accuracy"] == trial.values[0]
    assert record["test_accuracy"] == trial.user_attrs["test_accuracy"]
    assert record["objectives"]["params"] == trial.values[1] == record["metrics"]["params"]
    assert [e["val_accuracy"] for e in record["curve"]] == [e["val_accuracy"] for e in trial.user_attrs["curve"]]
    assert record["metrics"]["flops"] == trial.user_attrs["flops"] and record["metrics"]["latency_ms"] > 0
    # The retrained file is an export too: its weights load and evaluate to its own numbers.
    assert main(["evaluate", str(tmp_path / "again" / source.name)]) == 0
    assert f"test accuracy {record['test_accuracy']:.4f}" in capsys.readouterr().out


def test_train_applies_overrides(exported, tmp_path):
    source = sorted(exported.glob("trial-*.yaml"))[0]
    assert main(["train", str(source), "--epochs", "1", "--train-size", "100", "--seed", "11",
                 "-o", str(tmp_path)]) == 0
    record = yaml.safe_load((tmp_path / source.name).read_text())
    assert record["recipe"]["epochs"] == 1 and len(record["curve"]) == 1
    assert record["data"]["train_size"] == 100 and record["seed"] == 11
    assert record["retrained_from"] == str(source)


def test_evaluate_reports_the_recorded_test_accuracy(exported, capsys):
    source = sorted(exported.glob("trial-*.yaml"))[0]
    record = yaml.safe_load(source.read_text())
    assert main(["evaluate", str(source)]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {record['test_accuracy']:.4f} on 200 images" in out
    assert f"(recorded {record['test_accuracy']:.4f})" in out


def test_export_top_k_and_chosen_trials(study_run, tmp_path):
    folder, _, study = study_run
    db = str(folder / "takeaway.db")
    assert main(["export", db, "--top", "2", "--by", "params", "-o", str(tmp_path / "top")]) == 0
    rows = list(csv.DictReader((tmp_path / "top" / "index.csv").open()))
    smallest = sorted(trained(study), key=lambda t: (t.values[1], t.number))[:2]
    assert [int(r["trial"]) for r in rows] == [t.number for t in smallest]
    number = trained(study)[-1].number
    assert main(["export", db, "--trial", str(number), "-o", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").glob("*.yaml")] == [f"trial-{number:03d}.yaml"]


def test_shared_parameters_survive_a_weights_round_trip(tmp_path):
    arch = MixerArch(in_channels=1, image_size=(28, 28), num_classes=10, layers=3, channels=8, token_hidden=8,
                     channel_hidden=8, patch_size=7, sharing={"token.fc1": (0, 0, 0), "channel.fc2": (0, 0, 1)},
                     bias={"token.fc1": "separate"})
    torch.manual_seed(0)
    model = build_model(arch)
    save_weights(model, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    loaded = load_weights(build_model(arch), tmp_path / "w.safetensors")
    assert count_params(loaded) == count_params(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    # Sharing is still sharing: one Parameter object, not equal copies.
    assert len({id(p) for p in loaded.parameters()}) == len({id(p) for p in model.parameters()})
    (tmp_path / "arch.yaml").write_text(yaml.safe_dump(arch.to_dict()))
    assert read_export(tmp_path / "arch.yaml").arch == arch  # a bare arch YAML loads too


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_export_from_a_store_without_the_weights_says_so_and_writes_nothing(study_run, tmp_path, capsys):
    folder, _, _ = study_run
    db = str(folder / "takeaway.db")
    store = tmp_path / "elsewhere"
    store.mkdir()
    assert main(["export", db, "--artifacts", str(store), "-o", str(tmp_path / "x")]) == 1
    line = _one_error_line(capsys)
    assert "trial " in line and "'s weights: artifact " in line, line
    assert f"is not in the artifact store {store}; give the store's directory with --artifacts" in line, line
    assert not (tmp_path / "x").exists()  # checked before anything is written

    assert main(["export", db, "--artifacts", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")]) == 2
    assert _one_error_line(capsys) == f"error: --artifacts {tmp_path / 'nowhere'}: no such directory"
    assert not (tmp_path / "x").exists() and not (tmp_path / "nowhere").exists()


def test_cli_errors_are_one_line_with_exit_code_2(study_run, exported, tmp_path, capsys):
    folder, _, study = study_run
    db = str(folder / "takeaway.db")
    assert main(["export", db, "--trial", "99", "-o", str(tmp_path / "x")]) == 2
    assert "no trial 99" in _one_error_line(capsys)
    assert main(["export", db, "--top", "1", "--by", "speed", "-o", str(tmp_path / "x")]) == 2
    assert "'speed' is not a metric" in _one_error_line(capsys)

    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: [1, 2\n")
    assert main(["train", str(bad)]) == 2
    assert "not valid YAML" in _one_error_line(capsys)
    bad.write_text("foo: 1\n")
    assert main(["evaluate", str(bad)]) == 2
    assert "no arch in it" in _one_error_line(capsys)

    record = yaml.safe_load(sorted(exported.glob("trial-*.yaml"))[0].read_text())
    record["arch"]["family"] = "transformer"
    bad.write_text(yaml.safe_dump(record))
    assert main(["evaluate", str(bad)]) == 2
    assert "family must be one of mixer, mobilenet" in _one_error_line(capsys)
    with pytest.raises(UsageError, match="family must be one of"):
        mixsearch.load_model(bad)

    record = yaml.safe_load(sorted(exported.glob("trial-*.yaml"))[0].read_text())
    bad.write_text(yaml.safe_dump({"arch": record["arch"]}))  # a bare arch: nothing says what data it knew
    assert main(["train", str(bad), "-o", str(tmp_path / "x")]) == 2
    assert "bad.yaml: no data section" in _one_error_line(capsys)
    bad.write_text(yaml.safe_dump({**record, "recipe": {**record["recipe"], "warp_speed": 9}}))
    assert main(["train", str(bad), "-o", str(tmp_path / "x")]) == 2
    line = _one_error_line(capsys)
    assert "bad.yaml: recipe: " in line and "warp_speed" in line
    assert not (tmp_path / "x").exists()  # nothing written

    record["arch"]["channels"] = 24  # weights of another width
    (exported / "wrong.yaml").write_text(yaml.safe_dump(record))
    assert main(["evaluate", str(exported / "wrong.yaml")]) == 2
    assert "weights do not fit the arch" in _one_error_line(capsys)
    (exported / "wrong.yaml").unlink()
