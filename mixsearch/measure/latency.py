"""Latency of the inference form in the runtime it is deployed with.

Two runtimes share one timing rule (``time_calls``): warm-up, then blocks of calls until
``latency_min_time`` seconds are spent, the median and interquartile range of the per-call time
over the blocks. With one thread the clock is the thread's CPU time (see ``time_calls``).

- ``onnxruntime`` (the default): the inference form is exported to ONNX in memory (nothing is
  written to disk) and run by an ``InferenceSession`` with ``latency_threads`` intra-op threads,
  one inter-op thread and every graph optimization. Small networks run 4-9× faster here than in
  eager PyTorch, and their time follows the work they do.
- ``torch``: eager PyTorch under ``inference_mode``. For these small networks it is mostly
  per-operator interpreter overhead (it counts layers more than work); kept for users who deploy
  PyTorch itself.
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import ArchError

RUNTIMES = ("onnxruntime", "torch")
WARMUP_SECONDS = 0.02   # first calls allocate, pick kernels, fill caches: never timed
BLOCK_SECONDS = 0.002   # calls are timed in blocks this long, so the clock's cost is negligible
MIN_BLOCKS = 7


@dataclass(frozen=True)
class Latency:
    median_ms: float
    iqr_ms: float


def runtime_description(runtime: str) -> str:
    """Name and version, stored on the study so its latencies can be compared with others'."""
    if runtime == "onnxruntime":
        import onnxruntime
        return f"onnxruntime {onnxruntime.__version__}"
    return f"torch {torch.__version__}"


def time_calls(call: Callable[[], object], min_time: float, threads: int = 1) -> Latency:
    """Median and IQR of one call's time in ms, over blocks of calls filling ``min_time`` seconds.

    With one thread both runtimes compute on the calling thread, so its CPU time is the clock:
    time the OS gives to other processes is not counted, and a shared machine ranks archs as an
    idle one would. With more threads the work is spread over a pool: wall-clock time.
    """
    clock = time.thread_time if threads == 1 else time.perf_counter
    started = clock()
    calls = 0
    while calls < 3 or clock() - started < WARMUP_SECONDS:
        call()
        calls += 1
    per_call = (clock() - started) / calls
    number = max(1, int(BLOCK_SECONDS / max(per_call, 1e-9)))
    blocks: list[float] = []
    spent = 0.0
    while spent < min_time or len(blocks) < MIN_BLOCKS:
        begin = clock()
        for _ in range(number):
            call()
        elapsed = clock() - begin
        blocks.append(elapsed / number)
        spent += elapsed
    quartiles = statistics.quantiles(blocks, n=4, method="inclusive")
    return Latency(statistics.median(blocks) * 1e3, (quartiles[2] - quartiles[0]) * 1e3)


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


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], runtime: str, batch_size: int,
                    threads: int, min_time: float) -> Latency:
    """Latency of one forward pass of the inference form ``model`` in ``runtime``."""
    example = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
    if runtime == "onnxruntime":
        return time_calls(onnx_call(model, example, threads), min_time, threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def call():
            with torch.inference_mode():
                return model(example)
        return time_calls(call, min_time, threads)
    finally:
        torch.set_num_threads(previous)
