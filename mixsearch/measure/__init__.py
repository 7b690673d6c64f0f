"""Static objectives: params, FLOPs, peak memory and latency, all known before training.

- ``sizes``: params, FLOPs and peak memory counted on a ``meta`` model (nothing allocated), and
  the limits past which an arch is impossible.
- ``memory``: peak inference memory by tracing with ``torch.fx`` and freeing each activation after
  its last use.
- ``latency``: the time of one forward pass in onnxruntime (default) or eager torch.

Latency and memory are measured on the inference form (BN folded, linear blocks composed),
because that is the network a user deploys; params are counted on the training form, which is what
the search trades against accuracy. Both forms' params and FLOPs are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from torch import nn

from ..arch import Arch
from ..choices import Rule
from .latency import RUNTIMES, Latency, SplitLatency, reference_latency, runtime_description, start_latency
from .machine import machine_description
from .sizes import StaticSizes, count_flops, count_params, static_sizes

__all__ = ["DEFAULT_MIN_TIME", "LATENCY_WHEN", "MEASURE_RULES", "MeasureConfig", "RUNTIMES", "STATIC_ATTRS",
           "SplitLatency", "StaticMetrics", "StaticSizes", "count_flops", "count_params", "finish_static",
           "machine_description", "measure_static", "reference_latency", "runtime_description", "start_static",
           "static_sizes", "stored_latency"]


# Seconds of timed runs per arch unless the spec says. Eager torch repeats worse than onnxruntime
# in equal time (its calls are mostly interpreter overhead, which varies more), so it gets twice
# the time; both stay a few percent of a default trial's training (docs/performance.md).
DEFAULT_MIN_TIME = {"onnxruntime": 0.2, "torch": 0.4}

# When trials time their latency: ``auto`` when the spec searches or bounds it (an objective or a
# constraint), ``always`` for every trial. Timing is about half a second per arch, and on small,
# short trials that is as much as their training (docs/performance.md).
LATENCY_WHEN = ("auto", "always")


@dataclass(frozen=True)
class MeasureConfig:
    runtime: str = "onnxruntime"
    latency: str = "auto"  # see LATENCY_WHEN
    latency_batch_size: int = 1
    latency_threads: int = 1
    latency_min_time: float | None = None  # seconds of timed runs per arch; None: DEFAULT_MIN_TIME

    def __post_init__(self) -> None:
        if self.latency_min_time is None:
            object.__setattr__(self, "latency_min_time", DEFAULT_MIN_TIME[self.runtime])


MEASURE_RULES: dict[str, Rule] = {
    "runtime": Rule(str, MeasureConfig.runtime, allowed=RUNTIMES),
    "latency": Rule(str, MeasureConfig.latency, allowed=LATENCY_WHEN),
    "latency_batch_size": Rule(int, MeasureConfig.latency_batch_size, minimum=1),
    "latency_threads": Rule(int, MeasureConfig.latency_threads, minimum=1),
    "latency_min_time": Rule(float, None, minimum=0.01, nullable=True),  # None: DEFAULT_MIN_TIME
}

# Each minimized objective and the user attribute of a trial that stores it.
STATIC_ATTRS = {"params": "params", "flops": "flops", "latency": "latency_ms", "memory": "memory_bytes"}


@dataclass(frozen=True)
class StaticMetrics(StaticSizes):
    """The sizes counted from the arch, plus the latency timed on the inference form."""

    latency_ms: float | None = None    # ms per forward pass of the inference form (measure.latency)
    latency_iqr_ms: float | None = None
    latency_from: int | None = None  # the earlier trial of the same arch whose latency is reused

    @property
    def weight_bytes(self) -> int:  # unique weights of the inference form
        return self.memory.weight_bytes

    @property
    def memory_bytes(self) -> int:  # peak memory of one inference pass: weights + live activations
        return self.memory.peak_bytes

    def objective(self, name: str) -> float:
        return getattr(self, STATIC_ATTRS[name])

    def to_dict(self) -> dict:
        """The figures a trial stores as user attributes, all plain numbers."""
        return {"params": self.params, "flops": self.flops, "inference_params": self.inference_params,
                "inference_flops": self.inference_flops, "weight_bytes": self.weight_bytes,
                "memory_bytes": self.memory_bytes, "latency_ms": self.latency_ms,
                "latency_iqr_ms": self.latency_iqr_ms, "latency_from": self.latency_from}


def start_static(arch: Arch, model: nn.Module, input_shape: tuple[int, int, int], config: MeasureConfig,
                 with_latency: bool = True, sizes: StaticSizes | None = None,
                 stored: tuple[Latency, int] | None = None, reference_ms: float | None = None,
                 ) -> tuple[StaticMetrics, SplitLatency | None]:
    """Every static figure of ``arch``, the latency from the first half of its timing, and that
    timing, whose second half ``finish_static`` takes (a trial: after training). ``model`` (built
    from ``arch``) is only needed to time it.

    ``sizes`` saves counting again what ``static_sizes`` already counted; ``stored`` is the
    latency of an earlier trial of the same arch (see ``stored_latency``), used instead of timing;
    ``reference_ms`` is the study's latency of the reference network (see ``measure.latency``).
    """
    from ..models import inference_model

    sizes = sizes or static_sizes(arch, input_shape, config.latency_batch_size)
    latency, source, split = None, None, None
    if stored is not None:
        latency, source = stored
    elif with_latency:
        split = start_latency(inference_model(model), input_shape, config.runtime, config.latency_batch_size,
                              config.latency_threads, config.latency_min_time, reference_ms)
        latency = split.latency
    static = StaticMetrics(
        **{f.name: getattr(sizes, f.name) for f in fields(StaticSizes)},
        latency_ms=latency.ms if latency else None, latency_iqr_ms=latency.iqr_ms if latency else None,
        latency_from=source,
    )
    return static, split


def finish_static(static: StaticMetrics, split: SplitLatency | None) -> StaticMetrics:
    """``static`` with its latency's second half timed (the faster half is the figure); unchanged
    when nothing was timed."""
    if split is None:
        return static
    latency = split.time_half()
    split.close()
    return replace(static, latency_ms=latency.ms, latency_iqr_ms=latency.iqr_ms)


def measure_static(arch: Arch, model: nn.Module, input_shape: tuple[int, int, int], config: MeasureConfig,
                   **options) -> StaticMetrics:
    """Every static figure of ``arch``, both halves of the latency timed at once (``start_static``'s options)."""
    return finish_static(*start_static(arch, model, input_shape, config, **options))


def stored_latency(study, digest: str) -> tuple[Latency, int] | None:
    """The latency an earlier trial of the study measured for the arch with hash ``digest``.

    A trial's ``arch_hash`` attribute is the arch hash followed by its recipe's, so a repeat of
    the arch with any recipe matches. Timing it again would only add noise to the same figure.
    """
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if (str(attrs.get("arch_hash", "")).split("-")[0] == digest and attrs.get("latency_ms") is not None
                and attrs.get("latency_from") is None):
            return Latency(attrs["latency_ms"], attrs["latency_iqr_ms"]), trial.number
    return None
