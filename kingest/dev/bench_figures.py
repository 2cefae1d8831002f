"""The numbers ``kingest bench`` reports, and how it sums up several runs.

A bench run is measured from outside the processes it runs, so the figures come from
Linux's ``/proc``: the CPU time (user + system) of a process and of all its descendants
(:func:`process_tree`, :func:`tree_cpu_seconds`; the CPU of PostgreSQL's backends that
have already ended is in the postmaster's reaped-children counters, see
:func:`process_cpu_seconds`), and the peak resident memory (``VmHWM``, :func:`peak_rss`).

:func:`run_figures` turns one run's totals into what the table and the JSON show: events
per second, CPU microseconds per event (kingest's own, the broker's, PostgreSQL's) and
peak RSS in MiB; :func:`thread_cpu_figures` splits kingest's own CPU per event by the
role of its threads, from the line each process logs when it stops. Every case runs
several times, and :func:`summarize_runs` reports each figure as median, min and max
(:func:`median_min_max`): the median is the number to quote, the range says how much to
trust it. Latencies are reported as nearest-rank percentiles (:func:`percentile`), which
are always values that occurred.

:func:`target_checks` compares the default case with the baseline loop of the same
bench, and each latency run with its bound, against :data:`TARGETS`: what kingest
promises per event against a plain loop doing the same job (docs/performance.md).
"""

from __future__ import annotations

import math
import operator
import os
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kingest.pipeline import THREAD_ROLES

__all__ = [
    "TARGETS",
    "THREAD_CPU_FIGURE",
    "Target",
    "TargetCheck",
    "median_min_max",
    "peak_rss",
    "percentile",
    "process_cpu_seconds",
    "process_tree",
    "run_figures",
    "summarize_runs",
    "target_checks",
    "thread_cpu_figures",
    "tree_cpu_seconds",
]

#: Prefix of the figures of :func:`thread_cpu_figures`, one per role of
#: :data:`~kingest.pipeline.THREAD_ROLES`.
THREAD_CPU_FIGURE: Final = "cpu_us_per_event_"

_CPU_BY_THREAD: Final = re.compile(r"CPU seconds by thread: ((?:[a-z]+ [\d.]+s(?:, )?)+)")
_ROLE_SECONDS: Final = re.compile(r"([a-z]+) ([\d.]+)s")


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
    """Median, min and max of every figure of a case's runs (that every run has)."""
    return {
        key: median_min_max([run[key] for run in runs])
        for key in runs[0]
        if all(key in run for run in runs)
    }


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


def thread_cpu_figures(log_text: str, events: float) -> dict[str, float]:
    """CPU microseconds per event of each thread role (:data:`THREAD_CPU_FIGURE` + role),
    summed over the processes whose "CPU seconds by thread" lines ``log_text`` holds;
    empty if it holds none."""
    totals: dict[str, float] = {}
    for line in _CPU_BY_THREAD.findall(log_text):
        for role, seconds in _ROLE_SECONDS.findall(line):
            totals[role] = totals.get(role, 0.0) + float(seconds)
    if not totals:
        return {}
    return {THREAD_CPU_FIGURE + role: totals.get(role, 0.0) / events * 1e6 for role in THREAD_ROLES}


# --- targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound on one figure of a bench: ``figure`` must be ``<=`` or ``>=`` ``limit``."""

    name: str
    figure: str
    compare: str
    limit: float


#: What a bench with the baseline and the latency case must show (each ratio is taken
#: between the default case's median and the baseline's median of the same bench).
TARGETS: Final = (
    Target("CPU per event", "x baseline", "<=", 0.8),
    Target("peak RSS", "x baseline", "<=", 1.25),
    Target("throughput", "x baseline", ">=", 2.0),
    Target("memory bound", "x peak RSS", "<=", 2.0),
    Target("p99 latency", "ms, every run", "<=", 250.0),
)

_COMPARE: Final[dict[str, Callable[[float, float], bool]]] = {
    "<=": operator.le,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class TargetCheck:
    """A target and the figures a bench measured for it (one per latency run)."""

    target: Target
    values: tuple[float, ...]

    @property
    def met(self) -> bool:
        compare = _COMPARE[self.target.compare]
        return all(compare(value, self.target.limit) for value in self.values)


def target_checks(results: Mapping[str, Any]) -> list[TargetCheck]:
    """The targets a bench's results can be held to (none without a baseline)."""
    cases = results.get("cases", {})
    kingest, baseline = cases.get("default"), cases.get("baseline")
    if kingest is None or baseline is None:
        return []

    def median(case: Mapping[str, Any], figure: str) -> float:
        value: float = case["summary"][figure]["median"]
        return value

    def ratio(figure: str) -> float:
        return median(kingest, figure) / median(baseline, figure)

    cpu, rss, throughput, bound, p99 = TARGETS
    checks = [
        TargetCheck(cpu, (ratio("cpu_us_per_event"),)),
        TargetCheck(rss, (ratio("peak_rss_mib"),)),
        TargetCheck(throughput, (ratio("events_per_s"),)),
    ]
    if "memory_bound_mib" in kingest["summary"]:
        bounds = median(kingest, "memory_bound_mib") / median(kingest, "peak_rss_mib")
        checks.append(TargetCheck(bound, (bounds,)))
    latency = results.get("latency") or {}
    if latency.get("runs"):
        checks.append(TargetCheck(p99, tuple(run["p99_ms"] for run in latency["runs"])))
    return checks


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
