"""Several seeds of one arch and recipe: which seeds, how one seed is trained and measured, and
how the per-seed results are stored.

A trial trained with N seeds (``study.repeats``) stores, besides its plain attrs (the mean over
its seeds), ``seeds`` (the list of training seeds), ``<metric>_seeds`` (one value per seed, in
that order) and ``<metric>_std`` (sample standard deviation) for each metric of ``PER_SEED``.

``mixsearch confirm`` trains a finished trial again with more seeds. Optuna keeps a finished
trial's attrs read-only, so those seeds go into a study user attr keyed by the trial number,
``confirm:<number>``: the same per-seed lists for the new seeds only, plus the mean and std over
all the trial's seeds (its own and the confirmation's). ``seed_values`` and ``seed_summary`` give
a trial's seeds with its confirmation merged in: that is what show, export, the plots and report
read.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from .train import EpochResult, TrainRecipe, TrainResult, evaluate, train

SEEDS_ATTR = "seeds"
SEED_SUFFIX = "_seeds"
STD_SUFFIX = "_std"
# What one seed's training gives (besides its curve); static figures are one value per arch.
PER_SEED = ("train_accuracy", "val_accuracy", "test_accuracy", "train_seconds")
CONFIRM_PREFIX = "confirm:"
# Seed k of a trial whose first seed is s is s + k * SEED_STRIDE: far from the next trials' first
# seeds (study seed + trial number), and the same sequence whatever asks for it (repeats, confirm).
SEED_STRIDE = 1_000_003


def repeat_seeds(first: int, count: int, start: int = 0) -> list[int]:
    """Seeds ``start`` to ``start + count - 1`` of the sequence that begins with ``first``."""
    return [first + k * SEED_STRIDE for k in range(start, start + count)]


@dataclass
class SeedResult:
    seed: int
    train_accuracy: float
    val_accuracy: float
    test_accuracy: float
    train_seconds: float


def measure_seed(model: torch.nn.Module, splits, seed: int, result: TrainResult) -> SeedResult:
    """One trained seed's accuracies: one evaluation pass over the test split and over the training
    images of ``splits.train_eval`` (in eval mode, unaugmented), and the final epoch's validation accuracy."""
    return SeedResult(seed, evaluate(model, *splits.train_eval), result.val_accuracy,
                      evaluate(model, splits.test_x, splits.test_y), round(result.train_seconds, 3))


def train_seed(arch, recipe: TrainRecipe, splits, seed: int,
               on_epoch: Callable[[EpochResult], bool] | None = None,
               trainer: Callable[..., TrainResult] | None = None) -> SeedResult:
    """Build ``arch`` from ``seed`` (as a trial does), train it fully with ``seed`` and measure it.

    Raises ``train.DivergenceError`` if the loss stops being finite."""
    from .models import build_model

    torch.manual_seed(seed)
    model = build_model(arch).to(splits.train_x.device)
    result = (trainer or train)(model, splits, recipe, seed=seed, on_epoch=on_epoch)
    return measure_seed(model, splits, seed, result)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None with one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def seed_attrs(results: list[SeedResult]) -> dict[str, Any]:
    """The attrs a trial stores for its seeds: plain means always; with more than one seed also
    the per-seed lists and the std."""
    attrs: dict[str, Any] = {}
    for metric in PER_SEED:
        values = [getattr(r, metric) for r in results]
        mean, std = mean_std(values)
        attrs[metric] = mean
        if len(results) > 1:
            attrs[metric + SEED_SUFFIX] = values
            attrs[metric + STD_SUFFIX] = std
    if len(results) > 1:
        attrs[SEEDS_ATTR] = [r.seed for r in results]
    return attrs


def confirm_key(number: int) -> str:
    return f"{CONFIRM_PREFIX}{number}"


def own_seed_values(attrs: Mapping[str, Any], metric: str) -> list[float]:
    """The per-seed values of ``metric`` a trial's own attrs hold (one when it ran one seed)."""
    per_seed = attrs.get(metric + SEED_SUFFIX)
    if per_seed is not None:
        return [float(v) for v in per_seed]
    return [] if attrs.get(metric) is None else [float(attrs[metric])]


def own_seeds(attrs: Mapping[str, Any]) -> list[int]:
    if SEEDS_ATTR in attrs:
        return list(attrs[SEEDS_ATTR])
    return [attrs["seed"]] if "seed" in attrs else []


def seed_values(attrs: Mapping[str, Any], metric: str, confirmation: Mapping[str, Any] | None = None) -> list[float]:
    """A trial's per-seed values of ``metric``, then its confirmation's (if any)."""
    values = own_seed_values(attrs, metric)
    if confirmation and values:
        values += [float(v) for v in confirmation.get(metric + SEED_SUFFIX, [])]
    return values


@dataclass
class Spread:
    mean: float
    std: float | None
    n: int


def seed_summary(attrs: Mapping[str, Any], metric: str, confirmation: Mapping[str, Any] | None = None) -> Spread | None:
    """Mean ± std of ``metric`` over all the trial's seeds; None when the trial has no value."""
    values = seed_values(attrs, metric, confirmation)
    if not values:
        return None
    mean, std = mean_std(values)
    return Spread(mean, std, len(values))


def confirmations(study_attrs: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Trial number -> its confirmation record, from a study's user attrs."""
    return {int(key[len(CONFIRM_PREFIX):]): value for key, value in study_attrs.items()
            if key.startswith(CONFIRM_PREFIX) and key[len(CONFIRM_PREFIX):].isdigit()}


def confirmation_record(attrs: Mapping[str, Any], earlier: Mapping[str, Any] | None,
                        results: list[SeedResult]) -> dict[str, Any]:
    """The ``confirm:<number>`` record after adding ``results`` to an ``earlier`` one (or none)."""
    record: dict[str, Any] = {SEEDS_ATTR: list((earlier or {}).get(SEEDS_ATTR, [])) + [r.seed for r in results]}
    for metric in PER_SEED:
        record[metric + SEED_SUFFIX] = (list((earlier or {}).get(metric + SEED_SUFFIX, []))
                                        + [getattr(r, metric) for r in results])
    for metric in PER_SEED:
        spread = seed_summary(attrs, metric, record)
        if spread is not None:
            record[metric] = spread.mean
            record[metric + STD_SUFFIX] = spread.std
    record["n"] = len(own_seeds(attrs)) + len(record[SEEDS_ATTR])
    return record


def seed_table(attrs: Mapping[str, Any], confirmation: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """All seeds of a trial (its own, then its confirmation's) with each metric's mean, std and
    per-seed values; None when it has only one seed."""
    seeds = own_seeds(attrs) + list((confirmation or {}).get(SEEDS_ATTR, []))
    if len(seeds) < 2:
        return None
    table: dict[str, Any] = {"n": len(seeds), SEEDS_ATTR: seeds}
    for metric in PER_SEED:
        values = seed_values(attrs, metric, confirmation)
        if len(values) == len(seeds):  # a metric an older trial did not record is left out
            mean, std = mean_std(values)
            table[metric] = {"mean": mean, "std": std, "values": values}
    return table
