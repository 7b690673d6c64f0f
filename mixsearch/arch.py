"""Architectures as plain values.

An *arch* is one concrete network: a frozen dataclass that converts to a plain dict (and so to
YAML) and back. Everything downstream (building the model, counting, exporting, retraining) starts
from an arch, so an exported YAML file loads back into the identical arch.

``canonical_dict`` removes the degrees of freedom that do not change the network (how sharing
groups are numbered, a bias mode when nothing is shared, a raft size when mixing is full), so that
two archs that build the same network have the same ``arch_hash``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import ArchError

# The linear maps of one Mixer layer that a sharing plan can tie across layers.
MIXER_FULL_SITES = ("token.fc1", "token.fc2", "channel.fc1", "channel.fc2")
MIXER_RAFT_SITES = (
    "token.vertical.fc1",
    "token.vertical.fc2",
    "token.horizontal.fc1",
    "token.horizontal.fc2",
    "channel.fc1",
    "channel.fc2",
)
BIAS_MODES = ("tied", "separate")
TOKEN_MIXING = ("full", "raft")
BLOCK_MODES = ("separable", "linear", "fused")


def mixer_sites(token_mixing: str) -> tuple[str, ...]:
    return MIXER_RAFT_SITES if token_mixing == "raft" else MIXER_FULL_SITES


def patch_span(patch_size: int, dilation: int) -> int:
    """Pixels covered by one patch that samples ``patch_size`` pixels at ``dilation``."""
    return (patch_size - 1) * dilation + 1


def token_grid(image_size: tuple[int, int], patch_size: int, dilation: int) -> tuple[int, int]:
    """Token rows and columns: the image is zero-padded to a multiple of the (non-overlapping) span.

    A span larger than the image would be a patch made mostly of padding, so it is rejected.
    """
    span = patch_span(patch_size, dilation)
    height, width = image_size
    if patch_size < 1 or dilation < 1:
        raise ArchError(f"patch_size and dilation must be >= 1 (got {patch_size}, {dilation})")
    if span > min(height, width):
        raise ArchError(
            f"patch_size {patch_size} at dilation {dilation} spans {span} pixels, more than the "
            f"{height}x{width} image: no token fits"
        )
    return -(-height // span), -(-width // span)


def canonical_groups(groups: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Renumber groups by first appearance: (3, 3, 7) and (0, 0, 1) are the same plan."""
    mapping: dict[int, int] = {}
    return tuple(mapping.setdefault(g, len(mapping)) for g in groups)


def check_size_limits(arch: "Arch") -> None:
    """The depth and width limits, before a long arch is walked (see ``measure.sizes``)."""
    from .measure.sizes import check_shape  # measure builds models from archs: imported late
    check_shape(arch)


def _check_int(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ArchError(f"{name} must be an integer >= {low} (got {value!r})")


@dataclass(frozen=True)
class MixerArch:
    """An MLP-Mixer: patch embedding, ``layers`` Mixer layers with a sharing plan, linear head."""

    in_channels: int
    image_size: tuple[int, int]
    num_classes: int
    layers: int
    channels: int
    token_hidden: int
    channel_hidden: int
    patch_size: int
    dilation: int = 1
    token_mixing: str = "full"
    raft_size: int = 1
    # site -> sharing group of each layer; layers with the same group use the same Parameter.
    sharing: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # site -> "tied" (biases follow the weight groups) or "separate" (one bias per layer).
    bias: dict[str, str] = field(default_factory=dict)

    family = "mixer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(self.image_size))
        sites = mixer_sites(self.token_mixing)
        sharing = {site: tuple(self.sharing.get(site, range(self.layers))) for site in sites}
        bias = {site: self.bias.get(site, "tied") for site in sites}
        object.__setattr__(self, "sharing", sharing)
        object.__setattr__(self, "bias", bias)

    @property
    def sites(self) -> tuple[str, ...]:
        return mixer_sites(self.token_mixing)

    @property
    def grid(self) -> tuple[int, int]:
        return token_grid(self.image_size, self.patch_size, self.dilation)

    @property
    def num_tokens(self) -> int:
        rows, cols = self.grid
        return rows * cols

    def validate(self) -> "MixerArch":
        for name in ("in_channels", "num_classes", "layers", "channels", "token_hidden",
                     "channel_hidden", "patch_size", "dilation", "raft_size"):
            _check_int(name, getattr(self, name))
        check_size_limits(self)
        if self.token_mixing not in TOKEN_MIXING:
            raise ArchError(f"token_mixing must be one of {', '.join(TOKEN_MIXING)} (got {self.token_mixing!r})")
        rows, cols = self.grid
        if self.token_mixing == "raft":
            if rows != cols:
                raise ArchError(f"raft token mixing needs a square token grid (got {rows}x{cols})")
            if self.channels % self.raft_size:
                raise ArchError(
                    f"raft_size {self.raft_size} must divide channels {self.channels}"
                )
        for site, groups in self.sharing.items():
            if len(groups) != self.layers:
                raise ArchError(f"sharing.{site} has {len(groups)} entries for {self.layers} layers")
            seen: set[int] = set()
            for previous, g in zip((None, *groups), groups):
                if g != previous and g in seen:
                    raise ArchError(f"sharing.{site} groups must be runs of consecutive layers (got {list(groups)})")
                seen.add(g)
        for site, mode in self.bias.items():
            if mode not in BIAS_MODES:
                raise ArchError(f"bias.{site} must be one of {', '.join(BIAS_MODES)} (got {mode!r})")
        return self

    def canonical_dict(self) -> dict[str, Any]:
        data = self.to_dict()
        data["sharing"] = {s: list(canonical_groups(g)) for s, g in self.sharing.items()}
        for site, groups in data["sharing"].items():
            if len(set(groups)) == len(groups):
                data["bias"][site] = "tied"  # nothing shared: tied and separate are the same net
        if self.token_mixing == "full":
            data["raft_size"] = 1
        return data

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "num_classes": self.num_classes,
            "layers": self.layers,
            "channels": self.channels,
            "token_hidden": self.token_hidden,
            "channel_hidden": self.channel_hidden,
            "patch_size": self.patch_size,
            "dilation": self.dilation,
            "token_mixing": self.token_mixing,
            "raft_size": self.raft_size,
            "sharing": {s: list(g) for s, g in self.sharing.items()},
            "bias": dict(self.bias),
        }

    def describe(self) -> str:
        """One short line for tables, whole at 100 columns: shape, patching and what is shared.

        ``D24/96``: token and channel hidden widths; ``P4d3``: patch 4, dilation 3;
        ``shared: token fc1+fc2``: the sites whose weights layers share, grouped by mixer.
        """
        mixing = f" raft{self.raft_size}" if self.token_mixing == "raft" else ""
        text = (f"mixer L{self.layers} C{self.channels} D{self.token_hidden}/{self.channel_hidden} "
                f"P{self.patch_size}d{self.dilation}{mixing}")
        groups: dict[str, list[str]] = {}
        for site, group in self.sharing.items():
            if len(set(group)) < len(group):
                mixer, _, layer = site.rpartition(".")
                groups.setdefault(mixer.replace(".", " "), []).append(layer)
        shared = ", ".join(f"{mixer} {'+'.join(layers)}" for mixer, layers in groups.items())
        return text + (f" shared: {shared}" if shared else "")


@dataclass(frozen=True)
class BlockArch:
    """One depthwise-separable block of a MobileNet and how its two convolutions are fused."""

    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    mode: str = "separable"

    def validate(self, index: int) -> None:
        _check_int(f"blocks[{index}].out_channels", self.out_channels)
        if self.kernel_size not in (1, 3, 5, 7):
            raise ArchError(f"blocks[{index}].kernel_size must be 1, 3, 5 or 7 (got {self.kernel_size!r})")
        if self.stride not in (1, 2):
            raise ArchError(f"blocks[{index}].stride must be 1 or 2 (got {self.stride!r})")
        if self.mode not in BLOCK_MODES:
            raise ArchError(f"blocks[{index}].mode must be one of {', '.join(BLOCK_MODES)} (got {self.mode!r})")


@dataclass(frozen=True)
class MobileNetArch:
    """A MobileNet-V1-style network: stem conv, depthwise-separable blocks, pooling, linear head."""

    in_channels: int
    image_size: tuple[int, int]
    num_classes: int
    stem_channels: int
    blocks: tuple[BlockArch, ...]
    stem_stride: int = 1

    family = "mobilenet"

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(self.image_size))
        blocks = tuple(b if isinstance(b, BlockArch) else BlockArch(**b) for b in self.blocks)
        object.__setattr__(self, "blocks", blocks)

    def validate(self) -> "MobileNetArch":
        for name in ("in_channels", "num_classes", "stem_channels"):
            _check_int(name, getattr(self, name))
        if self.stem_stride not in (1, 2):
            raise ArchError(f"stem_stride must be 1 or 2 (got {self.stem_stride!r})")
        if not self.blocks:
            raise ArchError("a MobileNet needs at least one block")
        check_size_limits(self)
        for i, block in enumerate(self.blocks):
            block.validate(i)
        size = min(self.image_size)
        for stride in [self.stem_stride] + [b.stride for b in self.blocks]:
            size = -(-size // stride)
        if size < 1:
            raise ArchError("the strides shrink the image below one pixel")
        return self

    def canonical_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "num_classes": self.num_classes,
            "stem_channels": self.stem_channels,
            "stem_stride": self.stem_stride,
            "blocks": [dataclasses.asdict(b) for b in self.blocks],
        }

    def describe(self) -> str:
        modes = "".join({"separable": "s", "linear": "l", "fused": "F"}[b.mode] for b in self.blocks)
        widths = "-".join(str(b.out_channels) for b in self.blocks)
        return f"mobilenet stem{self.stem_channels} blocks {widths} k{''.join(str(b.kernel_size) for b in self.blocks)} modes {modes}"


Arch = Union[MixerArch, MobileNetArch]
ARCH_TYPES = {MixerArch.family: MixerArch, MobileNetArch.family: MobileNetArch}


def arch_from_dict(data: Any, source: str = "arch") -> Arch:
    """Rebuild an arch from its dict form; every problem is an ``ArchError`` naming the field."""
    if not isinstance(data, dict):
        raise ArchError(f"{source}: an arch must be a mapping (got {type(data).__name__})")
    family = data.get("family")
    if family not in ARCH_TYPES:
        raise ArchError(f"{source}: family must be one of {', '.join(ARCH_TYPES)} (got {family!r})")
    cls = ARCH_TYPES[family]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"family"})
    if unknown:
        raise ArchError(f"{source}: unknown field {unknown[0]!r} for family {family}; allowed: {', '.join(sorted(names))}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise ArchError(f"{source}: missing field {missing[0]!r} for family {family}")
    kwargs = {k: v for k, v in data.items() if k != "family"}
    if family == "mixer":
        kwargs["sharing"] = {k: tuple(v) for k, v in (kwargs.get("sharing") or {}).items()}
        unknown_sites = sorted(set(kwargs["sharing"]) | set(kwargs.get("bias") or {}))
        allowed = mixer_sites(kwargs.get("token_mixing", "full"))
        for site in unknown_sites:
            if site not in allowed:
                raise ArchError(f"{source}: unknown sharing site {site!r}; allowed: {', '.join(allowed)}")
    try:
        arch = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ArchError(f"{source}: {exc}") from None
    return arch.validate()


def arch_hash(arch: Arch) -> str:
    """A short hash that is equal for archs that build the same network."""
    text = json.dumps(arch.canonical_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]
