"""Bad input everywhere: every case runs the real command line and must fail cleanly.

Clean means: exit code 2 (the input is wrong) or 1 (the environment is), exactly one line on
stderr that names the file and the field path (or the argument), no traceback, and nothing
written or changed anywhere: the studies directory, a study already in it and the journal files
stay byte-identical.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import TINY_SPEC
from mixsearch.cli import main
from mixsearch.storage import quiet_experimental

SPEC = "spec.yaml"


def with_value(path: str, value):
    """TINY_SPEC with ``value`` at the dotted ``path`` (a missing section is created)."""
    spec = copy.deepcopy(TINY_SPEC)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return spec


def without(path: str):
    spec = copy.deepcopy(TINY_SPEC)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[key]
    del node[last]
    return spec


# -- generated: one wrong value per field, each must be named by its path ------------------------
# (dotted path, bad value, what the error line must also say)
WRONG_VALUES = [
    ("study.trials", 0, ">= 1"),
    ("study.trials", "ten", "an integer"),
    ("study.trials", 2.5, "an integer"),
    ("study.seed", -1, ">= 0"),
    ("study.timeout", -5, ">= 0"),
    ("study.sampler", "annealing", "tpe"),
    ("study.pruner", "hyperband-ish", "median"),
    ("study.pruner", 5, "pruner name"),
    ("study.pruner", {"type": "median", "patience": 3}, "unknown key"),
    ("study.name", "bad name!", "letters"),
    ("study.colour", "blue", "unknown key"),
    ("data.dataset", "imagenet", "mnist"),
    ("data.source", "s3://bucket", "idx:PATH"),
    ("data.train_size", 0, ">= 1"),
    ("data.val_size", "many", "an integer"),
    ("data.image_shape", [1, 28], "channels, height, width"),
    ("data.train_eval_size", 0, ">= 1"),
    ("data.train_eval_size", 301, "more than data.train_size (300)"),
    ("data.extra", 1, "unknown key"),
    ("train.epochs", 0, ">= 1"),
    ("train.epochs", [], "empty list"),
    ("train.batch_size", True, "an integer"),
    ("train.optimizer", "rmsprop", "one of"),
    ("train.lr", {"low": 0.1, "high": 0.01}, "greater than high"),
    ("train.lr", {"low": 0.0, "high": 0.1, "log": True}, ">= 1e-12"),
    ("train.lr", {"low": 0.01}, "missing high"),
    ("train.lr", {"low": 0.01, "high": 0.1, "step": 0}, "> 0"),
    ("train.lr", {"low": 0.01, "high": 0.1, "by": 2}, "unknown key"),
    ("train.lr", float("nan"), "finite"),
    ("train.momentum", 1.5, "<= 1"),
    ("train.epochs", [1, 1], "twice"),
    ("train.dropout", 0.1, "unknown key"),
    ("objectives", ["accuracy"], "2 to 4"),
    ("objectives", ["accuracy", "speed"], "one of"),
    ("objectives", "accuracy", "a list"),
    ("objectives", ["accuracy", "accuracy"], "twice"),
    ("constraints.params", -1, ">= 0"),
    ("constraints.energy", 5, "unknown key"),
    ("constraints.memory", -1, ">= 0"),
    ("measure.runtime", "tflite", "onnxruntime, torch"),
    ("measure.latency_min_time", 0.0, ">= 0.01"),
    ("measure.warmup", 3, "unknown key"),
    ("space.family", "resnet", "mixer"),
    ("space.layers", 0, ">= 1"),
    ("space.layers", [], "empty list"),
    ("space.channels", {"low": 64, "high": 16}, "greater than high"),
    ("space.patch_size", "big", "an integer"),
    ("space.sharing.mode", ["none", "sometimes"], "one of"),
    ("space.depth", 3, "unknown key"),
    # Found by the generated specs (tests/test_spec_properties.py): each was a traceback.
    ("space.family", [], "got a list"),
    ("study.pruner", {"type": ["median"]}, "got a list"),
    ("study.timeout", 10**400, "finite"),
    ("train.lr", 10**400, "finite"),
    ("study.seed", 2**32, "<= 2147483647"),
    ("data.seed", 2**63, "<= 2147483647"),
    ("train.epochs", {"low": 1, "high": 10**15}, "at most 10,000"),
    ("train.lr", {"low": 0.01, "high": 0.1, 3: 1, "by": 2}, "unknown key"),
]

GENERATED = [pytest.param(with_value(path, value), ["run", SPEC], 2, [SPEC, path, said],
                          id=f"{path}={value!r}"[:60]) for path, value, said in WRONG_VALUES]

# -- hand-written: broken files, impossible spaces, bad storages and arguments ------------------

ARCH = {"family": "mixer", "layers": 1, "channels": 8, "token_hidden": 16, "channel_hidden": 16,
        "patch_size": 7, "dilation": 1}

HAND_WRITTEN = [
    pytest.param("study: [unclosed\n", ["run", SPEC], 2, [SPEC, "not valid YAML", "line"], id="not-yaml"),
    pytest.param("study:\n  name: a\n bad: 1\n", ["run", SPEC], 2, [SPEC, "not valid YAML"], id="bad-indent"),
    pytest.param("", ["run", SPEC], 2, [SPEC, "is empty"], id="empty-file"),
    pytest.param("# only a comment\n", ["validate", SPEC], 2, [SPEC, "is empty"], id="only-comments"),
    pytest.param("- study\n- space\n", ["run", SPEC], 2, [SPEC, "a mapping", "a list"], id="list-not-mapping"),
    pytest.param("42\n", ["run", SPEC], 2, [SPEC, "a mapping"], id="scalar-top-level"),
    pytest.param(b"\xff\xfe\x00garbage\x81", ["run", SPEC], 2, [SPEC, "cannot be read"], id="not-utf8"),
    pytest.param(None, ["run", "missing.yaml"], 2, ["missing.yaml", "file not found"], id="missing-file"),
    pytest.param(None, ["run", "studies"], 2, ["studies", "directory"], id="directory-as-spec"),
    pytest.param(with_value("stduy", {"trials": 3}), ["run", SPEC], 2, [SPEC, "stduy", "unknown key"],
                 id="unknown-top-key"),
    pytest.param(without("space"), ["run", SPEC], 2, [SPEC, "space", "required"], id="no-space"),
    pytest.param(with_value("space", ["mixer"]), ["run", SPEC], 2, [SPEC, "space", "mapping"], id="space-is-a-list"),
    pytest.param(with_value("study", "fast"), ["run", SPEC], 2, [SPEC, "study", "mapping"], id="study-is-a-string"),
    # Impossible archs: no field is wrong alone, but no corner of the space can be built.
    pytest.param(with_value("space.patch_size", 32), ["run", SPEC], 2, [SPEC, "space", "no buildable arch"],
                 id="patch-bigger-than-image"),
    # With workers: they start while the spec is checked, and leave without touching anything.
    pytest.param(with_value("space.patch_size", 32), ["run", SPEC, "--jobs", "2"], 2,
                 [SPEC, "space", "no buildable arch"], id="patch-bigger-than-image-jobs"),
    # They start before the spec is even read: a file that is no spec, or no file, sends them away too.
    pytest.param("study: [unclosed\n", ["run", SPEC, "--jobs", "2"], 2, [SPEC, "not valid YAML", "line"],
                 id="not-yaml-jobs"),
    pytest.param(None, ["run", "missing.yaml", "--jobs", "2"], 2, ["missing.yaml", "file not found"],
                 id="missing-file-jobs"),
    pytest.param(with_value("space", {**ARCH, "patch_size": 10, "dilation": 4}), ["validate", SPEC], 2,
                 [SPEC, "space", "no buildable arch"], id="no-tokens-dilated"),
    pytest.param(with_value("space", {"family": "mobilenet", "strides": "1,x"}), ["validate", SPEC], 2,
                 [SPEC, "space.strides", "1s and 2s"], id="mobilenet-strides-not-numbers"),
    pytest.param(with_value("data", {"dataset": "cifar10", "source": "bundled"}), ["validate", SPEC], 2,
                 [SPEC, "data.source", "cifar10"], id="validate-source-the-dataset-lacks"),
    pytest.param(with_value("train.dro\npout", 0.1), ["validate", SPEC], 2, [SPEC, "train.'dro\\npout': unknown key"],
                 id="unknown-key-with-a-line-break"),
    pytest.param(with_value("train.device", ["cpu", "cuda"]), ["run", SPEC], 2, [SPEC, "train.device"],
                 id="searched-device"),
    # Data missing offline: nothing may be created before the data is there.
    pytest.param(with_value("data.source", "idx:/nonexistent"), ["run", SPEC], (1, 2),
                 [SPEC, "data.source", "/nonexistent"], id="missing-idx-dataset"),
    # Storages.
    pytest.param(TINY_SPEC, ["run", SPEC, "--storage", "notaurl"], 2, ["notaurl", "storage URL"], id="storage-no-scheme"),
    pytest.param(TINY_SPEC, ["run", SPEC, "--storage", "bogus://host/db"], (1, 2), ["bogus://host/db"],
                 id="storage-unknown-scheme"),
    pytest.param(TINY_SPEC, ["run", SPEC, "--storage", "postgresql://u:hunter2@127.0.0.1:1/db"], 1,
                 ["postgresql://u:***@127.0.0.1:1/db", "cannot open"], id="storage-refused-password-masked"),
    pytest.param(TINY_SPEC, ["run", SPEC, "--storage", f"sqlite:///{SPEC}/x.db"], 1, ["cannot create directory"],
                 id="storage-dir-is-a-file"),
    pytest.param(TINY_SPEC, ["run", SPEC, "--storage", "sqlite:////proc/mixsearch/x.db"], 1, ["/proc/mixsearch"],
                 id="storage-dir-unwritable"),
    pytest.param(TINY_SPEC, ["run", SPEC, "--storage", "studies/corrupt.db"], 1, ["corrupt.db", "not a SQLite"],
                 id="corrupted-sqlite-run"),
    pytest.param(TINY_SPEC, ["show", "studies/corrupt.db"], 1, ["corrupt.db", "not a SQLite"], id="corrupted-sqlite-show"),
    pytest.param(TINY_SPEC, ["show", "studies/corrupt.log"], 1, ["corrupt.log", "journal"], id="corrupted-journal"),
    pytest.param(TINY_SPEC, ["show", "studies/nothing.db"], 2, ["nothing.db", "no such file"], id="show-missing-db"),
    pytest.param(TINY_SPEC, ["show", "studies/tiny.db", "--study", "nope"], 2, ["--study", "nope"],
                 id="show-unknown-study"),
    pytest.param(with_value("study.storage", "notaurl"), ["run", SPEC], 2, ["notaurl", "storage URL"],
                 id="spec-storage-no-scheme"),
    pytest.param(with_value("objectives", ["accuracy", "flops"]), ["run", SPEC], 2,
                 [SPEC, "objectives", "differ"], id="objectives-differ-from-existing-study"),
    # Exported archs: another family, or an arch where a spec is expected.
    pytest.param({**ARCH, "family": "resnet"}, ["train", SPEC], 2, [SPEC, "family", "resnet"],
                 id="exported-resnet-train"),
    pytest.param({**ARCH, "family": "resnet"}, ["evaluate", SPEC], 2, [SPEC, "family", "resnet"],
                 id="exported-resnet-evaluate"),
    pytest.param(ARCH, ["run", SPEC], 2, [SPEC, "unknown key"], id="exported-arch-as-spec"),
    # Arguments.
    pytest.param(TINY_SPEC, ["run", SPEC, "--trials", "0"], 2, ["--trials", ">= 1"], id="arg-trials-zero"),
    pytest.param(TINY_SPEC, ["run", SPEC, "--trials", "many"], 2, ["--trials", "many"], id="arg-trials-text"),
    pytest.param(TINY_SPEC, ["run", SPEC, "--jobs", "0"], 2, ["--jobs"], id="arg-jobs-zero"),
    pytest.param(TINY_SPEC, ["run", SPEC, "--timeout", "-3"], 2, ["--timeout"], id="arg-timeout-negative"),
    pytest.param(TINY_SPEC, ["run", SPEC, "--colour"], 2, ["--colour"], id="arg-unknown-option"),
    pytest.param(TINY_SPEC, ["worker", SPEC, "--threads", "0"], 2, ["--threads"], id="arg-worker-threads"),
    pytest.param(TINY_SPEC, ["fly", SPEC], 2, ["fly"], id="arg-unknown-command"),
]

CASES = GENERATED + HAND_WRITTEN


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A working directory with a study already stored, and corrupted storage files beside it."""
    root = tmp_path_factory.mktemp("template")
    studies = root / "studies"
    studies.mkdir()
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{studies / 'tiny.db'}",
                                directions=["maximize", "minimize"])
    with quiet_experimental():
        study.set_metric_names(["accuracy", "params"])
    study.add_trial(optuna.trial.create_trial(values=[0.5, 1000.0]))
    (studies / "corrupt.db").write_bytes(b"this is not a database\n" * 20)
    (studies / "corrupt.log").write_bytes(b'{"op_code": 0, "worker_id": "x"}\n\xff\x00 broken\n')
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("content, argv, code, expected", CASES)
def test_bad_input_fails_cleanly(tmp_path, monkeypatch, capsys, template, content, argv, code, expected):
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    spec = tmp_path / SPEC
    if isinstance(content, bytes):
        spec.write_bytes(content)
    elif isinstance(content, str):
        spec.write_text(content)
    elif content is not None:
        spec.write_text(yaml.safe_dump(content, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)

    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        status = exc.code
    out, err = capsys.readouterr()

    assert status in (code if isinstance(code, tuple) else (code,)), (status, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in out + err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert "hunter2" not in out + err
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_the_corpus_is_large():
    assert len(CASES) >= 40


def test_a_bad_heartbeat_setting_is_one_line(tmp_path, monkeypatch, capsys, write_spec):
    spec = write_spec()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIXSEARCH_HEARTBEAT_GRACE", "soon")
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MIXSEARCH_HEARTBEAT_GRACE" in err[0]
    assert not (tmp_path / "studies").exists()
