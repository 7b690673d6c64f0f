"""Spec parsing: good files parse into the right values, bad ones name file, field and what is allowed."""

import pytest

from mixsearch.choices import Categorical, Fixed, FloatRange, IntRange
from mixsearch.errors import SpecError
from mixsearch.spec import load_spec, parse_spec

MINIMAL_SPACE = {"family": "mixer", "layers": 2}


def parse(**sections):
    sections.setdefault("space", dict(MINIMAL_SPACE))
    return parse_spec(sections, "test.yaml", default_name="test")


def test_defaults_fill_every_section():
    spec = parse()
    assert spec.study.name == "test"
    assert spec.study.trials == 20 and spec.study.sampler == "tpe" and spec.study.seed == 0
    assert spec.data.dataset == "mnist" and spec.data.train_size == 10000 and spec.data.seed == 0
    assert spec.objectives == ("accuracy", "params")
    assert spec.directions == ["maximize", "minimize"]
    assert spec.train["epochs"] == Fixed(10)
    assert spec.space.choices["layers"] == Fixed(2)


def test_choices_fixed_list_and_ranges():
    spec = parse(space={"family": "mixer", "layers": [2, 4], "channels": {"low": 16, "high": 64, "step": 16},
                        "patch_size": [4]},
                 train={"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "optimizer": ["adamw", "sgd"]})
    assert spec.space.choices["layers"] == Categorical((2, 4))
    assert spec.space.choices["channels"] == IntRange(16, 64, 16, False)
    assert spec.space.choices["patch_size"] == Fixed(4)
    assert spec.train["lr"] == FloatRange(1e-4, 1e-2, None, True)
    assert spec.train["optimizer"] == Categorical(("adamw", "sgd"))
    assert spec.space.choices["channels"].size() == 4


def test_directions_follow_objective_kind():
    spec = parse(objectives=["latency", "accuracy", "flops", "params"])
    assert spec.directions == ["minimize", "maximize", "minimize", "minimize"]


def test_data_seed_defaults_to_study_seed():
    assert parse(study={"seed": 7}).data.seed == 7
    assert parse(study={"seed": 7}, data={"seed": 3}).data.seed == 3


@pytest.mark.parametrize("sections, field, allowed", [
    ({"study": {"sampler": "bayes"}}, "study.sampler", "tpe, nsga2, nsga3, random, gp, grid"),
    ({"study": {"trails": 3}}, "study.trails", "allowed: name, storage, trials"),
    ({"study": {"trials": 0}}, "study.trials", "an integer >= 1"),
    ({"study": {"trials": "ten"}}, "study.trials", "an integer >= 1"),
    ({"train": {"optimizer": ["adamw", "lion"]}}, "train.optimizer[1]", "adamw, adam, sgd"),
    ({"train": {"lr": {"low": 0.1, "high": 0.01}}}, "train.lr", "greater than high"),
    ({"train": {"epochs": []}}, "train.epochs", "empty list"),
    ({"objectives": ["accuracy"]}, "objectives", "2 to 4"),
    ({"objectives": ["accuracy", "speed"]}, "objectives[1]", "accuracy, params, flops, latency"),
    ({"objectives": ["accuracy", "params", "params"]}, "objectives", "twice"),
    ({"constraints": {"energy": 3}}, "constraints.energy", "allowed: params, flops, latency, memory"),
    ({"space": {"family": "resnet"}}, "space.family", "mixer, mobilenet"),
    ({"space": {"family": "mixer", "patch": 4}}, "space.patch", "allowed: family, layers"),
    ({"space": {"family": "mixer", "sharing": {"mode": ["none", "some"]}}}, "space.sharing.mode[1]", "none, all, group, tie"),
    ({"space": {"family": "mixer", "sharing": {"sites": ["token.fc3"]}}}, "space.sharing.sites[0]", "token.fc1"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset", "mnist, cifar10, synthetic"),
    ({"data": {"source": "s3://bucket"}}, "data.source", "idx:PATH"),
    ({"study": {"pruner": "hyperband"}}, "study.pruner", "none"),
    ({"measure": {"latency_threads": 0}}, "measure.latency_threads", ">= 1"),
    ({"measure": {"runtime": "tflite"}}, "measure.runtime", "onnxruntime, torch"),
])
def test_bad_fields_name_file_field_and_allowed_values(sections, field, allowed):
    sections.setdefault("space", dict(MINIMAL_SPACE))
    with pytest.raises(SpecError) as info:
        parse_spec(sections, "bad.yaml")
    message = str(info.value)
    assert message.startswith(f"bad.yaml: {field}:"), message
    assert allowed in message
    assert "\n" not in message


def test_top_level_shapes(tmp_path):
    cases = {"empty.yaml": ("", "is empty"), "list.yaml": ("- a\n- b\n", "got a list"),
             "broken.yaml": ("study: {name: [\n", "not valid YAML at line"),
             "unknown.yaml": ("space: {family: mixer}\nsapce: 1\n", "sapce: unknown key")}
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert str(info.value).startswith(str(path)), info.value
        assert expected in str(info.value)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_bundled_specs_parse():
    spec = load_spec("spaces/mnist.yaml")
    assert spec.study.name == "mnist-mixer"
    assert spec.objectives == ("accuracy", "params", "latency")
    assert (spec.data.train_size, spec.data.val_size, spec.data.test_size) == (10000, 2000, 2500)
    assert spec.space.choices["patch_size"] == Categorical((2, 4, 7))
    assert spec.space.choices["dilation"] == Categorical((1, 2, 3))
