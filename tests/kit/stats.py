"""Figures for benchmarks and checks: percentiles of samples and a process's memory from /proc."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100), interpolated linearly between the two nearest samples."""
    if not values:
        raise ValueError("percentile of no samples")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def proc_status_kib(pid: int, field: str) -> int:
    """A size field of /proc/PID/status in KiB: ``VmRSS`` now, ``VmHWM`` the high-water mark."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/{pid}/status")
