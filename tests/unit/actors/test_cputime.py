"""cpu_seconds_by_thread: CPU seconds by thread name, kept past an actor thread's end."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest

from actors import Actor, cpu_seconds_by_thread
from actors.cputime import thread_finished

_names = itertools.count()

#: /proc counts in clock ticks (10 ms on Linux): a live thread's figure is that coarse.
TICK_S = 0.011


def unique(prefix: str) -> str:
    """A thread name no other test uses: the figures of ended threads are process-wide."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


def burn(cpu_seconds: float) -> float:
    """Spend at least ``cpu_seconds`` of this thread's CPU; return its CPU seconds."""
    start = time.thread_time()
    while time.thread_time() - start < cpu_seconds:
        sum(range(1000))
    return time.thread_time()


class Burner(Actor[float]):
    """Burns the CPU seconds it is told, and keeps its own thread's CPU clock."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.own_cpu = 0.0

    def receive(self, message: float) -> Any:
        self.own_cpu = burn(message)


def test_an_actor_threads_cpu_outlives_the_thread() -> None:
    name = unique("burner")
    actor = Burner(name)
    actor.start()
    actor.ask(0.1).result(timeout=30)
    actor.stop(drain=True, timeout=30)
    assert not any(thread.name == name for thread in threading.enumerate())

    seconds = cpu_seconds_by_thread()[name]

    # Read as the thread ended: at least what it had spent when it last looked.
    assert actor.own_cpu >= 0.1
    assert actor.own_cpu <= seconds < actor.own_cpu + 0.05


def test_actor_threads_of_one_name_add_up() -> None:
    name = unique("restarted")
    spent = 0.0
    for _ in range(2):
        actor = Burner(name)
        actor.start()
        actor.ask(0.05).result(timeout=30)
        actor.stop(drain=True, timeout=30)
        spent += actor.own_cpu
    assert spent <= cpu_seconds_by_thread()[name] < spent + 0.05


@pytest.mark.parametrize("finished", [False, True], ids=["running", "finished-still-alive"])
def test_a_live_thread_is_read_from_its_clock_and_never_counted_twice(finished: bool) -> None:
    name = unique("live")
    burnt, measured = threading.Event(), threading.Event()
    spent: list[float] = []

    def work() -> None:
        spent.append(burn(0.1))
        if finished:
            thread_finished()  # as an actor does at its very end; the thread is still alive
        burnt.set()
        measured.wait(30)

    thread = threading.Thread(target=work, name=name)
    thread.start()
    try:
        assert burnt.wait(30)
        seconds = cpu_seconds_by_thread()[name]
    finally:
        measured.set()
        thread.join(30)
    assert spent[0] - TICK_S <= seconds < spent[0] + 0.05
