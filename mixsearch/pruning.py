"""Pruners for multi-objective studies.

Optuna's pruners rely on ``trial.report``/``trial.should_prune``, which raise in multi-objective
studies. Here only accuracy changes during training (params, FLOPs and latency are known before
the first step), so a pruner sees the running trial's validation-accuracy curve, its static
objective values and the finished trials, and answers with a reason to stop or ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .choices import Rule


@dataclass
class TrialView:
    """What a pruner may know about one trial."""

    number: int
    curve: list[float]             # validation accuracy after each epoch so far
    static: dict[str, float]       # minimized objectives known before training (params, flops, latency)
    finished: bool = False         # trained to the last epoch


class MultiObjectivePruner:
    """Decides, after an epoch, whether the running trial should stop."""

    name = "base"

    def prune_reason(self, trial: TrialView, others: Sequence[TrialView], epochs: int) -> str | None:
        raise NotImplementedError


class NoPruner(MultiObjectivePruner):
    name = "none"

    def prune_reason(self, trial, others, epochs):
        return None


# Pruner name -> (class, rules for its settings in ``study.pruner``).
PRUNERS: dict[str, tuple[type, dict[str, Rule]]] = {
    "none": (NoPruner, {}),
}


def make_pruner(name: str, settings: dict[str, Any]) -> MultiObjectivePruner:
    cls, _ = PRUNERS[name]
    return cls(**settings)
