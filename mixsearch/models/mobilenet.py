"""MobileNet-V1-style networks whose depthwise-separable blocks can be fused.

A block trains in one of three modes (``BlockArch.mode``):

- ``separable``: depthwise k×k → BN → ReLU → pointwise 1×1 → BN → ReLU (MobileNet V1).
- ``linear``: the same without the ReLU in the middle. It trains factorized (k²·N + N·M weights)
  but, with nothing nonlinear between them, the two convolutions compose into one k×k conv for
  inference, so the N-channel intermediate activation is never written to memory.
- ``fused``: one regular k×k conv N→M (EfficientNetV2's Fused-MBConv without expansion).

``inference_form()`` folds every BatchNorm into its conv and composes the linear blocks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..arch import BlockArch, MobileNetArch
from .blocks import ConvBNAct, compose_depthwise_pointwise


class MobileBlock(nn.Sequential):
    """One block as a sequence of ``ConvBNAct`` units, in the layout its mode trains with."""

    def __init__(self, in_channels: int, block: BlockArch):
        k, s, m = block.kernel_size, block.stride, block.out_channels
        if block.mode == "fused":
            units = [ConvBNAct(in_channels, m, k, s)]
        else:
            units = [
                ConvBNAct(in_channels, in_channels, k, s, groups=in_channels,
                          activation=block.mode == "separable"),
                ConvBNAct(in_channels, m, 1),
            ]
        super().__init__(*units)
        self.mode = block.mode

    def inference_form(self) -> nn.Sequential:
        if self.mode != "linear":
            return nn.Sequential(*(layer for unit in self for layer in unit.inference_form())).eval()
        depthwise, pointwise = self
        conv = compose_depthwise_pointwise(depthwise.folded_conv(), pointwise.folded_conv())
        return nn.Sequential(conv, nn.ReLU(inplace=True)).eval()


class MobileNet(nn.Module):
    """The network a ``MobileNetArch`` describes: stem → blocks → global average pool → head."""

    def __init__(self, arch: MobileNetArch):
        super().__init__()
        self.arch = arch
        layers: list[nn.Module] = [ConvBNAct(arch.in_channels, arch.stem_channels, 3,
                                             arch.stem_stride)]
        channels = arch.stem_channels
        for block in arch.blocks:
            layers.append(MobileBlock(channels, block))
            channels = block.out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))

    def inference_form(self) -> "MobileNet":
        """An eval-mode copy with BN folded and linear blocks composed; ``self`` is untouched.

        Applying it again is harmless: folded layers have no ``inference_form`` and are kept.
        """
        folded = copy.deepcopy(self).eval()
        folded.features = nn.Sequential(*(
            layer.inference_form() if hasattr(layer, "inference_form") else layer
            for layer in folded.features
        ))
        return folded.eval()
