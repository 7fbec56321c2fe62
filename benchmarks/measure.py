"""Timing and peak-memory helpers shared by the benchmark scripts (imported as ``measure``).

Peak memory on CPU is the growth of the peak resident set size over the resident size before the
measured call (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``; ``ru_maxrss`` where that is
unavailable), so each CPU measurement belongs in a fresh process; on CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the call.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import torch


def _rss_kib() -> tuple[int, int]:
    """(current, peak) resident set size of this process in KiB."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak(device: str) -> int:
    """Reset the peak-memory high-water mark where possible; return the baseline in bytes."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return _rss_kib()[0] * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak(device: str) -> int:
    """The peak memory in bytes since :func:`reset_peak`."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    try:
        return _rss_kib()[1] * 1024
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_and_peak(call: Callable[[], Any], device: str, repeats: int) -> tuple[float, float, Any]:
    """(best time in s, peak MiB of the first call, last result) of ``call`` run ``1 + repeats`` times."""
    base = reset_peak(device)
    start = time.perf_counter()
    out = call()
    sync(device)
    best = time.perf_counter() - start
    peak_mib = (peak(device) - base) / 2**20
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, peak_mib, out
