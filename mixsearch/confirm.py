"""``mixsearch confirm``: train the current Pareto set again with more seeds.

A front found with one seed per arch may owe its order to seed noise. Each Pareto-optimal trial
is trained again, from scratch, with seeds continuing its own sequence (``seeds.repeat_seeds``:
never one it already ran), on the data and with the recipe it was trained with. Optuna keeps a
finished trial's attrs read-only, so the results go into the study user attr ``confirm:<number>``
(layout in ``seeds``); confirming again adds further seeds to the same record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optuna

from .arch import arch_from_dict
from .data import load_splits
from .seeds import confirm_key, confirmation_record, own_seeds, repeat_seeds, train_seed
from .train import EpochResult, TrainRecipe, resolve_device


@dataclass
class Confirmed:
    """One trial's confirmation after this run: its new seeds and the whole record."""

    trial: optuna.trial.FrozenTrial
    new_seeds: list[int]
    record: dict[str, Any]


def confirm_front(study: optuna.Study, seeds: int = 3, spec=None,
                  on_seed: Callable[[int, int], None] | None = None,
                  on_epoch: Callable[[EpochResult], bool] | None = None) -> list[Confirmed]:
    """Train each Pareto-optimal trial of ``study`` with ``seeds`` more seeds and record them.

    ``spec`` (default: the one the study recorded) gives the data; ``on_seed(trial, seed)`` is
    called before each training run. Raises ``train.DivergenceError`` if a seed diverges (the
    seeds of earlier trials are recorded by then)."""
    from .export import study_spec
    from .study import _fixed_device, pareto_trials

    spec = spec or study_spec(study)
    front = pareto_trials(study)
    if not front:
        return []
    splits = load_splits(spec.data, device=resolve_device(_fixed_device(spec)))
    done = []
    for trial in front:
        attrs = trial.user_attrs
        earlier = study.user_attrs.get(confirm_key(trial.number))
        ran = len(own_seeds(attrs)) + len((earlier or {}).get("seeds", []))
        new_seeds = repeat_seeds(attrs.get("seed", spec.study.seed + trial.number), seeds, start=ran)
        arch, recipe = arch_from_dict(attrs["arch"]), TrainRecipe(**attrs["recipe"])
        results = []
        for seed in new_seeds:
            if on_seed is not None:
                on_seed(trial.number, seed)
            results.append(train_seed(arch, recipe, splits, seed, on_epoch))
        record = confirmation_record(attrs, earlier, results)
        study.set_user_attr(confirm_key(trial.number), record)
        done.append(Confirmed(trial, new_seeds, record))
    return done
