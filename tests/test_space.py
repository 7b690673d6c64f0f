"""The Mixer space: sharing plans, token counts, corner archs, space size and the canonical hash."""

import optuna
import pytest

from mixsearch.arch import MixerArch, arch_from_dict, arch_hash, token_grid
from mixsearch.errors import ArchError
from mixsearch.models import build_model, count_params
from mixsearch.space import CornerTrial, corner_archs, count_space, sharing_groups
from mixsearch.spec import parse_spec

MNIST = (1, 28, 28)


@pytest.mark.parametrize("patch, dilation, tokens", [
    (4, 1, 49), (4, 2, 16), (7, 1, 16), (2, 1, 196), (2, 3, 49), (7, 3, 4), (14, 1, 4), (28, 1, 1),
])
def test_token_counts(patch, dilation, tokens):
    rows, cols = token_grid((28, 28), patch, dilation)
    assert rows * cols == tokens


def test_patch_wider_than_image_is_impossible():
    with pytest.raises(ArchError, match="spans 31 pixels"):
        token_grid((28, 28), 7, 5)


@pytest.mark.parametrize("mode, size, ties, groups", [
    ("none", 2, None, (0, 1, 2, 3)),
    ("all", 2, None, (0, 0, 0, 0)),
    ("group", 2, None, (0, 0, 1, 1)),
    ("group", 3, None, (0, 0, 0, 1)),
    ("tie", 2, [False, False, True], (0, 1, 2, 2)),  # only layers 3-4 share
    ("tie", 2, [True, False, True], (0, 0, 1, 1)),
])
def test_sharing_groups(mode, size, ties, groups):
    assert sharing_groups(mode, 4, size, ties) == groups


def spec_with(space):
    return parse_spec({"space": {"family": "mixer", **space}}, "t.yaml")


def test_sites_pattern_limits_sharing_to_token_mlps():
    spec = spec_with({"layers": 3, "sharing": {"sites": ["token"], "mode": "all"}})
    arch = spec.space.sample(CornerTrial(0), MNIST, 10)
    assert arch.sharing["token.fc1"] == (0, 0, 0) and arch.sharing["token.fc2"] == (0, 0, 0)
    assert arch.sharing["channel.fc1"] == (0, 1, 2) and arch.sharing["channel.fc2"] == (0, 1, 2)


def test_only_fc2_can_be_shared():
    spec = spec_with({"layers": 2, "sharing": {"sites": ["fc2"], "mode": "all", "bias": "separate"}})
    arch = spec.space.sample(CornerTrial(0), MNIST, 10)
    assert {s for s, g in arch.sharing.items() if g == (0, 0)} == {"token.fc2", "channel.fc2"}
    assert arch.bias["token.fc2"] == "separate"
    model = build_model(arch)
    # Saved: one weight per fc2 site (S x Ds and C x Dc); each layer keeps its own bias.
    unshared = build_model(arch_from_dict({**arch.to_dict(), "sharing": {}, "bias": {}}))
    saved = count_params(unshared) - count_params(model)
    assert saved == 49 * 64 + 32 * 64


def test_real_optuna_trial_samples_valid_archs():
    spec = spec_with({"layers": [1, 4], "patch_size": [4, 7], "dilation": [1, 2],
                      "sharing": {"mode": ["none", "all", "group", "tie"], "bias": ["tied", "separate"]}})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(30):
        trial = study.ask()
        arch = spec.space.sample(trial, MNIST, 10)
        assert arch_from_dict(arch.to_dict()) == arch  # round trip through the dict form
        for groups in arch.sharing.values():
            assert len(groups) == arch.layers
        study.tell(trial, [0.0, 0.0])


def test_corner_archs_cover_each_extreme():
    spec = spec_with({"layers": [2, 4], "patch_size": [4, 7], "channels": {"low": 8, "high": 32, "step": 8}})
    corners = corner_archs(spec.space, MNIST, 10)
    archs = [c.arch for c in corners]
    assert {a.layers for a in archs} == {2, 4}
    assert {a.patch_size for a in archs} == {4, 7}
    assert {a.channels for a in archs} == {8, 32}
    assert corners[0].label == "all low" and corners[1].label == "all high"


def test_corner_archs_report_impossible_combinations():
    spec = spec_with({"patch_size": [4, 7], "dilation": [1, 5]})
    errors = [c.error for c in corner_archs(spec.space, MNIST, 10) if c.arch is None]
    assert errors and "spans 31 pixels" in errors[0]


def test_space_size_counts_conditional_parameters():
    # layers 2: modes none/all/group/tie(1 flag, 2 values) -> 5 plans; bias asked only when shared.
    # none: 1; all: 2 biases; group(size 2): 2 biases; tie: no-tie 1 + tie 2 biases = 3 -> 8 per site.
    spec = spec_with({"layers": 2, "sharing": {"sites": ["token.fc1"], "mode": ["none", "all", "group", "tie"],
                                               "group_size": [2], "bias": ["tied", "separate"]}})
    assert count_space(spec.space, MNIST, 10) == 8
    spec = spec_with({"layers": [1, 2], "channels": [8, 16, 32]})
    assert count_space(spec.space, MNIST, 10) == 2 * 3
    spec = spec_with({"layers": 2, "sharing": {"sites": ["token.fc1", "channel.fc2"], "mode": ["none", "all"]}})
    assert count_space(spec.space, MNIST, 10) == 2 * 2  # bias fixed to tied by default
    spec = spec_with({"layers": 2, "sharing": {"sites": ["token.fc1", "channel.fc2"], "mode": ["none", "all"],
                                               "bias": ["tied", "separate"]}})
    assert count_space(spec.space, MNIST, 10) == 3 * 3  # none | all(tied, separate), per site


def test_canonical_hash_ignores_unused_degrees_of_freedom():
    base = dict(in_channels=1, image_size=(28, 28), num_classes=10, layers=2, channels=8,
                token_hidden=8, channel_hidden=8, patch_size=4)
    a = MixerArch(**base, sharing={"token.fc1": (0, 1)}, bias={"token.fc1": "separate"})
    b = MixerArch(**base, sharing={"token.fc1": (5, 9)}, bias={"token.fc1": "tied"})
    assert arch_hash(a) == arch_hash(b)  # nothing shared: group labels and bias mode do not matter
    c = MixerArch(**base, sharing={"token.fc1": (3, 3)}, bias={"token.fc1": "tied"})
    d = MixerArch(**base, sharing={"token.fc1": (0, 0)}, bias={"token.fc1": "separate"})
    assert arch_hash(c) != arch_hash(d)
    assert arch_hash(c) == arch_hash(MixerArch(**base, sharing={"token.fc1": (0, 0)}))
    assert arch_hash(a) != arch_hash(MixerArch(**{**base, "channels": 16}))


def test_mobilenet_widths_give_each_block_its_width():
    from mixsearch.enqueue import _AnsweringTrial
    from mixsearch.spec import load_spec

    spec = load_spec("spaces/fusion.yaml")
    entry = spec.enqueue[0]
    arch = spec.space.sample(_AnsweringTrial(entry, spec.source, check=False), (1, 28, 28), 10)
    assert [block.out_channels for block in arch.blocks] == [32, 64, 64, 128]
