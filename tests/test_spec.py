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


SHARING_SPACE = {"family": "mixer", "layers": 4,
                 "sharing": {"sites": ["all"], "mode": ["none", "all", "tie"], "bias": ["tied", "separate"]}}


def enqueue(*entries, space=SHARING_SPACE, train=None):
    return parse(study={"enqueue": list(entries)}, space=space, **({"train": train} if train else {}))


def test_enqueue_entries_become_the_params_the_space_samples():
    spec = enqueue({"label": "token", "space": {"sharing": {"sites": ["token"], "mode": "all", "bias": "separate"}}},
                   {"space": {"sharing": {"mode": "none"}}},
                   {"space": {"sharing": {"sites": ["fc2"], "mode": "tie", "ties": [False, True, True], "bias": "tied"}}})
    token, none, fc2_tie = spec.enqueued_params()
    assert spec.enqueue[0].label == "token" and spec.enqueue[1].label is None
    assert token == {"sharing.token.fc1.mode": "all", "sharing.token.fc1.bias": "separate",
                     "sharing.token.fc2.mode": "all", "sharing.token.fc2.bias": "separate",
                     "sharing.channel.fc1.mode": "none", "sharing.channel.fc2.mode": "none"}
    assert set(none.values()) == {"none"} and len(none) == 4
    assert fc2_tie["sharing.channel.fc2.mode"] == "tie" and fc2_tie["sharing.token.fc1.mode"] == "none"
    assert [fc2_tie[f"sharing.token.fc2.tie.{layer}"] for layer in (1, 2, 3)] == [False, True, True]
    # Replaying the params through the space gives the entry's arch: layers 2-4 share fc2.
    from mixsearch.space import CornerTrial
    arch = spec.space.sample(CornerTrial(0, fc2_tie), (1, 28, 28), 10)
    assert arch.sharing["token.fc2"] == (0, 1, 1, 1) and arch.sharing["token.fc1"] == (0, 1, 2, 3)


def test_enqueue_train_and_mobilenet_fusion_entries():
    spec = enqueue({"space": {"channels": 32, "sharing": {"mode": "none"}}, "train": {"lr": 0.01}},
                   space={**SHARING_SPACE, "channels": [16, 32]}, train={"lr": [0.003, 0.01]})
    assert spec.enqueued_params() == [{"channels": 32, **{f"sharing.{s}.mode": "none" for s in
                                       ("token.fc1", "token.fc2", "channel.fc1", "channel.fc2")}, "train.lr": 0.01}]
    spec = parse(study={"enqueue": [{"space": {"fusion": {"strategy": "first_k", "first_k": 2, "mode": "separable"}}}]},
                 space={"family": "mobilenet", "blocks": 3, "width": 8, "strides": "1,2,1",
                        "fusion": {"strategy": ["uniform", "first_k"], "mode": ["separable", "fused"], "first_k": [1, 2]}})
    assert spec.enqueued_params() == [{"fusion.strategy": "first_k", "fusion.first_k": 2, "block2.mode": "separable"}]


@pytest.mark.parametrize("entry, field, problem", [
    ({"space": {"sharing": {"mode": "all"}}}, "study.enqueue[0].space.sharing.bias",
     "is not fixed (options tied, separate); an enqueued entry needs one value"),
    ({"space": {"sharing": {"mode": "group"}}}, "study.enqueue[0].space.sharing.mode",
     "'group' is outside the space's sharing.token.fc1.mode (one of none, all, tie)"),
    ({"space": {"sharing": {"mode": "tie", "bias": "tied"}}}, "study.enqueue[0].space.sharing.ties",
     "mode tie needs ties"),
    ({"space": {"channels": 16, "sharing": {"mode": "none"}}}, "study.enqueue[0].space",
     "is not a point of the space (the space builds 'mixer L4 C32"),
    ({"space": {"sharing": {"mode": "none"}}, "train": {"lr": 0.1}}, "study.enqueue[0].train.lr",
     "0.1 is not a point of the space (its train.lr is 0.003)"),
    ({"space": {"patch_size": 29, "sharing": {"mode": "none"}}}, "study.enqueue[0]", "impossible arch: patch_size 29"),
    ({"colour": 1}, "study.enqueue[0].colour", "unknown key; allowed: label, space, train"),
    ("none", "study.enqueue[0]", "must be a mapping with keys label, space, train"),
    ({"space": {"family": "mobilenet"}}, "study.enqueue[0].space.family", "must be the spec's family mixer"),
])
def test_enqueue_errors_name_the_entry_field(entry, field, problem):
    with pytest.raises(SpecError) as info:
        enqueue(entry)
    assert str(info.value).startswith(f"test.yaml: {field}: {problem}"), info.value
