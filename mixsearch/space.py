"""Search spaces: the part of a spec that lists choices, turning an Optuna trial into an arch.

A space samples through the trial's ``suggest_*`` calls only, so the same code serves Optuna trials,
the corner archs that ``mixsearch validate`` builds (``CornerTrial``) and fixed replays.
Parameter names are the spec's field paths (``channels``, ``sharing.token.fc1.mode``, ``block2.mode``)
so the dashboard's parameter table reads like the YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .arch import (BLOCK_MODES, BIAS_MODES, TOKEN_MIXING, Arch, BlockArch, MixerArch,
                   MobileNetArch, MIXER_FULL_SITES, MIXER_RAFT_SITES, arch_hash, mixer_sites)
from .choices import Choice, Fixed, Rule
from .errors import ArchError
from .measure.sizes import static_sizes

SHARING_MODES = ("none", "all", "group", "tie")
FUSION_STRATEGIES = ("uniform", "per_block", "first_k")
# Names that select sharing sites: a whole site, a family of sites, or one half of every MLP.
SITE_PATTERNS = ("all", "token", "channel", "fc1", "fc2", "token.vertical", "token.horizontal",
                 *dict.fromkeys(MIXER_FULL_SITES + MIXER_RAFT_SITES))


def site_matches(site: str, pattern: str) -> bool:
    return (pattern == "all" or site == pattern or site.startswith(pattern + ".")
            or site.endswith("." + pattern))


def sharing_groups(mode: str, layers: int, group_size: int = 2, ties: list[bool] | None = None) -> tuple[int, ...]:
    """Group id per layer for one site. ``ties[l-1]`` says whether layer l reuses layer l-1's weights."""
    if mode == "none":
        return tuple(range(layers))
    if mode == "all":
        return (0,) * layers
    if mode == "group":
        return tuple(layer // group_size for layer in range(layers))
    groups = [0]
    for tie in ties or []:
        groups.append(groups[-1] if tie else groups[-1] + 1)
    return tuple(groups)


class CornerTrial:
    """A stand-in for an Optuna trial that answers every suggestion with an extreme value.

    ``side`` 0 takes the low end (first option), 1 the high end (last option); ``overrides`` pins
    single parameters to a given value. It records what was asked so the caller can enumerate.
    """

    def __init__(self, side: int = 0, overrides: dict[str, Any] | None = None):
        self.side = side
        self.overrides = overrides or {}
        self.asked: dict[str, list[Any]] = {}
        self.params: dict[str, Any] = {}

    def _pick(self, name: str, extremes: list[Any]) -> Any:
        self.asked[name] = extremes
        value = self.overrides.get(name, extremes[-1] if self.side else extremes[0])
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self._pick(name, list(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._pick(name, [low, low + (high - low) // step * step])

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        return self._pick(name, [low, high])


@dataclass
class MixerSpace:
    """Choices over MLP-Mixer archs (see ``MIXER_RULES`` for every field)."""

    choices: dict[str, Choice]
    sharing: dict[str, Any]   # sites (list of patterns, fixed) + mode/group_size/bias choices

    family = "mixer"

    def sample(self, trial, input_shape: tuple[int, int, int], num_classes: int) -> MixerArch:
        pick = {name: choice.suggest(trial, name) for name, choice in self.choices.items()
                if name != "raft_size"}
        raft_size = 1
        if pick["token_mixing"] == "raft":
            raft_size = self.choices["raft_size"].suggest(trial, "raft_size")
        layers = pick["layers"]
        sharing: dict[str, tuple[int, ...]] = {}
        bias: dict[str, str] = {}
        for site in mixer_sites(pick["token_mixing"]):
            if not any(site_matches(site, p) for p in self.sharing["sites"]):
                continue
            prefix = f"sharing.{site}"
            mode = self.sharing["mode"].suggest(trial, f"{prefix}.mode") if layers > 1 else "none"
            group_size = self.sharing["group_size"].suggest(trial, f"{prefix}.group_size") if mode == "group" else 2
            ties = None
            if mode == "tie":
                ties = [bool(trial.suggest_categorical(f"{prefix}.tie.{layer}", [False, True]))
                        for layer in range(1, layers)]
            groups = sharing_groups(mode, layers, group_size, ties)
            sharing[site] = groups
            # A bias mode only matters once some weight is shared.
            if len(set(groups)) < layers:
                bias[site] = self.sharing["bias"].suggest(trial, f"{prefix}.bias")
        arch = MixerArch(
            in_channels=input_shape[0], image_size=input_shape[1:], num_classes=num_classes,
            layers=layers, channels=pick["channels"], token_hidden=pick["token_hidden"],
            channel_hidden=pick["channel_hidden"], patch_size=pick["patch_size"],
            dilation=pick["dilation"], token_mixing=pick["token_mixing"], raft_size=raft_size,
            sharing=sharing, bias=bias,
        )
        return arch.validate()


@dataclass
class MobileNetSpace:
    """Choices over MobileNet-style archs, including where depthwise and pointwise layers fuse."""

    choices: dict[str, Choice]
    fusion: dict[str, Choice]

    family = "mobilenet"

    def sample(self, trial, input_shape: tuple[int, int, int], num_classes: int) -> MobileNetArch:
        c = self.choices
        blocks = c["blocks"].suggest(trial, "blocks")
        stem_channels = c["stem_channels"].suggest(trial, "stem_channels")
        stem_stride = c["stem_stride"].suggest(trial, "stem_stride")
        pattern = c["strides"].suggest(trial, "strides")
        strides = [int(s) for s in str(pattern).split(",")]
        if len(strides) < blocks:
            raise ArchError(f"stride pattern {pattern!r} has {len(strides)} entries for {blocks} blocks")
        multiplier = c["width_multiplier"].suggest(trial, "width_multiplier")
        base_widths = c["widths"].value if isinstance(c["widths"], Fixed) else c["widths"]  # a plain list
        strategy = self.fusion["strategy"].suggest(trial, "fusion.strategy")
        uniform_mode = None
        if strategy == "uniform":
            uniform_mode = self.fusion["mode"].suggest(trial, "fusion.mode")
        first_k = self.fusion["first_k"].suggest(trial, "fusion.first_k") if strategy == "first_k" else 0
        block_archs = []
        for i in range(blocks):
            if base_widths is not None:
                if len(base_widths) < blocks:
                    raise ArchError(f"widths has {len(base_widths)} entries for {blocks} blocks")
                width = base_widths[i]
            else:
                width = c["width"].suggest(trial, f"block{i}.width")
            width = max(1, int(round(width * multiplier)))
            kernel = c["kernel_size"].suggest(trial, f"block{i}.kernel_size")
            if strategy == "uniform":
                mode = uniform_mode
            elif strategy == "per_block":
                mode = self.fusion["mode"].suggest(trial, f"block{i}.mode")
            else:
                mode = "fused" if i < first_k else self.fusion["mode"].suggest(trial, f"block{i}.mode")
            block_archs.append(BlockArch(out_channels=width, kernel_size=kernel, stride=strides[i], mode=mode))
        arch = MobileNetArch(in_channels=input_shape[0], image_size=input_shape[1:], num_classes=num_classes,
                             stem_channels=stem_channels, stem_stride=stem_stride, blocks=tuple(block_archs))
        return arch.validate()


SHARING_RULES: dict[str, Rule] = {
    "sites": Rule(list, ["all"], item=Rule(str, allowed=SITE_PATTERNS),
                  help="which sites may share weights"),
    "mode": Rule(str, "none", allowed=SHARING_MODES, searchable=True),
    "group_size": Rule(int, 2, minimum=2, searchable=True),
    "bias": Rule(str, "tied", allowed=BIAS_MODES, searchable=True),
}

MIXER_RULES: dict[str, Rule] = {
    "family": Rule(str, "mixer", allowed=("mixer", "mobilenet")),
    "layers": Rule(int, 4, minimum=1, maximum=64, searchable=True),
    "channels": Rule(int, 32, minimum=1, searchable=True),
    "token_hidden": Rule(int, 64, minimum=1, searchable=True),
    "channel_hidden": Rule(int, 64, minimum=1, searchable=True),
    "patch_size": Rule(int, 4, minimum=1, searchable=True),
    "dilation": Rule(int, 1, minimum=1, searchable=True),
    "token_mixing": Rule(str, "full", allowed=TOKEN_MIXING, searchable=True),
    "raft_size": Rule(int, 2, minimum=1, searchable=True),
    "sharing": Rule(dict, {}, rules=SHARING_RULES),
}

FUSION_RULES: dict[str, Rule] = {
    "strategy": Rule(str, "uniform", allowed=FUSION_STRATEGIES, searchable=True),
    "mode": Rule(str, "separable", allowed=BLOCK_MODES, searchable=True),
    "first_k": Rule(int, 1, minimum=0, searchable=True),
}

MOBILENET_RULES: dict[str, Rule] = {
    "family": Rule(str, "mobilenet", allowed=("mixer", "mobilenet")),
    "blocks": Rule(int, 4, minimum=1, maximum=32, searchable=True),
    "stem_channels": Rule(int, 16, minimum=1, searchable=True),
    "stem_stride": Rule(int, 1, allowed=(1, 2), searchable=True),
    "width": Rule(int, 32, minimum=1, searchable=True, help="per-block width, used when widths is not given"),
    "widths": Rule(list, None, nullable=True, item=Rule(int, minimum=1),
                   help="fixed base width of each block position"),
    "width_multiplier": Rule(float, 1.0, minimum=0.01, searchable=True),
    "strides": Rule(str, "1,2,1,2,1,1,1,1", searchable=True, pattern=r" *[12] *(, *[12] *)*",
                    help="stride per block position, comma-separated 1s and 2s"),
    "kernel_size": Rule(int, 3, allowed=(3, 5), searchable=True),
    "fusion": Rule(dict, {}, rules=FUSION_RULES),
}

SPACE_RULES = {"mixer": MIXER_RULES, "mobilenet": MOBILENET_RULES}


def make_space(family: str, values: dict[str, Any]) -> MixerSpace | MobileNetSpace:
    """Build a space from parsed section values (choices, plus the nested sharing/fusion dicts)."""
    if family == "mixer":
        return MixerSpace({k: v for k, v in values.items() if k not in ("family", "sharing")}, values["sharing"])
    return MobileNetSpace({k: v for k, v in values.items() if k not in ("family", "fusion")}, values["fusion"])


@dataclass
class Corner:
    label: str  # what set this corner apart: "all low", "all high" or one "name=value"
    params: dict[str, Any]
    arch: Arch | None
    error: str | None = None
    sizes: Any = None  # measure.StaticSizes of the arch: counted without allocating it


def corner_archs(space, input_shape, num_classes, limit: int = 200, batch_size: int = 1,
                 until_buildable: bool = False) -> list[Corner]:
    """One arch per extreme of every choice (others at their low end), plus the all-low and
    all-high corners; each distinct arch once. Impossible combinations come back with their error.
    """
    probes: list[CornerTrial] = [CornerTrial(0), CornerTrial(1)]
    corners: list[Corner] = []
    seen: set[str] = set()
    done: set[tuple] = set()
    while probes and len(corners) < limit:
        probe = probes.pop(0)
        key = (probe.side, tuple(sorted(probe.overrides.items())))
        if key in done:
            continue
        done.add(key)
        label = ", ".join(f"{k}={v}" for k, v in probe.overrides.items()) or ("all high" if probe.side else "all low")
        try:
            arch = space.sample(probe, input_shape, num_classes)
            digest = arch_hash(arch)
            sizes = None if digest in seen else static_sizes(arch, input_shape, batch_size)  # over a limit: impossible
        except ArchError as exc:
            corners.append(Corner(label, dict(probe.params), None, str(exc)))
            continue
        if digest not in seen:
            seen.add(digest)
            corners.append(Corner(label, dict(probe.params), arch, sizes=sizes))
            if until_buildable:  # enough to know the space is not empty; sizing each corner costs
                break
        if not probe.overrides:
            for name, extremes in probe.asked.items():
                for value in extremes:
                    probes.append(CornerTrial(0, {name: value}))
    return corners


def count_space(space, input_shape, num_classes) -> int | None:
    """Number of distinct parameter assignments (``None`` if some choice is continuous).

    Conditional parameters make a plain product wrong, so this walks the tree of suggestions.
    A parameter whose every value leads to the same later questions multiplies the count instead
    of branching, which keeps the walk short for spaces of millions of assignments.
    """

    def probe(fixed: dict[str, Any]) -> _EnumeratingTrial:
        trial = _EnumeratingTrial(fixed)
        try:
            space.sample(trial, input_shape, num_classes)
        except ArchError:
            pass
        return trial

    def count(fixed: dict[str, Any]) -> int | None:
        trial = probe(fixed)
        if trial.continuous:
            return None
        new = [name for name in trial.order if name not in fixed]
        if not new:
            return 1
        name = new[0]
        branches = [{**fixed, name: value} for value in trial.options[name]]
        shapes = {tuple(probe(branch).order) for branch in branches}
        if len(shapes) == 1:
            rest = count(branches[0])
            return None if rest is None else rest * len(branches)
        total = 0
        for branch in branches:
            rest = count(branch)
            if rest is None:
                return None
            total += rest
        return total

    return count({})


class _EnumeratingTrial(CornerTrial):
    def __init__(self, fixed: dict[str, Any]):
        super().__init__(0, fixed)
        self.order: list[str] = []
        self.options: dict[str, list[Any]] = {}
        self.continuous = False

    def _pick(self, name, extremes):
        self.order.append(name)
        return super()._pick(name, extremes)

    def suggest_categorical(self, name, choices):
        self.options[name] = list(choices)
        return super().suggest_categorical(name, choices)

    def suggest_int(self, name, low, high, step=1, log=False):
        self.options[name] = list(range(low, high + 1, step))
        return super().suggest_int(name, low, high, step, log)

    def suggest_float(self, name, low, high, step=None, log=False):
        if step is None:
            self.continuous = True
            self.options[name] = [low]
        else:
            self.options[name] = [low + i * step for i in range(int((high - low) / step + 1e-9) + 1)]
        return super().suggest_float(name, low, high, step, log)
