"""YAML → validated spec.

Every problem is a ``SpecError`` naming the file, the field path and what is allowed. Unknown
keys are errors: a typo must never silently do nothing. Fields that may be searched accept a
fixed value, a list of options, or a range ``{low, high, step?, log?}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .choices import REQUIRED, Categorical, Choice, FloatRange, Fixed, IntRange, Rule
from .data import DATASETS, DataConfig, dataset_info
from .enqueue import EnqueueEntry, entry_params
from .errors import SpecError, UsageError
from .measure import MEASURE_RULES, STATIC_ATTRS, MeasureConfig
from .pruning import PRUNERS
from .space import SPACE_RULES, MixerSpace, MobileNetSpace, make_space
from .train import TRAIN_RULES, TrainRecipe

OBJECTIVES = ("accuracy", *STATIC_ATTRS)
# Accuracy is maximized; every cost is minimized. Fixed by kind, so a spec cannot get it wrong.
DIRECTIONS = {"accuracy": "maximize", **{name: "minimize" for name in STATIC_ATTRS}}
CONSTRAINABLE = tuple(STATIC_ATTRS)
SAMPLERS = ("tpe", "nsga2", "nsga3", "random", "gp", "grid")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# Optuna's samplers seed numpy, which takes seeds below 2**32; a worker adds its index to the
# seed, so the spec keeps well below that.
MAX_SEED = 2**31 - 1
# An integer range is enumerated value by value (the space size, the grid sampler); a range
# wider than this is a typo or a missing step, and enumerating it would take minutes.
MAX_RANGE_VALUES = 10_000

STUDY_RULES: dict[str, Rule] = {
    "name": Rule(str, None, nullable=True, pattern=NAME_PATTERN, help="letters, digits, '.', '_', '-'"),
    "storage": Rule(str, None, nullable=True, help="an Optuna storage URL"),
    "trials": Rule(int, 20, minimum=1),
    "timeout": Rule(float, None, nullable=True, minimum=0.0),
    "seed": Rule(int, 0, minimum=0, maximum=MAX_SEED),
    "sampler": Rule(str, "tpe", allowed=SAMPLERS),
    "repeats": Rule(int, 1, minimum=1),
    "pruner": Rule(object, "pareto"),  # a pruner name, or a mapping {type: NAME, setting: value...}
    "enqueue": Rule(list, None, nullable=True, help="a list of fixed archs and recipes, each a mapping "
                    "with optional label, space and train"),
}
ENQUEUE_KEYS = ("label", "space", "train")

DATA_RULES: dict[str, Rule] = {
    "dataset": Rule(str, "mnist", allowed=DATASETS),
    "source": Rule(str, "auto", pattern=r"auto|bundled|torchvision|idx:.+|folder:.+",
                   help="auto, bundled, torchvision, idx:PATH or folder:PATH"),
    "train_size": Rule(int, 10000, minimum=1),
    "val_size": Rule(int, 2000, minimum=1),
    "test_size": Rule(int, 2500, minimum=0),
    "train_eval_size": Rule(int, None, nullable=True, minimum=1),
    "seed": Rule(int, None, nullable=True, minimum=0, maximum=MAX_SEED),
    "cache_dir": Rule(str, DataConfig.cache_dir),
    "image_shape": Rule(list, [1, 28, 28], item=Rule(int, minimum=1)),
    "num_classes": Rule(int, 10, minimum=2),
}

TOP_LEVEL = ("study", "data", "train", "objectives", "constraints", "measure", "space")


@dataclass(frozen=True)
class StudyConfig:
    name: str
    storage: str | None
    trials: int
    timeout: float | None
    seed: int
    sampler: str
    pruner: str
    pruner_settings: dict[str, Any] = field(default_factory=dict)
    repeats: int = 1  # seeds per arch and recipe; the accuracy objective is their mean


@dataclass
class Spec:
    source: str
    study: StudyConfig
    data: DataConfig
    train: dict[str, Choice]
    objectives: tuple[str, ...]
    constraints: dict[str, float]
    measure: MeasureConfig
    space: MixerSpace | MobileNetSpace
    raw: dict[str, Any]
    enqueue: list[EnqueueEntry] = field(default_factory=list)

    @property
    def directions(self) -> list[str]:
        return [DIRECTIONS[name] for name in self.objectives]

    @property
    def times_latency(self) -> bool:
        """Whether trials time their latency: ``measure.latency`` is ``always``, or latency is an
        objective or a constraint."""
        return self.measure.latency == "always" or "latency" in self.objectives or "latency" in self.constraints

    def sample_recipe(self, trial) -> TrainRecipe:
        return TrainRecipe(**{name: choice.suggest(trial, f"train.{name}") for name, choice in self.train.items()})

    def enqueued_params(self) -> list[dict[str, Any]]:
        return enqueued_params(self)

    def choices(self) -> dict[str, Choice]:
        """Every train choice (the space's own choices are enumerated by ``space.count_space``)."""
        return {f"train.{name}": choice for name, choice in self.train.items()}


def _describe(rule: Rule) -> str:
    if rule.allowed is not None:
        return "one of " + ", ".join(str(a) for a in rule.allowed)
    if rule.kind is bool:
        return "true or false"
    if rule.kind in (int, float):
        noun = "an integer" if rule.kind is int else "a number"
        bounds = []
        if rule.minimum is not None:
            bounds.append(f">= {_number(rule.minimum)}")
        if rule.maximum is not None:
            bounds.append(f"<= {_number(rule.maximum)}")
        return noun + (" " + " and ".join(bounds) if bounds else "")
    if rule.kind is str:
        return rule.help or "a string"
    if rule.kind is list:
        return f"a list of {_describe(rule.item)}" if rule.item else "a list"
    return rule.help or rule.kind.__name__


class _Parser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str) -> SpecError:
        return SpecError(self.source, path, problem)

    def value(self, path: str, value: Any, rule: Rule) -> Any:
        """Check one plain value against ``rule``; return it normalized (ints to floats...)."""
        if value is None:
            if rule.nullable:
                return None
            raise self.fail(path, f"must be {_describe(rule)}, got nothing (null)")
        if rule.kind is object:
            return value
        kind_ok = {
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
            bool: isinstance(value, bool),
            list: isinstance(value, list),
            dict: isinstance(value, dict),
        }[rule.kind]
        if not kind_ok:
            raise self.fail(path, f"must be {_describe(rule)}, got {_show(value)}")
        if rule.kind is float:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float, e.g. 1 followed by 400 zeros
                raise self.fail(path, f"must be a finite number, got {_show(value)}") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise self.fail(path, f"must be a finite number, got {value}")
        if rule.kind in (int, float):
            if rule.minimum is not None and value < rule.minimum or rule.maximum is not None and value > rule.maximum:
                raise self.fail(path, f"must be {_describe(rule)}, got {value}")
        if rule.allowed is not None and value not in rule.allowed:
            raise self.fail(path, f"must be {_describe(rule)}, got {_show(value)}")
        if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
            raise self.fail(path, f"must be {_describe(rule)}, got {_show(value)}")
        if rule.kind is list:
            if not value:
                raise self.fail(path, f"must be {_describe(rule)}, got an empty list")
            return [self.value(f"{path}[{i}]", item, rule.item) for i, item in enumerate(value)] if rule.item else value
        if rule.kind is dict:
            return self.section(path, value, rule.rules)
        return value

    def choice(self, path: str, value: Any, rule: Rule) -> Choice:
        """A searchable field: a fixed value, a list of options, or a numeric range."""
        if isinstance(value, list):
            if not value:
                raise self.fail(path, f"an empty list of options; give at least one ({_describe(rule)})")
            options = tuple(self.value(f"{path}[{i}]", v, rule) for i, v in enumerate(value))
            if len(set(options)) != len(options):
                raise self.fail(path, f"lists an option twice: {list(options)}")
            return Fixed(options[0]) if len(options) == 1 else Categorical(options)
        if isinstance(value, dict) and rule.kind in (int, float):
            unknown = sorted(set(value) - {"low", "high", "step", "log"}, key=str)
            if unknown:
                raise self.fail(f"{path}.{_key(unknown[0])}", "unknown key; a range allows low, high, step, log")
            for key in ("low", "high"):
                if key not in value:
                    raise self.fail(path, f"a range needs low and high (missing {key})")
            low = self.value(f"{path}.low", value["low"], rule)
            high = self.value(f"{path}.high", value["high"], rule)
            if low > high:
                raise self.fail(path, f"low ({low}) is greater than high ({high})")
            log = value.get("log", False)
            if not isinstance(log, bool):
                raise self.fail(f"{path}.log", f"must be true or false, got {_show(log)}")
            step = value.get("step")
            if step is not None:
                step = self.value(f"{path}.step", step, Rule(rule.kind, minimum=0))
                if step <= 0:
                    raise self.fail(f"{path}.step", f"must be > 0, got {step}")
                if log:
                    raise self.fail(f"{path}.log", "a range cannot have both step and log")
            if log and low <= 0:
                raise self.fail(f"{path}.low", f"a log range needs low > 0, got {low}")
            if rule.kind is int:
                choice = IntRange(low, high, step or 1, log)
                if choice.size() > MAX_RANGE_VALUES:
                    raise self.fail(path, f"a range of {choice.size():,} values; at most {MAX_RANGE_VALUES:,} "
                                          "(give a larger step, or list the values)")
                return choice
            return FloatRange(low, high, step, log)
        return Fixed(self.value(path, value, rule))

    def section(self, path: str, data: Any, rules: dict[str, Rule]) -> dict[str, Any]:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.fail(path, f"must be a mapping with keys {', '.join(rules)}, got {_show(data)}")
        for key in data:
            if key not in rules:
                raise self.fail(f"{path}.{_key(key)}" if path else _key(key),
                                f"unknown key; allowed: {', '.join(rules)}")
        parsed = {}
        for key, rule in rules.items():
            sub = f"{path}.{key}" if path else key
            if key in data:
                raw = data[key]
            elif rule.default is REQUIRED:
                raise self.fail(sub, f"is required ({_describe(rule)})")
            else:
                raw = rule.default
            parsed[key] = self.choice(sub, raw, rule) if rule.searchable else self.value(sub, raw, rule)
        return parsed

    def pruner(self, value: Any) -> tuple[str, dict[str, Any]]:
        names = ", ".join(PRUNERS)
        if isinstance(value, str):
            name, settings = value, {}
        elif isinstance(value, dict):
            if "type" not in value:
                raise self.fail("study.pruner.type", f"is required when study.pruner is a mapping ({names})")
            name, settings = value["type"], {k: v for k, v in value.items() if k != "type"}
        else:
            raise self.fail("study.pruner", f"must be a pruner name ({names}) or a mapping with type, got {_show(value)}")
        if not isinstance(name, str) or name not in PRUNERS:
            raise self.fail("study.pruner" + (".type" if isinstance(value, dict) else ""), f"must be one of {names}, got {_show(name)}")
        _, rules = PRUNERS[name]
        parsed = self.section("study.pruner", settings, rules)
        return name, parsed


    def enqueue_entry(self, index: int, item: Any, data: dict[str, Any], family: str) -> EnqueueEntry:
        """One ``study.enqueue`` item: its fields override the spec's space and train, and must
        leave every choice fixed."""
        path = f"study.enqueue[{index}]"
        if not isinstance(item, dict):
            raise self.fail(path, f"must be a mapping with keys {', '.join(ENQUEUE_KEYS)}, got {_show(item)}")
        for key in item:
            if key not in ENQUEUE_KEYS:
                raise self.fail(f"{path}.{key}", f"unknown key; allowed: {', '.join(ENQUEUE_KEYS)}")
        label = self.value(f"{path}.label", item["label"], Rule(str)) if "label" in item else None
        overrides = item.get("space") or {}
        if not isinstance(overrides, dict):
            raise self.fail(f"{path}.space", f"must be a mapping of space fields, got {_show(overrides)}")
        if overrides.get("family", family) != family:
            raise self.fail(f"{path}.space.family", f"must be the spec's family {family}, got {_show(overrides['family'])}")
        merged = {**data["space"], **overrides}
        ties = None
        for nested in ("sharing", "fusion"):
            if nested in overrides:
                if not isinstance(overrides[nested], dict):
                    raise self.fail(f"{path}.space.{nested}", f"must be a mapping, got {_show(overrides[nested])}")
                merged[nested] = {**(data["space"].get(nested) or {}), **overrides[nested]}
        if family == "mixer" and "ties" in (merged.get("sharing") or {}):
            merged["sharing"] = dict(merged["sharing"])
            ties = self.value(f"{path}.space.sharing.ties", merged["sharing"].pop("ties"), Rule(list, item=Rule(bool)))
        space = make_space(family, self.section(f"{path}.space", merged, SPACE_RULES[family]))
        train_overrides = item.get("train") or {}
        if not isinstance(train_overrides, dict):
            raise self.fail(f"{path}.train", f"must be a mapping of train fields, got {_show(train_overrides)}")
        train = self.section(f"{path}.train", {**(data.get("train") or {}), **train_overrides}, TRAIN_RULES)
        for name, choice in train.items():
            if not choice.is_fixed:
                raise self.fail(f"{path}.train.{name}", "is not fixed; an enqueued entry needs one value")
        return EnqueueEntry(index, label, space, train, ties)


def _key(key: Any) -> str:
    """A key as the error line names it: quoted when it would break the line or hide in it."""
    text = str(key)
    return text if text.isprintable() and text.strip() == text and text else repr(key)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with ``safe_load``; missing files and syntax errors become one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), "", "file not found") from None
    except IsADirectoryError:
        raise SpecError(str(path), "", "is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), "", f"cannot be read ({exc.__class__.__name__}: {exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(str(path), "", f"not valid YAML{where}: {problem}") from None


def load_spec(path: str | Path) -> Spec:
    return parse_spec(load_yaml(path), str(path), default_name=Path(path).stem)


def parse_spec(data: Any, source: str = "<spec>", default_name: str = "study") -> Spec:
    parser = _Parser(source)
    if data is None:
        raise parser.fail("", f"is empty; expected a mapping with keys {', '.join(TOP_LEVEL)}")
    if not isinstance(data, dict):
        raise parser.fail("", f"expected a mapping with keys {', '.join(TOP_LEVEL)} at the top level, got {_show(data)}")
    for key in data:
        if key not in TOP_LEVEL:
            raise parser.fail(_key(key), f"unknown key; allowed: {', '.join(TOP_LEVEL)}")
    if "space" not in data:
        raise parser.fail("space", "is required (a mapping with family: mixer or mobilenet and its choices)")

    study = parser.section("study", data.get("study"), STUDY_RULES)
    pruner, pruner_settings = parser.pruner(study.pop("pruner"))
    enqueue = study.pop("enqueue") or []
    name = study["name"] or default_name
    if not re.fullmatch(NAME_PATTERN, name):
        raise parser.fail("study.name", f"must be letters, digits, '.', '_', '-' (got {name!r}); set study.name")
    study_config = StudyConfig(**{**study, "name": name}, pruner=pruner, pruner_settings=pruner_settings)

    data_values = parser.section("data", data.get("data"), DATA_RULES)
    if len(data_values["image_shape"]) != 3:
        raise parser.fail("data.image_shape", f"must be [channels, height, width], got {data_values['image_shape']}")
    if data_values["seed"] is None:
        data_values["seed"] = study_config.seed
    if (data_values["train_eval_size"] or 0) > data_values["train_size"]:
        raise parser.fail("data.train_eval_size", f"{data_values['train_eval_size']} is more than data.train_size "
                          f"({data_values['train_size']}); at most that, or null for all training images")
    data_config = DataConfig(**data_values)
    try:  # the data module checks which sources a data set has; name the file in its complaint
        dataset_info(data_config)
    except UsageError as exc:
        field, _, problem = str(exc).partition(": ")
        raise parser.fail(field, problem) from None

    train = parser.section("train", data.get("train"), TRAIN_RULES)
    measure = MeasureConfig(**parser.section("measure", data.get("measure"), MEASURE_RULES))

    objectives = data.get("objectives", ["accuracy", "params"])
    objectives = parser.value("objectives", objectives, Rule(list, item=Rule(str, allowed=OBJECTIVES)))
    if not 2 <= len(objectives) <= 4:
        raise parser.fail("objectives", f"must list 2 to 4 of {', '.join(OBJECTIVES)}, got {len(objectives)}")
    if len(set(objectives)) != len(objectives):
        raise parser.fail("objectives", f"lists an objective twice: {objectives}")

    constraint_rules = {name: Rule(float, None, nullable=True, minimum=0.0) for name in CONSTRAINABLE}
    constraints = parser.section("constraints", data.get("constraints"), constraint_rules)
    constraints = {k: v for k, v in constraints.items() if v is not None}

    space_data = data["space"]
    if not isinstance(space_data, dict):
        raise parser.fail("space", f"must be a mapping with family: mixer or mobilenet, got {_show(space_data)}")
    family = space_data.get("family", "mixer")
    if not isinstance(family, str) or family not in SPACE_RULES:
        raise parser.fail("space.family", f"must be one of {', '.join(SPACE_RULES)}, got {_show(family)}")
    space = make_space(family, parser.section("space", space_data, SPACE_RULES[family]))

    spec = Spec(source=source, study=study_config, data=data_config, train=train,
                objectives=tuple(objectives), constraints=constraints, measure=measure,
                space=space, raw=data)
    spec.enqueue = [parser.enqueue_entry(i, item, data, family) for i, item in enumerate(enqueue)]
    enqueued_params(spec)  # proves every entry is a point of the space, or names what is not
    return spec


def enqueued_params(spec: Spec) -> list[dict[str, Any]]:
    """For each ``study.enqueue`` entry, in order, the Optuna params the space would sample for it
    (what ``study.enqueue_trial`` takes)."""
    return [entry_params(spec, entry) for entry in spec.enqueue]
