"""Fixed archs and recipes that a study evaluates before it searches (``study.enqueue``).

An entry is written in the spec's own words: a ``space`` and a ``train`` mapping of fixed values
(fields it leaves out come from the spec's ``space`` and ``train``). A study can only enqueue
Optuna params, so each entry is turned into the params dict that the spec's space would sample
for that arch: the space is walked with a trial that answers each question from the entry.
The walk also proves that the entry lies in the space: every answer must be one of the space's
options, and the arch the space builds from the answers must be the entry's arch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .arch import arch_hash
from .choices import Choice
from .errors import ArchError, SpecError
from .train import TrainRecipe

# Names of the per-site and per-block questions a space asks (see space.py).
_SHARING_PARAM = re.compile(r"sharing\.(?P<site>.+)\.(?P<field>mode|group_size|bias|tie\.(?P<layer>\d+))")
_BLOCK_PARAM = re.compile(r"block\d+\.(?P<field>.+)")


@dataclass
class EnqueueEntry:
    """One parsed ``study.enqueue`` item: the space and train choices with the entry applied."""

    index: int
    label: str | None
    space: Any                 # a MixerSpace or MobileNetSpace whose choices the entry fixed
    train: dict[str, Choice]
    ties: list[bool] | None    # mixer ``mode: tie``: does layer l reuse layer l-1's weights

    @property
    def path(self) -> str:
        return f"study.enqueue[{self.index}]"


class _OpenChoice(Exception):
    def __init__(self, field: str, choice: Choice):
        self.field, self.choice = field, choice


def _fixed(field: str, choice: Choice) -> Any:
    if choice.size() != 1:
        raise _OpenChoice(field, choice)
    return choice.extremes()[0]


def entry_answer(entry: EnqueueEntry, name: str) -> tuple[str, Any]:
    """The entry's value for the space's question ``name``, and the entry field it comes from."""
    space = entry.space
    if name.startswith("train."):
        field = name.split(".", 1)[1]
        return f"train.{field}", _fixed(f"train.{field}", entry.train[field])
    match = _SHARING_PARAM.fullmatch(name)
    if match:
        from .space import site_matches
        site, field = match["site"], match["field"]
        if field == "mode" and not any(site_matches(site, p) for p in space.sharing["sites"]):
            return "space.sharing.sites", "none"
        if match["layer"]:
            layer = int(match["layer"])
            if entry.ties is None or layer > len(entry.ties):
                raise _OpenChoice("space.sharing.ties", None)
            return "space.sharing.ties", entry.ties[layer - 1]
        return f"space.sharing.{field}", _fixed(f"space.sharing.{field}", space.sharing[field])
    if name.startswith("fusion."):
        field = name.split(".", 1)[1]
        return f"space.{name}", _fixed(f"space.{name}", space.fusion[field])
    match = _BLOCK_PARAM.fullmatch(name)
    if match:
        field = match["field"]
        if field == "mode":
            return "space.fusion.mode", _fixed("space.fusion.mode", space.fusion["mode"])
        return f"space.{field}", _fixed(f"space.{field}", space.choices[field])
    return f"space.{name}", _fixed(f"space.{name}", space.choices[name])


class _AnsweringTrial:
    """Answers a space's suggestions from an entry, checking each answer against the options."""

    def __init__(self, entry: EnqueueEntry, source: str, check: bool):
        self.entry, self.source, self.check = entry, source, check
        self.params: dict[str, Any] = {}

    def _answer(self, name: str, allowed, describe: str) -> Any:
        try:
            field, value = entry_answer(self.entry, name)
        except _OpenChoice as exc:
            if exc.choice is None:
                raise SpecError(self.source, f"{self.entry.path}.{exc.field}",
                                "mode tie needs ties: one true/false per layer after the first") from None
            raise SpecError(self.source, f"{self.entry.path}.{exc.field}",
                            f"is not fixed ({_options(exc.choice)}); an enqueued entry needs one value") from None
        if self.check and not allowed(value):
            raise SpecError(self.source, f"{self.entry.path}.{field}",
                            f"{value!r} is outside the space's {name} ({describe}); "
                            "an enqueued entry must be a point of the space")
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices) -> Any:
        choices = list(choices)
        return self._answer(name, lambda v: v in choices, "one of " + ", ".join(map(str, choices)))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._answer(name, lambda v: isinstance(v, int) and low <= v <= high and (v - low) % step == 0,
                            f"{low} to {high}" + (f" in steps of {step}" if step != 1 else ""))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        return self._answer(name, lambda v: low <= v <= high, f"{low:g} to {high:g}")


def _options(choice: Choice) -> str:
    values = choice.grid_values()
    if values is None:
        return f"a range {choice.extremes()[0]:g} to {choice.extremes()[1]:g}"
    return "options " + ", ".join(map(str, values))


def entry_params(spec, entry: EnqueueEntry) -> dict[str, Any]:
    """The Optuna params with which ``spec``'s space and recipe sample exactly ``entry``."""
    from .data import dataset_info

    input_shape, num_classes = dataset_info(spec.data)
    asking = _AnsweringTrial(entry, spec.source, check=True)
    own = _AnsweringTrial(entry, spec.source, check=False)
    try:
        arch = spec.space.sample(asking, input_shape, num_classes)
        wanted = entry.space.sample(own, input_shape, num_classes)
        recipe = spec.sample_recipe(asking)
    except ArchError as exc:
        raise SpecError(spec.source, entry.path, f"impossible arch: {exc}") from None
    wanted_recipe = TrainRecipe(**{name: choice.extremes()[0] for name, choice in entry.train.items()})
    for name, value in wanted_recipe.to_dict().items():
        if getattr(recipe, name) != value:
            raise SpecError(spec.source, f"{entry.path}.train.{name}",
                            f"{value!r} is not a point of the space (its train.{name} is {getattr(recipe, name)!r})")
    if arch_hash(arch) != arch_hash(wanted):
        raise SpecError(spec.source, f"{entry.path}.space",
                        f"is not a point of the space (the space builds {arch.describe()!r}, "
                        f"the entry asks for {wanted.describe()!r})")
    return asking.params
