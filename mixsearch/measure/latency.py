"""Latency of the inference form in the runtime it is deployed with.

Two runtimes share one timing rule (``time_relative``): warm-up, then short blocks of calls of the
arch, each followed by a block of a fixed reference network, until the arch's time is spent or, on
a quiet machine, as soon as the fastest block of each is confirmed by several more near it. The
fastest block of each (the machine at full speed, nothing in the way) gives the ratio of arch to
reference, and that ratio times the reference's latency at full speed (measured once per study,
``reference_latency``) is the figure. A measurement that never saw the reference at full speed goes
on until it does (up to 4× the time). With one thread the clock is the thread's CPU time.

An arch's ``latency_min_time`` is spent in two halves (``SplitLatency``): a trial times the first
before it trains and the second after, and keeps the faster. Now and then one measurement comes
out 7-27% too slow, in a slow spell that its reference blocks did not share; two halves seconds
apart rarely both land in one.

Why a reference: on a virtual machine the same core runs 1.2-1.5× slower for tenths of a second
at a time (another tenant on the host's sibling thread, shared caches). The thread's CPU clock does
not see that, and a measurement of 0.2 s lands in one speed or the other: two measurements of one
arch differed by a fifth. The reference runs at the same speed as the blocks next to it, so the
ratio cancels the machine's speed and keeps the arch's (see docs/performance.md).

- ``onnxruntime`` (the default): the inference form is exported to ONNX in memory (nothing is
  written to disk) and run by an ``InferenceSession`` with ``latency_threads`` intra-op threads,
  one inter-op thread and every graph optimization. Small networks run 4-9× faster here than in
  eager PyTorch, and their time follows the work they do.
- ``torch``: eager PyTorch under ``inference_mode``. For these small networks it is mostly
  per-operator interpreter overhead (it counts layers more than work); kept for users who deploy
  PyTorch itself.
"""

from __future__ import annotations

import functools
import io
import statistics
import time
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import ArchError

RUNTIMES = ("onnxruntime", "torch")
WARMUP_SECONDS = 0.02   # first calls allocate, pick kernels, fill caches: never timed
# Calls are timed in blocks this long: long enough that the clock's cost is negligible, short
# enough that the machine's speed rarely changes between a block and the reference blocks around it.
BLOCK_SECONDS = 0.0005
MIN_BLOCKS = 7
# The reference's own latency is timed once per study, this many times ``latency_min_time``: its
# one figure converts every arch's ratio to ms, so it gets more time than any one arch. It is the
# time of its fastest block, the machine at full speed: over 2 s such a figure agreed to 0.2%
# between timings, on an idle machine and beside two trainings alike, where the median moved by
# 5-15% with the machine's slow spells (docs/performance.md).
REFERENCE_TIME_FACTOR = 10
# A measurement whose reference blocks never came within this much of the reference at full speed
# spent all its time in a slow spell, where arch and reference slow by different factors (their
# ratio was off by -6% to +32% in such spells). It goes on, up to EXTEND_FACTOR × ``latency_min_time``,
# until the machine is back at full speed (docs/performance.md).
FULL_SPEED_TOLERANCE = 0.03
EXTEND_FACTOR = 4
# A measurement ends before its time is spent once both fastest blocks are confirmed: CONFIRM_BLOCKS
# further blocks of the arch within CONFIRM_TOLERANCE of its fastest, as many of the reference
# within it of the reference's, which is at full speed. On a quiet machine that is a quarter of the
# blocks, and the figure is the one the whole time gives to 0.2% (median over 30 archs; at most
# 1.3%); on a noisy one no minimum is confirmed and the whole time is spent (docs/performance.md).
CONFIRM_BLOCKS = 5
CONFIRM_TOLERANCE = 0.01


@dataclass(frozen=True)
class Latency:
    ms: float  # the figure: at full speed against the reference (time_relative), or a median (time_calls)
    iqr_ms: float


def runtime_description(runtime: str) -> str:
    """Name and version, stored on the study so its latencies can be compared with others'."""
    if runtime == "onnxruntime":
        import onnxruntime
        return f"onnxruntime {onnxruntime.__version__}"
    return f"torch {torch.__version__}"


def _clock(threads: int) -> Callable[[], float]:
    """With one thread both runtimes compute on the calling thread, so its CPU time is the clock:
    time the OS gives to other processes is not counted. With more threads the work is spread over
    a pool: wall-clock time."""
    return time.thread_time if threads == 1 else time.perf_counter


def _calls_per_block(call: Callable[[], object], clock: Callable[[], float]) -> int:
    """Warm ``call`` up and return how many calls fill one block."""
    started = clock()
    calls = 0
    while calls < 3 or clock() - started < WARMUP_SECONDS:
        call()
        calls += 1
    per_call = (clock() - started) / calls
    return max(1, int(BLOCK_SECONDS / max(per_call, 1e-9)))


def _block(call: Callable[[], object], number: int, clock: Callable[[], float]) -> float:
    """Seconds per call over ``number`` calls."""
    begin = clock()
    for _ in range(number):
        call()
    return (clock() - begin) / number


def _summary(values: list[float]) -> Latency:
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return Latency(statistics.median(values) * 1e3, (quartiles[2] - quartiles[0]) * 1e3)


def _timed_blocks(call: Callable[[], object], min_time: float, threads: int) -> list[float]:
    """Seconds per call of each block, over blocks of calls filling ``min_time`` seconds."""
    clock = _clock(threads)
    number = _calls_per_block(call, clock)
    blocks: list[float] = []
    spent = 0.0
    while spent < min_time or len(blocks) < MIN_BLOCKS:
        blocks.append(_block(call, number, clock))
        spent += blocks[-1] * number
    return blocks


def time_calls(call: Callable[[], object], min_time: float, threads: int = 1) -> Latency:
    """Median and IQR of one call's time in ms, over blocks of calls filling ``min_time`` seconds."""
    return _summary(_timed_blocks(call, min_time, threads))


@dataclass(frozen=True)
class Reference:
    """The reference network ready to run, and its latency in ms on this machine for the study."""

    call: Callable[[], object]
    ms: float


# Per reference call (one per process and setting): the fastest reference block of each of the
# last REFERENCE_HISTORY measurements in this process. A process that never reaches the study's
# figure for the reference (another machine, or one where the reference runs a little slower)
# takes the median of these as the reference at full speed, so that only its first measurement
# goes on to the EXTEND_FACTOR limit. The median, not the fastest ever: beside eager torch archs
# the reference's fastest block varied by 2-10% between measurements (each of its blocks is one
# call, right after an arch block), so later measurements rarely matched the fastest of many and
# most went on to the limit (2.7 s per arch in bench/latency.py, 0.8 s with the median).
REFERENCE_HISTORY = 100
_reference_full_speeds: dict[Callable[[], object], deque[float]] = {}


def fastest(blocks: list[float]) -> float:
    """The fastest block: the machine at full speed. A block under half the median is a jump of
    the thread clock, not a speed any block reaches (slow spells cost 1.2-1.5×, not 2×); seen on a
    virtual machine as a block of 0 s. It is skipped."""
    floor = statistics.median(blocks) / 2
    return min(block for block in blocks if block >= floor)


# Per reference call: how many of its calls fill a block, found once per process. Finding it
# again for every measurement would spend a warm-up of the reference on each arch.
_reference_block_calls: dict[Callable[[], object], int] = {}


def block_sizes(call: Callable[[], object], reference_call: Callable[[], object], threads: int = 1) -> tuple[int, int]:
    """Warm ``call`` up (and the reference, the first time); how many calls of each fill one block."""
    clock = _clock(threads)
    if reference_call not in _reference_block_calls:
        _reference_block_calls[reference_call] = _calls_per_block(reference_call, clock)
    return _calls_per_block(call, clock), _reference_block_calls[reference_call]


class ConfirmedFastest:
    """The fastest block so far and how many other blocks came within ``CONFIRM_TOLERANCE`` of it."""

    def __init__(self):
        self.blocks: list[float] = []
        self.fastest = float("inf")
        self.near = 0

    def add(self, block: float) -> None:
        self.blocks.append(block)
        if block < self.fastest:
            self.fastest = block
            self.near = sum(b <= block * (1 + CONFIRM_TOLERANCE) for b in self.blocks) - 1
        elif block <= self.fastest * (1 + CONFIRM_TOLERANCE):
            self.near += 1

    @property
    def confirmed(self) -> bool:
        return self.near >= CONFIRM_BLOCKS


def interleaved_blocks(call: Callable[[], object], reference_call: Callable[[], object], min_time: float,
                       threads: int = 1, full_speed: float | None = None, sizes: tuple[int, int] | None = None,
                       early_stop: bool = True) -> tuple[list[float], list[float], list[float]]:
    """(arch blocks, reference blocks, per-block ratios), seconds per call, of one measurement.

    Blocks alternate: reference, arch, reference, arch, ... so both are sampled over the same
    spells of the machine, until the arch's blocks fill ``min_time``, or, with ``early_stop``,
    until the fastest block of each is confirmed (``CONFIRM_BLOCKS``) with the reference at full
    speed. Each ratio is an arch block over the mean of the reference blocks around it. Given
    ``full_speed``, the reference's seconds per call at the machine's full speed, a measurement whose
    reference blocks stayed slower than that (by more than ``FULL_SPEED_TOLERANCE``) goes on, up to
    ``EXTEND_FACTOR × min_time``. ``sizes`` (calls per block of each, from ``block_sizes``) skips the
    warm-up that finds them; one untimed block of each then warms the caches.
    """
    clock = _clock(threads)
    if sizes is None:
        number, reference_number = block_sizes(call, reference_call, threads)
    else:
        number, reference_number = sizes
        _block(call, number, clock)
        _block(reference_call, reference_number, clock)
    before = _block(reference_call, reference_number, clock)
    blocks: list[float] = []
    reference_blocks = [before]
    ratios: list[float] = []
    spent = 0.0
    slow_until = (1 + FULL_SPEED_TOLERANCE) * full_speed if full_speed else float("inf")

    def seen_fastest(reference_block: float, so_far: float) -> float:
        # a block under half of full speed is a jump of the clock (see ``fastest``), not a speed
        return min(so_far, reference_block) if reference_block > slow_until / 2 else so_far

    fastest_reference = seen_fastest(before, float("inf"))
    arch_fastest, reference_fastest = ConfirmedFastest(), ConfirmedFastest()
    reference_fastest.add(before)

    def confirmed() -> bool:  # without a full-speed figure nothing says the machine is at full speed
        return (early_stop and full_speed is not None and fastest_reference <= slow_until
                and arch_fastest.confirmed and reference_fastest.confirmed)

    while ((spent < min_time and not confirmed()) or len(ratios) < MIN_BLOCKS
           or (fastest_reference > slow_until and spent < EXTEND_FACTOR * min_time)):
        block = _block(call, number, clock)
        after = _block(reference_call, reference_number, clock)
        blocks.append(block)
        reference_blocks.append(after)
        arch_fastest.add(block)
        reference_fastest.add(after)
        ratios.append(block / ((before + after) / 2))
        spent += block * number
        before = after
        fastest_reference = seen_fastest(after, fastest_reference)
    return blocks, reference_blocks, ratios


def time_relative(call: Callable[[], object], reference: Reference, min_time: float, threads: int = 1,
                  early_stop: bool = True) -> Latency:
    """One call's time at the machine's full speed, measured against the reference, in ms.

    The figure is the arch's fastest block over the reference's fastest block
    (``interleaved_blocks``), times the reference's figure (taken the same way, over longer): the
    ratio of the two at full speed. Noise on a computer only ever adds time, so the fastest block
    is the one least disturbed. Of the estimators tried on 30 archs measured twice and then
    carefully (bench/latency_estimators.py), this one repeated best in both runtimes: a median
    spread of 1.1% against 1.6% for the 2nd percentiles and 3.7% for the median of the per-block
    ratios in onnxruntime (docs/performance.md). The IQR is that of the per-block ratios, in the
    same ms: how unsteady the machine was. A measurement that found the machine slow throughout
    goes on until it is back at full speed (``interleaved_blocks``).
    """
    ms, ratios_ms = _relative(call, reference, min_time, threads, early_stop=early_stop)
    return Latency(ms, _summary(ratios_ms).iqr_ms)


def _relative(call: Callable[[], object], reference: Reference, min_time: float, threads: int,
              sizes: tuple[int, int] | None = None, early_stop: bool = True) -> tuple[float, list[float]]:
    """``time_relative``'s figure in ms, and its per-block ratios in the same ms; ``sizes`` and
    ``early_stop`` as for ``interleaved_blocks``."""
    seen = _reference_full_speeds.setdefault(reference.call, deque(maxlen=REFERENCE_HISTORY))
    reference_full_speed = max(reference.ms / 1e3, statistics.median(seen) if seen else 0.0)
    blocks, reference_blocks, ratios = interleaved_blocks(call, reference.call, min_time, threads,
                                                          reference_full_speed, sizes, early_stop)
    seen.append(fastest(reference_blocks))
    full_speed = fastest(blocks) / fastest(reference_blocks)
    return full_speed * reference.ms, [ratio * reference.ms / 1e3 for ratio in ratios]


@dataclass
class SplitLatency:
    """One arch's latency timed in two halves of ``min_time``: the figure is the faster half.

    A trial times the first half before it trains, to check constraints and guide the pruner, and
    the second after, when the machine has moved on by seconds. A single measurement now and then
    came out 7-27% too slow: the arch's blocks sat in a slow spell that the reference blocks beside
    them escaped. Two halves that far apart rarely both do. On nine draws of 30 archs, τ between two
    such figures reached 0.95 in 9 of 9, one measurement of the whole time in 6 of 9
    (``bench/latency_estimators.py --halves``; docs/performance.md). The IQR is that of both halves'
    per-block ratios. ``close`` lets the session go.
    """

    call: Callable[[], object] | None
    reference: Reference
    min_time: float
    threads: int
    runtime: str
    halves_ms: list[float] = field(default_factory=list)
    ratios_ms: list[float] = field(default_factory=list)
    sizes: tuple[int, int] | None = None  # calls per block, found in the first half's warm-up
    early_stop: bool = True  # a half may end once its fastest blocks are confirmed (CONFIRM_BLOCKS)

    def time_half(self) -> Latency:
        """Time the next half; the figure so far."""
        if self.call is None or len(self.halves_ms) == 2:
            raise RuntimeError("both halves are timed already")
        with _threads(self.runtime, self.threads):
            if self.sizes is None:
                self.sizes = block_sizes(self.call, self.reference.call, self.threads)
            ms, ratios_ms = _relative(self.call, self.reference, self.min_time / 2, self.threads, self.sizes,
                                      self.early_stop)
        self.halves_ms.append(ms)
        self.ratios_ms += ratios_ms
        return self.latency

    @property
    def latency(self) -> Latency:
        return Latency(min(self.halves_ms), _summary(self.ratios_ms).iqr_ms)

    def close(self) -> None:
        self.call = None


# The reference network's two branches, (channels, token hidden) each: alone, ~0.04 and ~0.12 ms at
# batch 1 on one core in onnxruntime for MNIST. A slow spell of the machine slows a small,
# overhead-bound network and a larger, compute-bound one by different factors; against one branch
# alone, two timings of an arch of the other kind differed by 4-7% (CV), against both about 2%.
REFERENCE_BRANCHES = ((16, 32), (64, 256))


class ReferenceNetwork(nn.Module):
    """A fixed network of the operators the searched archs are made of, in a narrow and a wide branch.

    Each branch: a strided convolution into tokens, layer norm, two linear maps with GELU across
    the tokens and a classifier; the logits are the sum of both. Weights from a fixed seed.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int = 10):
        super().__init__()
        channels, height, width = input_shape
        kernel = max(1, min(4, height, width))
        tokens = (height // kernel) * (width // kernel)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, out, kernel, stride=kernel), nn.Flatten(2), nn.LayerNorm(tokens),
                          nn.Linear(tokens, hidden), nn.GELU(), nn.Linear(hidden, tokens), nn.Flatten(),
                          nn.Linear(out * tokens, num_classes))
            for out, hidden in REFERENCE_BRANCHES)
        torch.random.set_rng_state(generator_state)  # building it leaves the caller's random stream alone
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


def runtime_call(model: nn.Module, example: torch.Tensor, runtime: str, threads: int) -> Callable[[], object]:
    """One forward pass of ``model`` on ``example`` in ``runtime``, as a function of no arguments."""
    if runtime == "onnxruntime":
        return onnx_call(model, example, threads)

    def call():
        with torch.inference_mode():
            return model(example)
    return call


def _example(input_shape: tuple[int, ...], batch_size: int) -> torch.Tensor:
    return torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))


@functools.cache
def reference_call(input_shape: tuple[int, ...], runtime: str, batch_size: int, threads: int) -> Callable[[], object]:
    """The reference network in ``runtime``, made once per process and setting."""
    return runtime_call(ReferenceNetwork(input_shape), _example(input_shape, batch_size), runtime, threads)


def reference_latency(input_shape: tuple[int, ...], runtime: str, batch_size: int, threads: int,
                      min_time: float) -> float:
    """The reference network's latency in ms at the machine's full speed: its fastest block over
    ``REFERENCE_TIME_FACTOR × min_time`` seconds.

    A study stores it when it is created (``latency_reference_ms``) and every worker converts its
    ratios with that one figure, so latencies of one study compare across workers and restarts,
    and, the fastest spells of a machine being far steadier than its median, across studies.
    """
    with _threads(runtime, threads):
        call = reference_call(tuple(input_shape), runtime, batch_size, threads)
        return fastest(_timed_blocks(call, REFERENCE_TIME_FACTOR * min_time, threads)) * 1e3


@contextmanager
def _threads(runtime: str, threads: int):
    """Eager torch runs with ``threads`` threads inside the block, as the deployed model would.
    A worker of ``run --jobs`` that meanwhile learns that another has left takes up its threads
    only after the block (``parallel.threads_held``)."""
    from ..parallel import threads_held

    with threads_held():
        previous = torch.get_num_threads()
        if runtime == "torch":
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def export_onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX model of ``model`` as bytes, exported in memory: no file is written.

    The TorchScript-based exporter is used: it needs only the ``onnx`` package (the dynamo
    exporter also needs ``onnxscript``) and exports these small networks in a fraction of a second.
    A network it cannot express is an impossible arch for this runtime.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), buffer, input_names=["image"], output_names=["logits"],
                              dynamo=False)
        except Exception as exc:  # the exporter raises many kinds; each means "cannot express this"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArchError(f"the ONNX exporter cannot express this arch: {reason}") from None
    return buffer.getvalue()


def onnx_session(onnx_bytes: bytes, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    try:
        return onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ArchError(f"onnxruntime cannot run the exported arch: {reason}") from None


def onnx_call(model: nn.Module, example: torch.Tensor, threads: int) -> Callable[[], list[np.ndarray]]:
    """One forward pass of ``model`` in onnxruntime, as a function of no arguments."""
    session = onnx_session(export_onnx_bytes(model, example), threads)
    feed = {"image": example.numpy()}
    return lambda: session.run(None, feed)


def start_latency(model: nn.Module, input_shape: tuple[int, ...], runtime: str, batch_size: int,
                  threads: int, min_time: float, reference_ms: float | None = None,
                  early_stop: bool = True) -> SplitLatency:
    """Make ``model`` (an inference form) ready to run in ``runtime`` and time the first half of its
    latency; ``SplitLatency.time_half`` times the second.

    ``reference_ms`` is the study's figure for the reference network (``reference_latency``); without
    it the reference is timed here, once per process and setting. ``early_stop=False`` spends the
    whole ``min_time`` (a careful measurement).
    """
    input_shape = tuple(input_shape)
    if reference_ms is None:
        reference_ms = _process_reference_latency(input_shape, runtime, batch_size, threads, min_time)
    reference = Reference(reference_call(input_shape, runtime, batch_size, threads), reference_ms)
    with _threads(runtime, threads):
        call = runtime_call(model, _example(input_shape, batch_size), runtime, threads)
    split = SplitLatency(call, reference, min_time, threads, runtime, early_stop=early_stop)
    split.time_half()
    return split


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], runtime: str, batch_size: int,
                    threads: int, min_time: float, reference_ms: float | None = None,
                    early_stop: bool = True) -> Latency:
    """Latency of one forward pass of the inference form ``model`` in ``runtime``: both halves at once."""
    split = start_latency(model, input_shape, runtime, batch_size, threads, min_time, reference_ms, early_stop)
    latency = split.time_half()
    split.close()
    return latency


# Outside a study (retrain, benches) the reference is timed once per process and setting.
_process_reference_latency = functools.cache(reference_latency)
