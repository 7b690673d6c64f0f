"""The values a spec field can take: fixed, one of a list, or a numeric range.

A choice knows how to ask an Optuna trial for a value (``suggest``), which values bound it
(``extremes``, used by ``mixsearch validate`` to build the corner archs), how many values it has
(``size``, for the space size; ``None`` when continuous) and how to list them for a grid sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import optuna


class Choice:
    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        raise NotImplementedError

    def extremes(self) -> list[Any]:
        raise NotImplementedError

    def size(self) -> int | None:
        raise NotImplementedError

    def grid_values(self) -> list[Any] | None:
        """All values for a grid sampler; ``None`` when the choice is continuous."""
        raise NotImplementedError

    @property
    def is_fixed(self) -> bool:
        return self.size() == 1


@dataclass(frozen=True)
class Fixed(Choice):
    value: Any

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return self.value  # a fixed value is not a search dimension: no trial param

    def extremes(self) -> list[Any]:
        return [self.value]

    def size(self) -> int:
        return 1

    def grid_values(self) -> list[Any]:
        return [self.value]


@dataclass(frozen=True)
class Categorical(Choice):
    options: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if len(self.options) == 1:
            return self.options[0]
        return trial.suggest_categorical(name, list(self.options))

    def extremes(self) -> list[Any]:
        return list(self.options)

    def size(self) -> int:
        return len(self.options)

    def grid_values(self) -> list[Any]:
        return list(self.options)


@dataclass(frozen=True)
class IntRange(Choice):
    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        if self.low == self.high:
            return self.low
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[int]:
        return [self.low, self.high_reachable]

    @property
    def high_reachable(self) -> int:
        return self.low + (self.high - self.low) // self.step * self.step

    def size(self) -> int:
        return (self.high - self.low) // self.step + 1

    def grid_values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


@dataclass(frozen=True)
class FloatRange(Choice):
    low: float
    high: float
    step: float | None = None
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        if self.low == self.high:
            return self.low
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[float]:
        return [self.low, self.high]

    def size(self) -> int | None:
        if self.low == self.high:
            return 1
        if self.step is None:
            return None
        return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1

    def grid_values(self) -> list[float] | None:
        count = self.size()
        if count is None:
            return None
        return [self.low + i * self.step for i in range(count)] if self.step else [self.low]


def space_size(choices: Sequence[Choice]) -> int | None:
    """Product of the choice sizes, ``None`` if any choice is continuous."""
    total = 1
    for choice in choices:
        size = choice.size()
        if size is None:
            return None
        total *= size
    return total


REQUIRED = object()


@dataclass(frozen=True)
class Rule:
    """What one spec field accepts; the spec parser checks values against it.

    ``kind`` is int, float, str, bool, list (of ``item`` values) or dict (a sub-section with its own
    ``rules``). ``searchable`` fields may also be a list of options or a low/high range.
    """

    kind: type
    default: Any = REQUIRED
    allowed: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    searchable: bool = False
    nullable: bool = False
    item: "Rule | None" = None
    rules: "dict[str, Rule] | None" = None
    pattern: str | None = None  # a regular expression that a str value must match in full
    help: str = ""
