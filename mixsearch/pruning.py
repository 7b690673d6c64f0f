"""Pruners for multi-objective studies.

Optuna's pruners rely on ``trial.report``/``trial.should_prune``, which raise in multi-objective
studies. Here only accuracy changes during training (params, FLOPs and latency are known before
the first step), so a pruner sees the running trial's validation-accuracy curve, its static
objective values and the finished trials, and answers with a reason to stop or ``None``.
"""

from __future__ import annotations

import math
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


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` when it is no worse everywhere and better somewhere (all minimized)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _point(accuracy: float, static: dict[str, float], keys: Sequence[str]) -> tuple[float, ...]:
    # Accuracy is maximized; negate it so every coordinate is minimized.
    return (-accuracy, *(static[k] for k in keys))


def _shared_keys(trial: TrialView, other: TrialView) -> list[str]:
    return sorted(set(trial.static) & set(other.static))


class ParetoPruner(MultiObjectivePruner):
    """Prune a trial that cannot reach the Pareto front even in the best case.

    Its projected final accuracy is its current accuracy plus the remaining gain finished trials
    made from the same epoch to their end, plus ``margin``. Which gain: the ``gain_quantile``
    of theirs (1 = the largest). The default is the median: the largest gain grows with every
    finished trial (one trial that started near chance and climbed far is enough), so a study
    projected with it prunes less the longer it runs; on ``bench/pruning.py`` the median kept
    99.9% of the hypervolume with half the epochs of the largest (docs/pruning.md). If a finished
    trial beats the projected point in accuracy and is no larger in every static objective,
    training on is wasted. A trial smaller than every finished one in some static objective is never pruned:
    no finished trial can dominate it there.
    """

    name = "pareto"

    def __init__(self, warmup_epochs: int = 1, margin: float = 0.01, min_finished: int = 2,
                 gain_quantile: float = 0.5):
        self.warmup_epochs = warmup_epochs
        self.margin = margin
        self.min_finished = min_finished
        self.gain_quantile = gain_quantile

    def prune_reason(self, trial, others, epochs):
        epoch = len(trial.curve)
        if epoch < self.warmup_epochs:
            return None
        finished = [o for o in others if o.finished and len(o.curve) >= epoch]
        if len(finished) < self.min_finished:
            return None
        gains = sorted(o.curve[-1] - o.curve[epoch - 1] for o in finished)
        # Round the rank up: with few finished trials the projection stays on the safe side.
        best_gain = max(gains[math.ceil(self.gain_quantile * (len(gains) - 1))], 0.0)
        projected = min(trial.curve[-1] + best_gain + self.margin, 1.0)
        for other in finished:
            keys = _shared_keys(trial, other)
            if dominates(_point(other.curve[-1], other.static, keys), _point(projected, trial.static, keys)):
                return (f"dominated by trial {other.number} (accuracy {other.curve[-1]:.4f}) even at a "
                        f"projected accuracy of {projected:.4f} from epoch {epoch}")
        return None


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Front index of each point (0 = non-dominated), by repeated peeling of the front."""
    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    front = 0
    while remaining:
        current = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in current:
            ranks[i] = front
        remaining -= current
        front += 1
    return ranks


class MOASHAPruner(MultiObjectivePruner):
    """Asynchronous successive halving with non-dominated sorting at the rungs (as MOASHA).

    Rungs sit at ``min_epochs * reduction_factor**k`` epochs. At a rung the trial is ranked with
    every trial that reached it, by front index and then accuracy; it goes on only when it is in
    the top ``1 / reduction_factor``.
    """

    name = "moasha"

    def __init__(self, min_epochs: int = 1, reduction_factor: int = 3):
        self.min_epochs = min_epochs
        self.reduction_factor = reduction_factor

    def is_rung(self, epoch: int) -> bool:
        rung = self.min_epochs
        while rung < epoch:
            rung *= self.reduction_factor
        return rung == epoch

    def prune_reason(self, trial, others, epochs):
        epoch = len(trial.curve)
        if not self.is_rung(epoch):
            return None
        peers = [o for o in others if len(o.curve) >= epoch]
        if len(peers) + 1 < self.reduction_factor:
            return None
        keys = sorted(set(trial.static).intersection(*(set(o.static) for o in peers)))
        points = [_point(trial.curve[-1], trial.static, keys)]
        points += [_point(o.curve[epoch - 1], o.static, keys) for o in peers]
        ranks = nondominated_ranks(points)
        order = sorted(range(len(points)), key=lambda i: (ranks[i], points[i][0]))
        keep = max(1, len(points) // self.reduction_factor)
        if order.index(0) < keep:
            return None
        return (f"rung at epoch {epoch}: front {ranks[0]} of {max(ranks) + 1}, not in the top "
                f"{keep} of {len(points)} trials")


class MedianPruner(MultiObjectivePruner):
    """The classic rule, on accuracy alone: stop below the median of others at the same epoch."""

    name = "median"

    def __init__(self, warmup_epochs: int = 1, min_trials: int = 3):
        self.warmup_epochs = warmup_epochs
        self.min_trials = min_trials

    def prune_reason(self, trial, others, epochs):
        epoch = len(trial.curve)
        if epoch < self.warmup_epochs:
            return None
        values = sorted(o.curve[epoch - 1] for o in others if len(o.curve) >= epoch)
        if len(values) < self.min_trials:
            return None
        middle = len(values) // 2
        median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
        if trial.curve[-1] < median:
            return f"accuracy {trial.curve[-1]:.4f} below the median {median:.4f} at epoch {epoch}"
        return None


_WARMUP = Rule(int, 1, minimum=0)
# Pruner name -> (class, rules for its settings in ``study.pruner``).
PRUNERS: dict[str, tuple[type, dict[str, Rule]]] = {
    "none": (NoPruner, {}),
    "pareto": (ParetoPruner, {"warmup_epochs": _WARMUP, "margin": Rule(float, 0.01, minimum=0.0, maximum=1.0),
                              "min_finished": Rule(int, 2, minimum=1),
                              "gain_quantile": Rule(float, 0.5, minimum=0.0, maximum=1.0)}),
    "moasha": (MOASHAPruner, {"min_epochs": Rule(int, 1, minimum=1), "reduction_factor": Rule(int, 3, minimum=2)}),
    "median": (MedianPruner, {"warmup_epochs": _WARMUP, "min_trials": Rule(int, 3, minimum=1)}),
}


def make_pruner(name: str, settings: dict[str, Any]) -> MultiObjectivePruner:
    cls, _ = PRUNERS[name]
    return cls(**settings)
