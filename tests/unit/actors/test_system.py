"""ActorSystem: orderly stop in reverse spawn order, shared deadline, no thread left."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from actors import Actor, ActorSystem, Failure, OneForOneSupervisor, Pool, escalate_always


class Stage(Actor[int]):
    """Records what it handled and when it stopped; forwards to `downstream` if any."""

    def __init__(
        self,
        name: str,
        stop_order: list[str],
        downstream: Actor[int] | Pool[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.stop_order = stop_order
        self.downstream = downstream
        self.seen: list[int] = []

    def receive(self, message: int) -> None:
        self.seen.append(message)
        if self.downstream is not None:
            self.downstream.tell(message)

    def on_stop(self) -> None:
        self.stop_order.append(self.name)


class Stuck(Actor[str]):
    """Blocks in receive until `release` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = threading.Event()
        self.blocked = threading.Event()

    def receive(self, message: str) -> None:
        self.blocked.set()
        assert self.release.wait(timeout=10)


def test_stop_goes_in_reverse_spawn_order_and_drains_the_pipeline() -> None:
    stop_order: list[str] = []
    system = ActorSystem("pipeline")
    sink = system.spawn(Stage("sink", stop_order, capacity=10))
    middle = system.spawn(Stage("middle", stop_order, downstream=sink, capacity=10))
    source = system.spawn(Stage("source", stop_order, downstream=middle, capacity=10))
    for number in range(500):
        source.tell(number)
    assert system.stop(timeout=10)
    assert stop_order == ["source", "middle", "sink"]
    assert sink.seen == list(range(500))  # nothing lost between the stages
    assert system.spawned == (sink, middle, source)


def test_no_thread_is_left_alive_after_stop() -> None:
    before = set(threading.enumerate())
    stop_order: list[str] = []
    system = ActorSystem("threads")
    pool = system.spawn(Pool("pool", lambda i: Stage(f"p{i}", stop_order), 3, capacity=10))
    single = system.spawn(Stage("single", stop_order, downstream=pool, receive_timeout=0.01))
    single.tell(1)
    assert len(set(threading.enumerate()) - before) == 4
    assert system.stop(timeout=5)
    assert set(threading.enumerate()) - before == set()
    assert sorted(stop_order) == ["p0", "p1", "p2", "single"]


def test_stop_shares_one_deadline_and_can_be_repeated() -> None:
    system = ActorSystem("deadline")
    stuck = system.spawn(Stuck("stuck"))
    stop_order: list[str] = []
    later = system.spawn(Stage("later", stop_order))
    stuck.tell("block")
    assert stuck.blocked.wait(timeout=5)
    assert not system.stop(timeout=0.05)
    assert stop_order == ["later"]  # stopped first (reverse order), ended in time
    assert stuck.alive
    stuck.release.set()
    assert system.stop(timeout=5)
    assert not stuck.alive
    assert not later.alive


def test_spawn_after_stop_is_refused() -> None:
    system = ActorSystem("closed")
    assert system.stop(timeout=1)
    with pytest.raises(RuntimeError, match="stopped"):
        system.spawn(Stage("late", []))


def test_wait_failure_times_out_then_returns_the_first_escalation() -> None:
    seen: list[Failure] = []

    class Fails(Actor[str]):
        def receive(self, message: str) -> None:
            raise ValueError(message)

    with ActorSystem("failures", on_failure=seen.append) as system:
        assert system.wait_failure(timeout=0.01) is None
        supervisor = OneForOneSupervisor(decider=escalate_always)
        first = system.spawn(Fails("first", supervisor=supervisor))
        second = system.spawn(Fails("second", supervisor=supervisor))
        first.tell("one")
        failure = system.wait_failure(timeout=5)
        assert failure is not None
        assert failure.actor_name == "first"
        second.tell("two")
        assert second.join(timeout=5)
        assert [f.actor_name for f in system.failures] == ["first", "second"]
        assert system.wait_failure(timeout=0) is failure
    assert seen == system.failures


def test_a_failing_on_failure_handler_does_not_kill_the_actor_thread_silently() -> None:
    def broken_handler(failure: Failure) -> None:
        raise RuntimeError("handler bug")

    class Fails(Actor[str]):
        def receive(self, message: str) -> None:
            raise ValueError(message)

    with ActorSystem("broken-handler", on_failure=broken_handler) as system:
        actor = system.spawn(Fails("fails"))
        actor.tell("x")
        assert system.wait_failure(timeout=5) is not None
        assert actor.join(timeout=5)
