"""Models: shapes, sharing and parameter counts by hand, exact inference forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixsearch.arch import BlockArch, MixerArch, MobileNetArch
from mixsearch.errors import ArchError
from mixsearch.models import build_model, count_params, inference_model, raft_token_params
from mixsearch.models.blocks import fold_bn
from mixsearch.models.mixer import RaftTokenMixing
from mixsearch.models.mobilenet import MobileBlock

torch.set_num_threads(2)


def mnist_mixer(**overrides) -> MixerArch:
    fields = dict(in_channels=1, image_size=(28, 28), num_classes=10, layers=4, channels=16,
                  token_hidden=24, channel_hidden=32, patch_size=4)
    fields.update(overrides)
    return MixerArch(**fields)


# --------------------------------------------------------------------------- Mixer


@pytest.mark.parametrize("patch_size, dilation, tokens", [(4, 1, 49), (4, 2, 16), (7, 1, 16)])
def test_mixer_token_grid_and_output(patch_size, dilation, tokens):
    model = build_model(mnist_mixer(patch_size=patch_size, dilation=dilation))
    images = torch.randn(2, 1, 28, 28)
    assert model.patch_embed(images).shape == (2, tokens, 16)
    assert model(images).shape == (2, 10)


def test_dilated_patch_samples_every_dth_pixel():
    """P4 d2 spans 7 pixels; the first token sees only rows/cols 0, 2, 4, 6 of the first 7x7."""
    model = build_model(mnist_mixer(patch_size=4, dilation=2))
    images = torch.zeros(1, 1, 28, 28)
    base = model.patch_embed(images)[0, 0]
    images[0, 0, 1, 1] = 5.0   # between sampled pixels: invisible
    assert torch.equal(model.patch_embed(images)[0, 0], base)
    images[0, 0, 2, 4] = 5.0   # a sampled pixel
    assert not torch.equal(model.patch_embed(images)[0, 0], base)


# Per-site sizes of the arch above (S = 49, C = 16, D_S = 24, D_C = 32): (weight, bias).
SITE_SIZES = {"token.fc1": (49 * 24, 24), "token.fc2": (24 * 49, 49),
              "channel.fc1": (16 * 32, 32), "channel.fc2": (32 * 16, 16)}
# patch conv 1·16·4·4 + 16, two LayerNorms per layer 4·(2·16+2·16), final LN 2·16, head 16·10+10
MIXER_BASE = (256 + 16) + 4 * 64 + 32 + 170
ALL = {site: (4, 4) for site in SITE_SIZES}


@pytest.mark.parametrize("sharing, bias, distinct", [
    ({}, {}, ALL),
    ({s: (0, 0, 0, 0) for s in SITE_SIZES}, {}, {s: (1, 1) for s in SITE_SIZES}),
    ({s: (0, 0, 1, 1) for s in SITE_SIZES}, {}, {s: (2, 2) for s in SITE_SIZES}),
    ({"token.fc2": (0, 0, 0, 0)}, {}, {**ALL, "token.fc2": (1, 1)}),
    ({s: (0, 0, 0, 0) for s in SITE_SIZES}, {s: "separate" for s in SITE_SIZES},
     {s: (1, 4) for s in SITE_SIZES}),
    ({s: (0, 1, 2, 2) for s in SITE_SIZES}, {}, {s: (3, 3) for s in SITE_SIZES}),
], ids=["none", "all", "pairs", "token-fc2", "separate-bias", "layers-3-4"])
def test_mixer_unique_params(sharing, bias, distinct):
    """``distinct`` gives, per site, how many weight and bias Parameters the plan leaves."""
    model = build_model(mnist_mixer(sharing=sharing, bias=bias))
    expected = MIXER_BASE + sum(n_w * SITE_SIZES[s][0] + n_b * SITE_SIZES[s][1]
                                for s, (n_w, n_b) in distinct.items())
    assert count_params(model) == expected


def test_shared_sites_hold_the_same_parameter_object():
    arch = mnist_mixer(sharing={"token.fc1": (0, 0, 1, 1)}, bias={"token.fc1": "separate"})
    layers = build_model(arch).layers
    fc1 = [layer.token_mixing.mlp.fc1 for layer in layers]
    assert fc1[0].weight is fc1[1].weight and fc1[2].weight is fc1[3].weight
    assert fc1[1].weight is not fc1[2].weight
    assert len({id(f.bias) for f in fc1}) == 4
    fc2 = [layer.token_mixing.mlp.fc2 for layer in layers]
    assert len({id(f.weight) for f in fc2}) == 4


def test_shared_weight_gets_one_update_seen_by_all_layers():
    model = build_model(mnist_mixer(sharing={"channel.fc2": (0, 0, 0, 0)}))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    weights = [layer.channel_mlp.fc2.weight for layer in model.layers]
    assert all(w is weights[0] for w in weights)


def test_mixer_init_depends_only_on_global_seed():
    arch = mnist_mixer(sharing={"token.fc1": (0, 0, 1, 1)})
    torch.manual_seed(7)
    first = build_model(arch).state_dict()
    torch.manual_seed(7)
    second = build_model(arch).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


RAFT = dict(patch_size=4, dilation=2, token_mixing="raft", raft_size=2, token_hidden=8)
RAFT_SITES = ("token.vertical.fc1", "token.vertical.fc2", "token.horizontal.fc1",
              "token.horizontal.fc2")
CHANNEL_MLP = 2 * 16 * 32 + 32 + 16


def test_raft_token_params_formula():
    # grid 4x4, r = 2: r·h = 8; per direction 2·8·8 + 8 + 8 = 144
    assert raft_token_params(mnist_mixer(**RAFT)) == 288


def test_raft_mixer_params_match_formula():
    arch = mnist_mixer(**RAFT)
    model = build_model(arch)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert count_params(model) == MIXER_BASE + 4 * (raft_token_params(arch) + CHANNEL_MLP)


def test_raft_mixer_params_with_shared_vertical_fc1():
    arch = mnist_mixer(**RAFT, sharing={"token.vertical.fc1": (0, 0, 0, 0)})
    saved = 3 * (8 * 8 + 8)   # three copies of vertical fc1 (8→8 weight, 8 bias) disappear
    expected = MIXER_BASE + 4 * (raft_token_params(arch) + CHANNEL_MLP) - saved
    assert count_params(build_model(arch)) == expected


def test_raft_mixing_matches_column_and_row_loops():
    """Vertical MLP over (column, raft) vectors of r·h features, then horizontal over rows."""
    torch.manual_seed(0)
    h = w = 3
    r, channels = 2, 4
    vertical = nn.Sequential(nn.Linear(r * h, 5), nn.GELU(), nn.Linear(5, r * h))
    horizontal = nn.Sequential(nn.Linear(r * w, 5), nn.GELU(), nn.Linear(5, r * w))
    mixing = RaftTokenMixing(vertical, horizontal, (h, w), r)
    x = torch.randn(2, h * w, channels)

    grid = x.reshape(2, h, w, channels).clone()
    for j in range(w):
        for g in range(channels // r):
            column = grid[:, :, j, g * r:(g + 1) * r].reshape(2, h * r)
            grid[:, :, j, g * r:(g + 1) * r] = vertical(column).reshape(2, h, r)
    for i in range(h):
        for g in range(channels // r):
            row = grid[:, i, :, g * r:(g + 1) * r].reshape(2, w * r)
            grid[:, i, :, g * r:(g + 1) * r] = horizontal(row).reshape(2, w, r)
    torch.testing.assert_close(mixing(x), grid.reshape(2, h * w, channels))


def test_mixer_inference_form_is_an_eval_copy_keeping_sharing():
    model = build_model(mnist_mixer(sharing={s: (0, 0, 0, 0) for s in SITE_SIZES}))
    folded = inference_model(model)
    assert model.training and not folded.training
    assert count_params(folded) == count_params(model)
    assert folded.layers[0].channel_mlp.fc1.weight is folded.layers[3].channel_mlp.fc1.weight
    assert folded.layers[0].channel_mlp.fc1.weight is not model.layers[0].channel_mlp.fc1.weight
    images = torch.randn(3, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(folded(images), model(images))


def test_build_model_validates_the_arch():
    with pytest.raises(ArchError):
        build_model(mnist_mixer(token_mixing="raft", raft_size=3))   # 3 does not divide 16


# --------------------------------------------------------------------------- MobileNet


def randomize_batchnorm(model: nn.Module) -> None:
    """Give every BN statistics and an affine map far from the identity it starts as."""
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.5)


def assert_same_output(model: nn.Module, images: torch.Tensor) -> nn.Module:
    randomize_batchnorm(model)
    model.eval()
    folded = model.inference_form()
    with torch.no_grad():
        expected, actual = model(images), folded(images)
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() < 1e-4 * scale
    return folded


@pytest.mark.parametrize("mode", ["separable", "linear", "fused"])
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_block_inference_form_matches(mode, kernel_size, stride):
    torch.manual_seed(0)
    block = MobileBlock(6, BlockArch(10, kernel_size, stride, mode))
    folded = assert_same_output(block, torch.randn(2, 6, 11, 11))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def test_linear_block_composes_into_one_conv():
    block = MobileBlock(6, BlockArch(10, 5, 2, "linear"))
    folded = assert_same_output(block, torch.randn(2, 6, 9, 9))
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1
    conv = convs[0]
    assert (conv.in_channels, conv.out_channels, conv.groups) == (6, 10, 1)
    assert conv.kernel_size == (5, 5) and conv.stride == (2, 2) and conv.bias is not None
    # no 6-channel intermediate: the only tensor made inside the block is the 10-channel output
    shapes = []
    for module in folded:
        module.register_forward_hook(lambda mod, inp, out: shapes.append(out.shape[1]))
    folded(torch.randn(1, 6, 9, 9))
    assert shapes == [10, 10]


def test_separable_block_keeps_two_convs():
    folded = MobileBlock(6, BlockArch(10, 3, 1, "separable")).eval().inference_form()
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [6, 1]
    assert sum(isinstance(m, nn.ReLU) for m in folded.modules()) == 2


def small_mobilenet() -> MobileNetArch:
    return MobileNetArch(in_channels=3, image_size=(16, 16), num_classes=10, stem_channels=8,
                         blocks=(BlockArch(16, 3, 2, "linear"), BlockArch(24, 5, 1, "separable"),
                                 BlockArch(32, 3, 2, "fused")))


def test_mobilenet_forward_and_inference_form_matches():
    torch.manual_seed(0)
    model = build_model(small_mobilenet())
    images = torch.randn(4, 3, 16, 16)
    assert model(images).shape == (4, 10)
    folded = assert_same_output(model, images)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # the training model is left as it was
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_inference_form_does_not_change_training_mode():
    model = build_model(small_mobilenet())
    inference_model(model)
    assert all(m.training for m in model.modules())


def test_mobilenet_params_by_hand():
    model = build_model(small_mobilenet())
    # training form: conv weights + 2 per BN channel
    stem = 3 * 8 * 9 + 2 * 8
    linear = (8 * 9 + 2 * 8) + (8 * 16 + 2 * 16)
    separable = (16 * 25 + 2 * 16) + (16 * 24 + 2 * 24)
    fused = 24 * 32 * 9 + 2 * 32
    head = 32 * 10 + 10
    assert count_params(model) == stem + linear + separable + fused + head == 8650
    # inference form: BN becomes a conv bias; the linear block is one 3x3 conv 8→16
    stem = 3 * 8 * 9 + 8
    linear = 8 * 16 * 9 + 16
    separable = (16 * 25 + 16) + (16 * 24 + 24)
    fused = 24 * 32 * 9 + 32
    assert count_params(inference_model(model)) == stem + linear + separable + fused + head == 9490


def test_fold_bn_keeps_modes_of_its_inputs():
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
    fold_bn(conv, bn)
    assert conv.training and bn.training
