"""CPU seconds per thread name, counting actor threads that have already ended.

A thread's CPU clock goes with the thread, so every actor thread reads its own clock as
it finishes (:func:`thread_finished`, called at the end of each actor's run) and that
figure is kept. Threads still running are read from ``/proc/self/task/<id>/stat``
(Linux); elsewhere only the ended actor threads are counted.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Final
from weakref import WeakSet

__all__ = ["cpu_seconds_by_thread", "thread_finished"]

_TASKS: Final = Path("/proc/self/task")
_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

_lock = threading.Lock()
_ended: defaultdict[str, float] = defaultdict(float)
_ended_threads: WeakSet[threading.Thread] = WeakSet()


def thread_finished() -> None:
    """Keep the calling thread's CPU seconds under its name: it is about to end."""
    thread = threading.current_thread()
    seconds = time.thread_time()
    with _lock:
        _ended[thread.name] += seconds
        _ended_threads.add(thread)


def cpu_seconds_by_thread() -> dict[str, float]:
    """CPU seconds (user and system) of the process's Python threads, by thread name:
    those running now and the actor threads that have finished. Threads of one name
    (an actor restarted, a partition assigned again) add up."""
    with _lock:
        totals = defaultdict(float, _ended)
        ended = set(_ended_threads)
    for thread in threading.enumerate():
        if thread in ended or thread.native_id is None:
            continue
        seconds = _live_thread_seconds(thread.native_id)
        if seconds is not None:
            totals[thread.name] += seconds
    return dict(totals)


def _live_thread_seconds(native_id: int) -> float | None:
    """CPU seconds of a running thread of this process; None if it has just ended or
    the system has no ``/proc``."""
    try:
        stat = (_TASKS / str(native_id) / "stat").read_text()
    except OSError:
        return None
    # The name (field 2) may hold spaces and parentheses: fields are counted after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / _TICKS_PER_S
