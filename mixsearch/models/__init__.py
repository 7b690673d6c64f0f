"""Models built from archs: ``build_model(arch)`` for training, ``inference_model`` for deployment.

Every model class has ``inference_form()``: an eval-mode copy in the shape it would be deployed
in (BN folded, fused blocks composed), so latency and FLOPs are measured on what would run.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..arch import Arch
from ..errors import ArchError
from .mixer import MLPMixer, raft_token_params, site_features
from .mobilenet import MobileNet

__all__ = ["MLPMixer", "MobileNet", "build_model", "count_params", "inference_model",
           "raft_token_params", "site_features"]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {"mixer": MLPMixer, "mobilenet": MobileNet}


def build_model(arch: Arch) -> nn.Module:
    """The trainable network for ``arch``; initialisation draws only on torch's global RNG."""
    arch.validate()
    family = getattr(arch, "family", None)
    if family not in _BUILDERS:
        raise ArchError(f"no model for family {family!r}; known: {', '.join(_BUILDERS)}")
    return _BUILDERS[family](arch)


def inference_model(model: nn.Module) -> nn.Module:
    """The eval-mode inference form of ``model``, a copy; ``model`` itself is left as it was."""
    return model.inference_form()


def count_params(model: nn.Module) -> int:
    """Unique parameters: a Parameter shared by several layers counts once."""
    return sum(p.numel() for p in model.parameters())
