"""Building blocks shared by the model families.

Two concerns live here: linear maps whose Parameters can be shared across layers (Mixer weight
sharing), and conv-BN-activation units that fold into plain convolutions for inference
(MobileNet layer fusion).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


# --------------------------------------------------------------------------- shared linear maps


def linear_weight(in_features: int, out_features: int) -> nn.Parameter:
    """A weight initialised like ``nn.Linear``'s, so a shared map starts like an unshared one."""
    weight = torch.empty(out_features, in_features)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return nn.Parameter(weight)


def linear_bias(in_features: int, out_features: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(in_features)
    return nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))


class SharedLinear(nn.Module):
    """``F.linear`` over Parameters that other ``SharedLinear`` modules may hold too.

    Sharing the Parameter *object* (not a copy) is what makes a shared weight one set of numbers:
    ``model.parameters()`` yields it once, the optimizer updates it once, and every layer of the
    group sees the update.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None):
        super().__init__()
        self.weight = weight
        self.bias = bias

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def shared_linears(groups: tuple[int, ...], bias_mode: str, in_features: int,
                   out_features: int) -> list[SharedLinear]:
    """One ``SharedLinear`` per layer; layers with the same group id share the weight.

    ``bias_mode`` "tied" shares the bias along with the weight; "separate" gives every layer its
    own bias, so a group can share a weight and still shift each layer differently.
    """
    weights: dict[int, nn.Parameter] = {}
    tied_biases: dict[int, nn.Parameter] = {}
    maps = []
    for group in groups:
        if group not in weights:
            weights[group] = linear_weight(in_features, out_features)
        if bias_mode == "separate":
            bias = linear_bias(in_features, out_features)
        else:
            if group not in tied_biases:
                tied_biases[group] = linear_bias(in_features, out_features)
            bias = tied_biases[group]
        maps.append(SharedLinear(weights[group], bias))
    return maps


class MLP(nn.Module):
    """fc1 → GELU → fc2 over the last axis, the MLP of both Mixer halves."""

    def __init__(self, fc1: nn.Module, fc2: nn.Module):
        super().__init__()
        self.fc1 = fc1
        self.act = nn.GELU()
        self.fc2 = fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# --------------------------------------------------------------------------- conv units and folding


class ConvBNAct(nn.Sequential):
    """Conv (no bias: BN supplies the shift) → BatchNorm → ReLU or nothing.

    ``padding = kernel_size // 2`` keeps "same" geometry for odd kernels, so a stride-s unit
    maps n pixels to ceil(n / s).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, activation: bool = True):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True) if activation else nn.Identity(),
        )

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]

    @property
    def act(self) -> nn.Module:
        return self[2]

    def folded_conv(self) -> nn.Conv2d:
        """The conv with the BN's eval-mode affine map folded into its weight and bias."""
        return fold_bn(self.conv, self.bn)

    def inference_form(self) -> nn.Sequential:
        return nn.Sequential(self.folded_conv(), _copy_activation(self.act)).eval()


def _copy_activation(act: nn.Module) -> nn.Module:
    return nn.ReLU(inplace=True) if isinstance(act, nn.ReLU) else nn.Identity()


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv equal to ``bn(conv(x))`` with BN in eval mode (running statistics).

    Works from the weights rather than ``fuse_conv_bn_eval`` so that the modules passed in keep
    their train/eval mode.
    """
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return fused.eval()


def compose_depthwise_pointwise(depthwise: nn.Conv2d, pointwise: nn.Conv2d) -> nn.Conv2d:
    """One k×k conv equal to ``pointwise(depthwise(x))`` when nothing nonlinear sits between.

    W[m, n] = Wp[m, n] · Wd[n] and b = bp + Wp · bd. This is exact even at the borders: the
    depthwise bias is added at every output position, padded or not, so it passes through the
    pointwise map as a constant.
    """
    in_channels = depthwise.in_channels
    if depthwise.groups != in_channels or depthwise.out_channels != in_channels:
        raise ValueError("the first conv must be depthwise with one filter per input channel")
    if pointwise.kernel_size != (1, 1) or pointwise.stride != (1, 1) or pointwise.groups != 1:
        raise ValueError("the second conv must be a plain 1x1 conv")
    wd = depthwise.weight[:, 0]                      # (N, k, k)
    wp = pointwise.weight[:, :, 0, 0]                # (M, N)
    bd = _bias_or_zeros(depthwise)
    bp = _bias_or_zeros(pointwise)
    fused = nn.Conv2d(in_channels, pointwise.out_channels, depthwise.kernel_size,
                      stride=depthwise.stride, padding=depthwise.padding,
                      dilation=depthwise.dilation, bias=True,
                      device=depthwise.weight.device, dtype=depthwise.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(wp[:, :, None, None] * wd[None])
        fused.bias.copy_(bp + wp @ bd)
    return fused


def _bias_or_zeros(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is not None:
        return conv.bias
    return torch.zeros(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype)
