"""Pool and routers: concurrency on one shared mailbox, backpressure, per-key order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest

from actors import (
    Actor,
    ActorStopped,
    Directive,
    KeyRouter,
    MailboxFull,
    OneForOneSupervisor,
    Pool,
    RoundRobinRouter,
)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


class Worker(Actor[Any]):
    """Records what it handled; can meet a barrier, wait at a gate, or fail."""

    def __init__(
        self,
        name: str,
        *,
        barrier: threading.Barrier | None = None,
        gate: threading.Event | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.barrier = barrier
        self.gate = gate
        self.entered = threading.Semaphore(0)
        self.seen: list[Any] = []

    def receive(self, message: Any) -> str:
        self.seen.append(message)
        self.entered.release()
        if message == "fail":
            raise RuntimeError("worker failure")
        if self.barrier is not None:
            self.barrier.wait(timeout=5)  # BrokenBarrierError unless all are in at once
        if self.gate is not None:
            assert self.gate.wait(timeout=5)
        return threading.current_thread().name


def workers_of(pool: Pool[Any]) -> list[Worker]:
    workers = [worker for worker in pool.workers if isinstance(worker, Worker)]
    assert len(workers) == pool.size
    return workers


def test_workers_process_concurrently_from_one_mailbox() -> None:
    size = 4
    barrier = threading.Barrier(size)
    pool = Pool("barrier", lambda i: Worker(f"w{i}", barrier=barrier), size, capacity=8)
    assert all(worker.mailbox is pool.mailbox for worker in pool.workers)
    pool.start()
    try:
        answers = [pool.ask(number) for number in range(size)]
        names = {answer.result(timeout=5) for answer in answers}
        assert names == {"w0", "w1", "w2", "w3"}
        assert pool.alive
        assert pool.processed == size
    finally:
        assert pool.stop(timeout=5)
    assert not any(worker.alive for worker in pool.workers)


def test_full_shared_mailbox_blocks_the_sender() -> None:
    gate = threading.Event()
    pool = Pool("bounded", lambda i: Worker(f"b{i}", gate=gate), 1, capacity=2)
    pool.start()
    try:
        pool.tell("in hand")
        [worker] = workers_of(pool)
        assert worker.entered.acquire(timeout=5)
        pool.tell(1)
        pool.tell(2)
        with pytest.raises(MailboxFull):
            pool.tell(3, block=False)
        with pytest.raises(MailboxFull):
            pool.tell(3, timeout=0.01)

        sent = threading.Event()

        def send_blocking() -> None:
            pool.tell(3)
            sent.set()

        threading.Thread(target=send_blocking, daemon=True).start()
        wait_until(lambda: pool.mailbox._putters_waiting == 1)
        assert not sent.is_set()
        gate.set()
        assert sent.wait(timeout=5)
    finally:
        gate.set()
        assert pool.stop(timeout=5)
    assert worker.seen == ["in hand", 1, 2, 3]


def test_pool_stop_drains_everything_queued() -> None:
    pool = Pool("drain", lambda i: Worker(f"d{i}"), 3, capacity=1000)
    for number in range(300):
        pool.tell(number)
    pool.start()
    assert pool.stop(drain=True, timeout=5)
    handled = sorted(item for worker in workers_of(pool) for item in worker.seen)
    assert handled == list(range(300))
    with pytest.raises(ActorStopped):
        pool.tell(1)
    with pytest.raises(ActorStopped):
        pool.ask(1)


def test_pool_stop_without_drain_fails_pending_asks() -> None:
    gate = threading.Event()
    pool = Pool("discard", lambda i: Worker(f"x{i}", gate=gate), 2, capacity=100).start()
    in_hand = [pool.ask("a"), pool.ask("b")]
    for worker in workers_of(pool):
        assert worker.entered.acquire(timeout=5)
    pending = [pool.ask(number) for number in range(10)]
    assert not pool.stop(drain=False, timeout=0)
    for future in pending:
        with pytest.raises(ActorStopped):
            future.result(timeout=0)
    gate.set()
    assert pool.join(timeout=5)
    assert {future.result(timeout=0) for future in in_hand} == {"x0", "x1"}


def test_a_stopped_worker_leaves_the_pool_to_its_siblings() -> None:
    stop_on_failure = OneForOneSupervisor(decider=lambda _: Directive.STOP)
    pool = Pool(
        "survivors",
        lambda i: Worker(f"s{i}", supervisor=stop_on_failure),
        2,
        capacity=10,
    ).start()
    try:
        with pytest.raises(RuntimeError, match="worker failure"):
            pool.ask("fail").result(timeout=5)
        wait_until(lambda: sum(worker.alive for worker in pool.workers) == 1)
        assert not pool.alive  # degraded
        assert pool.ask("still served").result(timeout=5) in {"s0", "s1"}
        with pytest.raises(RuntimeError, match="worker failure"):
            pool.ask("fail").result(timeout=5)
        assert pool.join(timeout=5)
        # The last worker closed the mailbox: nobody is left to drain it.
        with pytest.raises(ActorStopped):
            pool.tell("nobody home")
    finally:
        pool.stop(timeout=5)


def test_pool_start_twice_and_start_after_stop_are_errors() -> None:
    pool = Pool("twice", lambda i: Worker(f"t{i}"), 1, capacity=1).start()
    with pytest.raises(RuntimeError, match="already started"):
        pool.start()
    assert pool.stop(timeout=5)
    unstarted = Pool("never", lambda i: Worker(f"n{i}"), 1, capacity=1)
    pending = unstarted.ask("x")
    assert unstarted.stop(timeout=5)
    with pytest.raises(ActorStopped):
        pending.result(timeout=0)
    with pytest.raises(RuntimeError, match="stopped before"):
        unstarted.start()


def test_pool_rejects_an_empty_size_and_used_workers() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        Pool("empty", lambda i: Worker(f"e{i}"), 0, capacity=1)
    busy = Worker("busy")
    busy.tell("queued")
    with pytest.raises(RuntimeError, match="queued"):
        Pool("reuse", lambda i: busy, 1, capacity=1)


def test_key_router_keeps_per_key_order() -> None:
    routees = [Worker(f"k{i}").start() for i in range(4)]
    router: KeyRouter[Any] = KeyRouter(routees, key=lambda message: message[0])
    try:
        for seq in range(200):
            for key in ("alpha", "beta", "gamma", "delta", 5, 6, 7, 8):
                router.tell((key, seq))
        for routee in routees:
            routee.ask(("flush", 0)).result(timeout=5)
    finally:
        for routee in routees:
            assert routee.stop(timeout=5)
    owners: dict[object, set[str]] = {}
    for routee in routees:
        for key in {message[0] for message in routee.seen} - {"flush"}:
            owners.setdefault(key, set()).add(routee.name)
            sequence = [seq for message_key, seq in routee.seen if message_key == key]
            assert sequence == list(range(200))
    assert len(owners) == 8
    assert all(len(names) == 1 for names in owners.values())
    assert router.route((5, 0)) is routees[5 % 4]  # small ints are placed by value


def test_round_robin_router_takes_turns() -> None:
    routees = [Worker(f"r{i}").start() for i in range(3)]
    router: RoundRobinRouter[Any] = RoundRobinRouter(routees)
    try:
        answers: list[Future[Any]] = [router.ask(number) for number in range(9)]
        assert [answer.result(timeout=5) for answer in answers] == ["r0", "r1", "r2"] * 3
        router.tell("told")
        assert routees[0].ask("flush").result(timeout=5) == "r0"
    finally:
        for routee in routees:
            assert routee.stop(timeout=5)
    assert routees[0].seen == [0, 3, 6, "told", "flush"]
    assert router.routees == tuple(routees)


def test_routers_need_routees() -> None:
    with pytest.raises(ValueError, match="routee"):
        RoundRobinRouter([])
    with pytest.raises(ValueError, match="routee"):
        KeyRouter([], key=str)
