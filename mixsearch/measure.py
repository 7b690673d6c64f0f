"""Static objectives: parameter count, FLOPs and latency, all known before training.

Latency is measured on the inference form (BN folded, linear blocks composed), because that is
the network a user deploys; params are counted on the training form, which is what the search
trades against accuracy. Both forms' params and FLOPs are reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.utils.benchmark as benchmark
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .choices import Rule


@dataclass(frozen=True)
class MeasureConfig:
    latency_batch_size: int = 1
    latency_threads: int = 1
    latency_min_time: float = 0.2  # seconds of timed runs per arch


MEASURE_RULES: dict[str, Rule] = {
    "latency_batch_size": Rule(int, MeasureConfig.latency_batch_size, minimum=1),
    "latency_threads": Rule(int, MeasureConfig.latency_threads, minimum=1),
    "latency_min_time": Rule(float, MeasureConfig.latency_min_time, minimum=0.01),
}


@dataclass(frozen=True)
class StaticMetrics:
    params: int                 # unique parameters of the training form (shared tensors once)
    flops: int                  # forward FLOPs per image, training form in eval mode
    inference_params: int
    inference_flops: int
    latency_ms: float | None    # median per forward pass of the inference form
    latency_iqr_ms: float | None

    def objective(self, name: str) -> float:
        return {"params": self.params, "flops": self.flops, "latency": self.latency_ms}[name]

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    # ``parameters()`` yields a shared Parameter once, which is exactly "unique parameters".
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs for one image, as counted by ``torch.utils.flop_counter`` (2 per MAC)."""
    was_training = model.training
    model.eval()
    example = torch.zeros((1, *input_shape))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example)
    model.train(was_training)
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, input_shape: tuple[int, int, int], config: MeasureConfig) -> tuple[float, float]:
    """Median and interquartile range, in ms, of one forward pass at the configured batch and threads."""
    example = torch.randn((config.latency_batch_size, *input_shape))
    timer = benchmark.Timer(
        stmt="with torch.inference_mode(): model(x)",
        globals={"model": model, "x": example, "torch": torch},
        num_threads=config.latency_threads,
    )
    measurement = timer.blocked_autorange(min_run_time=config.latency_min_time)
    return measurement.median * 1e3, measurement.iqr * 1e3


def measure_static(model: nn.Module, inference: nn.Module, input_shape: tuple[int, int, int],
                   config: MeasureConfig, with_latency: bool = True) -> StaticMetrics:
    latency = measure_latency(inference, input_shape, config) if with_latency else (None, None)
    return StaticMetrics(
        params=count_params(model),
        flops=count_flops(model, input_shape),
        inference_params=count_params(inference),
        inference_flops=count_flops(inference, input_shape),
        latency_ms=latency[0],
        latency_iqr_ms=latency[1],
    )
