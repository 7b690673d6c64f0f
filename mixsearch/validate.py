"""Checking a spec before a run: the archs at the extremes of its space, and the space's size."""

from __future__ import annotations

from dataclasses import dataclass

from .data import dataset_info
from .errors import UsageError
from .space import corner_archs, count_space
from .spec import Spec


@dataclass
class Corner:
    label: str  # which choices are at which extreme
    summary: str | None  # the arch's one-line summary; None when impossible
    params: int | None
    flops: int | None
    memory: int | None  # peak inference bytes at the latency batch size
    error: str | None  # why the corner is impossible


@dataclass
class SpecCheck:
    corners: list[Corner]
    size: int | None  # configurations (of the space, times the recipe's when finite); None: continuous

    @property
    def buildable(self) -> int:
        return sum(c.summary is not None for c in self.corners)


def require_buildable(spec: Spec) -> None:
    """Refuse a space whose every corner is impossible before any storage is touched."""
    input_shape, num_classes = dataset_info(spec.data)
    corners = corner_archs(spec.space, input_shape, num_classes, batch_size=spec.measure.latency_batch_size,
                           until_buildable=True)
    if corners and all(c.arch is None for c in corners):
        raise UsageError(f"{spec.source}: space: no buildable arch; e.g. {corners[0].error}")


def check_spec(spec: Spec) -> SpecCheck:
    """Size the arch at each corner of the space (on a meta model: nothing is allocated), and
    count the configurations."""
    input_shape, num_classes = dataset_info(spec.data)
    corners = []
    for corner in corner_archs(spec.space, input_shape, num_classes, batch_size=spec.measure.latency_batch_size):
        if corner.arch is None:
            corners.append(Corner(corner.label, None, None, None, None, corner.error))
            continue
        sizes = corner.sizes
        corners.append(Corner(corner.label, corner.arch.describe(), sizes.params, sizes.flops,
                              sizes.memory.peak_bytes, None))
    size = count_space(spec.space, input_shape, num_classes)
    recipe_sizes = [c.size() for c in spec.train.values()]
    if size is not None and None not in recipe_sizes:
        for s in recipe_sizes:
            size *= s
    return SpecCheck(corners, size)
