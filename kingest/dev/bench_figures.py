"""The numbers ``kingest bench`` reports, and how it sums up several runs.

A bench run is measured from outside the processes it runs, so the figures come from
Linux's ``/proc``: the CPU time (user + system) of a process and of all its descendants
(:func:`process_tree`, :func:`tree_cpu_seconds`; the CPU of PostgreSQL's backends that
have already ended is in the postmaster's reaped-children counters, see
:func:`process_cpu_seconds`), and the peak resident memory (``VmHWM``, :func:`peak_rss`).

:func:`run_figures` turns one run's totals into what the table and the JSON show: events
per second, CPU microseconds per event (kingest's own, the broker's, PostgreSQL's) and
peak RSS in MiB. Every case runs several times, and :func:`summarize_runs` reports each
figure as median, min and max (:func:`median_min_max`): the median is the number to
quote, the range says how much to trust it. Latencies are reported as nearest-rank
percentiles (:func:`percentile`), which are always values that occurred.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "median_min_max",
    "peak_rss",
    "percentile",
    "process_cpu_seconds",
    "process_tree",
    "run_figures",
    "summarize_runs",
    "tree_cpu_seconds",
]


# --- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank: a value that occurred)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def median_min_max(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a case's runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Median, min and max of every figure of a case's runs."""
    return {key: median_min_max([run[key] for run in runs]) for key in runs[0]}


def run_figures(
    events: float, busy: float, *, cpu: float, rss: int, broker: float, postgres: float
) -> dict[str, float]:
    """One run's figures from its totals: ``events`` stored in ``busy`` seconds, CPU
    seconds of kingest (``cpu``), the broker and PostgreSQL, peak RSS in bytes."""
    return {
        "events_per_s": events / busy,
        "seconds": busy,
        "cpu_us_per_event": cpu / events * 1e6,
        "peak_rss_mib": rss / 2**20,
        "broker_cpu_us_per_event": broker / events * 1e6,
        "postgres_cpu_us_per_event": postgres / events * 1e6,
    }


# --- processes ----------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def process_cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of a local process from /proc (0 when it is gone); with
    ``reaped_children``, of the children it has waited for instead (cutime + cstime:
    PostgreSQL's ended backends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    first = 13 if reaped_children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """The peak resident memory of a local process in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU seconds of these processes together (see :func:`process_cpu_seconds`)."""
    return sum(map(process_cpu_seconds, pids))
