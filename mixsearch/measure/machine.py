"""The machine a latency is measured on, in one line.

A latency is a figure of one machine: the same two archs can swap places on a CPU with wider
vector units (the study's reference network cancels the machine's speed, not its instruction set).
A study stores the line of the machine that timed its reference (``latency_machine``); a worker on
another machine says so and stores its own line on the trials it times.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys

import torch


def cpu_model() -> str:
    """The CPU's model name as the OS reports it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or "unknown CPU"


@functools.cache
def machine_description() -> str:
    """CPU model, architecture, the vector instruction set torch's CPU kernels use, logical CPUs:
    e.g. ``AMD EPYC, x86_64, AVX512, 2 CPUs``."""
    return (f"{cpu_model()}, {platform.machine() or 'unknown architecture'}, "
            f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count() or '?'} CPUs")
