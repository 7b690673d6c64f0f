"""MLP-Mixer (arXiv 2105.01601) with dilated patches, cross-layer sharing and raft token mixing.

Pre-LayerNorm layers: ``U = X + TokenMix(LN(X))``, ``Y = U + ChannelMLP(LN(U))``. Each linear map
of a layer is a *site* (``token.fc1``, ``channel.fc2``, ...); the arch's sharing plan says which
layers hold the same Parameter at each site, so a plan is built once per site, across all layers,
before the layers are assembled.

The layers keep their activations token-major, (S, B, C), rather than the usual (B, S, C): then
token mixing is an S × (B·C) matrix with the weight on the left and channel mixing an (S·B) × C
matrix with the weight on the right, both one matmul with the bias fused and neither needing a
transpose. At MNIST sizes the transposes and copies of the usual layout cost about as much as the
matmuls themselves (docs/performance.md).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import MixerArch, patch_span
from .blocks import MLP, SharedLinear, shared_linears


@torch.fx.wrap  # one opaque call when traced (measure.memory): its branch depends on the input's size
def pad_to_span(x: torch.Tensor, span: int) -> torch.Tensor:
    """Zero-pad the right and bottom of ``x`` to a multiple of ``span`` pixels."""
    height, width = x.shape[-2:]
    if height % span or width % span:
        x = F.pad(x, (0, -width % span, 0, -height % span))
    return x


class PatchEmbed(nn.Module):
    """Non-overlapping dilated patches → one C-dim token each, in row-major order.

    A patch samples P×P pixels at dilation d and covers a span of (P−1)·d+1 pixels; the stride is
    the span so that no pixel feeds two tokens. The image is zero-padded on the right and bottom
    to a multiple of the span, which is what ``arch.token_grid`` counts.

    The patches do not overlap, so the convolution is a gather of their pixels and one matmul
    with the conv's weight: cheaper than a strided convolution's backward pass, and the tokens
    come out token-major, as the layers want them.
    """

    def __init__(self, in_channels: int, channels: int, patch_size: int, dilation: int = 1):
        super().__init__()
        self.dilation = dilation
        self.span = patch_span(patch_size, dilation)
        self.proj = nn.Conv2d(in_channels, channels, kernel_size=patch_size, dilation=dilation,
                              stride=self.span)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → (B, S, C), a view of a token-major (S, B, C) tensor."""
        batch, in_channels, height, width = x.shape
        span, step = self.span, self.dilation
        x = pad_to_span(x, span)
        rows, cols = x.shape[-2] // span, x.shape[-1] // span
        # (B, C_in, rows, span, cols, span) → the sampled P×P pixels of each patch → (rows, cols, B, C_in, P, P)
        patches = x.reshape(batch, in_channels, rows, span, cols, span)[:, :, :, ::step, :, ::step]
        patches = patches.permute(2, 4, 0, 1, 3, 5).reshape(rows * cols * batch, -1)
        tokens = F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)
        return tokens.view(rows * cols, batch, -1).transpose(0, 1)


class FullTokenMixing(nn.Module):
    """One MLP over all S tokens, applied per channel: ``W2·GELU(W1·X + b1) + b2``.

    Takes token-major activations (S, B, C), seen as one S × (B·C) matrix X.
    """

    token_major = True

    def __init__(self, mlp: MLP):
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, batch, channels = x.shape
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        hidden = self.mlp.act(torch.addmm(fc1.bias[:, None], fc1.weight, x.reshape(tokens, batch * channels)))
        return torch.addmm(fc2.bias[:, None], fc2.weight, hidden).view(tokens, batch, channels)


class RaftTokenMixing(nn.Module):
    """RaftMLP (arXiv 2108.04384): a vertical then a horizontal MLP over rafts of r channels.

    The C channels are cut into C/r rafts. The vertical MLP sees, for one column and one raft, the
    h tokens × r channels as one vector of r·h features; the horizontal MLP likewise sees one row:
    r·w features. Both are far smaller than an MLP over all h·w tokens. Takes (B, S, C): its own
    permutes copy the activations anyway.
    """

    token_major = False

    def __init__(self, vertical: MLP, horizontal: MLP, grid: tuple[int, int], raft_size: int):
        super().__init__()
        self.vertical = vertical
        self.horizontal = horizontal
        self.rows, self.cols = grid
        self.raft_size = raft_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        r, h, w = self.raft_size, self.rows, self.cols
        x = x.reshape(batch, h, w, channels // r, r)
        # vertical: (B, w, rafts, h·r)
        x = x.permute(0, 2, 3, 1, 4).reshape(batch, w, channels // r, h * r)
        x = self.vertical(x).reshape(batch, w, channels // r, h, r)
        # horizontal: (B, h, rafts, w·r)
        x = x.permute(0, 3, 2, 1, 4).reshape(batch, h, channels // r, w * r)
        x = self.horizontal(x).reshape(batch, h, channels // r, w, r)
        return x.permute(0, 1, 3, 2, 4).reshape(batch, tokens, channels)


class MixerLayer(nn.Module):
    def __init__(self, channels: int, token_mixing: nn.Module, channel_mlp: MLP):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.token_mixing = token_mixing
        self.norm2 = nn.LayerNorm(channels)
        self.channel_mlp = channel_mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(S, B, C) → (S, B, C)."""
        mixed = self.norm1(x)
        if self.token_mixing.token_major:
            mixed = self.token_mixing(mixed)
        else:
            mixed = self.token_mixing(mixed.transpose(0, 1)).transpose(0, 1)
        x = x + mixed
        return x + self.channel_mlp(self.norm2(x))


def site_features(arch: MixerArch) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of the linear map at each sharing site of one layer."""
    d_s, d_c, c = arch.token_hidden, arch.channel_hidden, arch.channels
    features = {"channel.fc1": (c, d_c), "channel.fc2": (d_c, c)}
    if arch.token_mixing == "raft":
        rows, cols = arch.grid
        r = arch.raft_size
        features.update({
            "token.vertical.fc1": (r * rows, d_s), "token.vertical.fc2": (d_s, r * rows),
            "token.horizontal.fc1": (r * cols, d_s), "token.horizontal.fc2": (d_s, r * cols),
        })
    else:
        s = arch.num_tokens
        features.update({"token.fc1": (s, d_s), "token.fc2": (d_s, s)})
    return features


def raft_token_params(arch: MixerArch) -> int:
    """Token-mixing parameters of one raft layer before sharing (weights and biases).

    vertical 2·(r·h)·D_S + D_S + r·h, plus horizontal 2·(r·w)·D_S + D_S + r·w.
    """
    rows, cols = arch.grid
    r, d_s = arch.raft_size, arch.token_hidden
    return sum(2 * (r * n) * d_s + d_s + r * n for n in (rows, cols))


class MLPMixer(nn.Module):
    """The network a ``MixerArch`` describes: patches → Mixer layers → LN → mean → head."""

    def __init__(self, arch: MixerArch):
        super().__init__()
        self.arch = arch
        self.patch_embed = PatchEmbed(arch.in_channels, arch.channels, arch.patch_size,
                                      arch.dilation)
        features = site_features(arch)
        maps: dict[str, list[SharedLinear]] = {
            site: shared_linears(arch.sharing[site], arch.bias[site], *features[site])
            for site in arch.sites
        }
        self.layers = nn.Sequential(*(
            MixerLayer(arch.channels, self._token_mixing(arch, maps, i),
                       MLP(maps["channel.fc1"][i], maps["channel.fc2"][i]))
            for i in range(arch.layers)
        ))
        self.norm = nn.LayerNorm(arch.channels)
        self.head = nn.Linear(arch.channels, arch.num_classes)

    @staticmethod
    def _token_mixing(arch: MixerArch, maps: dict[str, list[SharedLinear]], i: int) -> nn.Module:
        if arch.token_mixing == "raft":
            vertical = MLP(maps["token.vertical.fc1"][i], maps["token.vertical.fc2"][i])
            horizontal = MLP(maps["token.horizontal.fc1"][i], maps["token.horizontal.fc2"][i])
            return RaftTokenMixing(vertical, horizontal, arch.grid, arch.raft_size)
        return FullTokenMixing(MLP(maps["token.fc1"][i], maps["token.fc2"][i]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.patch_embed(x).transpose(0, 1))   # (S, B, C), contiguous
        return self.head(self.norm(x).mean(dim=0))

    def inference_form(self) -> "MLPMixer":
        # Nothing to fold: LayerNorm depends on each input, so it cannot merge into the linears.
        # deepcopy keeps the sharing (one Parameter copied once, referenced by every layer).
        return copy.deepcopy(self).eval()
