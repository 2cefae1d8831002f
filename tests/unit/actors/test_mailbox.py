"""Mailbox: count and byte bounds, force, close/drain, blocking and wake-ups."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import Mailbox, MailboxClosed, MailboxFull

R = TypeVar("R")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


def in_thread(target: Callable[[], R]) -> Future[R]:
    """Run `target` in a daemon thread; its outcome lands in the returned future."""
    outcome: Future[R] = Future()

    def run() -> None:
        try:
            outcome.set_result(target())
        except BaseException as error:
            outcome.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return outcome


def putters_waiting(mailbox: Mailbox[bytes]) -> int:
    return mailbox._putters_waiting


def getters_waiting(mailbox: Mailbox[bytes]) -> int:
    return mailbox._getters_waiting


# -- bounds ---------------------------------------------------------------------------


def test_count_bound_raises_when_not_blocking_and_after_timeout() -> None:
    mailbox: Mailbox[int] = Mailbox(2)
    mailbox.put(1)
    mailbox.put(2)
    with pytest.raises(MailboxFull):
        mailbox.put(3, block=False)
    started = time.monotonic()
    with pytest.raises(MailboxFull):
        mailbox.put(3, timeout=0.05)
    assert time.monotonic() - started >= 0.05
    assert len(mailbox) == 2
    assert mailbox.is_over()


def test_byte_bound_raises_when_not_blocking_and_after_timeout() -> None:
    mailbox: Mailbox[bytes] = Mailbox(100, max_bytes=10, sizeof=len)
    mailbox.put(b"12345678")
    with pytest.raises(MailboxFull):
        mailbox.put(b"123", block=False)
    with pytest.raises(MailboxFull):
        mailbox.put(b"123", timeout=0.02)
    mailbox.put(b"12", block=False)  # exactly at the bound still fits
    assert mailbox.nbytes == 10
    assert len(mailbox) == 2
    assert mailbox.is_over()
    assert mailbox.get() == b"12345678"
    assert mailbox.nbytes == 2
    assert not mailbox.is_over()


def test_force_exceeds_both_bounds_without_blocking() -> None:
    mailbox: Mailbox[bytes] = Mailbox(1, max_bytes=4, sizeof=len)
    mailbox.put(b"abcd")
    mailbox.put(b"efgh", force=True)
    mailbox.put(b"ijkl", block=True, force=True)
    assert len(mailbox) == 3
    assert mailbox.nbytes == 12
    assert mailbox.is_over()
    with pytest.raises(MailboxFull):
        mailbox.put(b"x", block=False)
    assert [mailbox.get(), mailbox.get(), mailbox.get()] == [b"abcd", b"efgh", b"ijkl"]
    assert mailbox.nbytes == 0


def test_a_size_the_caller_measured_stands_for_sizeof() -> None:
    measured: list[bytes] = []

    def sizeof(item: bytes) -> int:
        measured.append(item)
        return len(item)

    mailbox: Mailbox[bytes] = Mailbox(10, max_bytes=8, sizeof=sizeof)
    mailbox.put(b"ab", size=6)
    assert measured == []
    assert mailbox.nbytes == 6
    with pytest.raises(MailboxFull):
        mailbox.put(b"c", block=False, size=3)
    mailbox.put(b"c")  # measured by sizeof as before
    assert measured == [b"c"]
    assert mailbox.nbytes == 7
    with pytest.raises(ValueError, match="negative"):
        mailbox.put(b"d", size=-1)


def test_oversize_item_is_accepted_only_into_an_empty_mailbox() -> None:
    mailbox: Mailbox[bytes] = Mailbox(10, max_bytes=10, sizeof=len)
    mailbox.put(b"x" * 100, block=False)
    assert mailbox.nbytes == 100
    with pytest.raises(MailboxFull):
        mailbox.put(b"y", block=False)
    assert mailbox.get() == b"x" * 100
    mailbox.put(b"a")
    with pytest.raises(MailboxFull):
        mailbox.put(b"x" * 100, block=False)


def test_is_over_fraction_is_a_high_water_mark() -> None:
    mailbox: Mailbox[bytes] = Mailbox(10, max_bytes=100, sizeof=len)
    for _ in range(4):
        mailbox.put(b"x")
    assert not mailbox.is_over(0.5)
    mailbox.put(b"x")
    assert mailbox.is_over(0.5)  # 5 of 10 items
    assert not mailbox.is_over()
    mailbox.drain()
    mailbox.put(b"x" * 60)
    assert mailbox.is_over(0.5)  # 60 of 100 bytes
    assert not mailbox.is_over(0.7)


def test_nbytes_is_tracked_without_a_byte_bound() -> None:
    mailbox: Mailbox[bytes] = Mailbox(10, sizeof=len)
    mailbox.put(b"abc")
    mailbox.put(b"de")
    assert mailbox.nbytes == 5
    assert mailbox.max_bytes is None
    assert mailbox.capacity == 10
    mailbox.get_nowait()
    assert mailbox.nbytes == 2


@pytest.mark.parametrize(
    ("capacity", "max_bytes", "with_sizeof"),
    [(0, None, False), (1, 0, True), (1, 10, False)],
)
def test_invalid_bounds_are_rejected(
    capacity: int, max_bytes: int | None, with_sizeof: bool
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by argument
        Mailbox(capacity, max_bytes, len if with_sizeof else None)


def test_negative_sizes_and_timeouts_are_rejected() -> None:
    mailbox: Mailbox[int] = Mailbox(1, sizeof=lambda item: item)
    with pytest.raises(ValueError, match="negative size"):
        mailbox.put(-1)
    with pytest.raises(ValueError, match="timeout"):
        mailbox.get(timeout=-1)


# -- close and drain ---------------------------------------------------------------


def test_close_refuses_puts_and_gets_drain_what_is_left() -> None:
    mailbox: Mailbox[int] = Mailbox(10)
    for item in (1, 2, 3):
        mailbox.put(item)
    mailbox.close()
    assert mailbox.closed
    with pytest.raises(MailboxClosed):
        mailbox.put(4)
    with pytest.raises(MailboxClosed):
        mailbox.put(4, force=True)
    assert mailbox.get() == 1
    assert mailbox.drain() == [2, 3]
    assert len(mailbox) == 0
    with pytest.raises(MailboxClosed):
        mailbox.get()
    with pytest.raises(MailboxClosed):
        mailbox.get(timeout=0)
    with pytest.raises(queue.Empty):
        mailbox.get_nowait()  # a non-blocking poll never raises MailboxClosed


def test_drain_returns_everything_in_order_and_resets_bytes() -> None:
    mailbox: Mailbox[bytes] = Mailbox(10, max_bytes=100, sizeof=len)
    for item in (b"a", b"bb", b"ccc"):
        mailbox.put(item)
    assert mailbox.drain() == [b"a", b"bb", b"ccc"]
    assert mailbox.nbytes == 0
    assert mailbox.drain() == []


def test_get_times_out_with_queue_empty() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        mailbox.get(timeout=0.05)
    assert time.monotonic() - started >= 0.05
    with pytest.raises(queue.Empty):
        mailbox.get_nowait()


# -- blocking and wake-ups ---------------------------------------------------------


def test_blocked_put_wakes_when_an_item_is_taken() -> None:
    mailbox: Mailbox[bytes] = Mailbox(1)
    mailbox.put(b"first")
    blocked = in_thread(lambda: mailbox.put(b"second"))
    wait_until(lambda: putters_waiting(mailbox) == 1)
    assert not blocked.done()
    assert mailbox.get() == b"first"
    blocked.result(timeout=5)
    assert mailbox.get_nowait() == b"second"


def test_put_blocked_on_bytes_wakes_when_bytes_are_freed() -> None:
    mailbox: Mailbox[bytes] = Mailbox(10, max_bytes=10, sizeof=len)
    mailbox.put(b"x" * 6)
    mailbox.put(b"y" * 4)
    blocked = in_thread(lambda: mailbox.put(b"z" * 5))
    wait_until(lambda: putters_waiting(mailbox) == 1)
    assert mailbox.get() == b"x" * 6
    blocked.result(timeout=5)
    assert mailbox.nbytes == 9


def test_blocked_put_and_blocked_get_wake_on_close() -> None:
    full: Mailbox[bytes] = Mailbox(1)
    full.put(b"x")
    blocked_put = in_thread(lambda: full.put(b"y"))
    empty: Mailbox[bytes] = Mailbox(1)
    blocked_get = in_thread(empty.get)
    wait_until(lambda: putters_waiting(full) == 1 and getters_waiting(empty) == 1)
    full.close()
    empty.close()
    with pytest.raises(MailboxClosed):
        blocked_put.result(timeout=5)
    with pytest.raises(MailboxClosed):
        blocked_get.result(timeout=5)
    assert full.get() == b"x"  # what was queued before close is still delivered


def test_each_put_wakes_a_waiting_getter() -> None:
    mailbox: Mailbox[bytes] = Mailbox(10)
    getters = [in_thread(mailbox.get) for _ in range(4)]
    wait_until(lambda: getters_waiting(mailbox) == 4)
    items = [b"a", b"b", b"c", b"d"]
    for item in items:
        mailbox.put(item)
    assert sorted(getter.result(timeout=5) for getter in getters) == items


# -- concurrency and a reference model ---------------------------------------------


def run_producers_and_consumers(producers: int, consumers: int, per_producer: int) -> None:
    """Every item is delivered exactly once, in order per producer (per consumer)."""
    mailbox: Mailbox[tuple[int, int]] = Mailbox(
        3, max_bytes=40, sizeof=lambda item: 1 + item[1] % 17
    )
    received: list[list[tuple[int, int]]] = [[] for _ in range(consumers)]

    def produce(producer: int) -> None:
        for seq in range(per_producer):
            mailbox.put((producer, seq), force=seq % 97 == 0)

    def consume(consumer: int) -> None:
        sink = received[consumer]
        while True:
            try:
                sink.append(mailbox.get(timeout=10))
            except MailboxClosed:
                return

    consumer_threads = [
        threading.Thread(target=consume, args=(index,), daemon=True) for index in range(consumers)
    ]
    producer_threads = [
        threading.Thread(target=produce, args=(index,), daemon=True) for index in range(producers)
    ]
    for thread in consumer_threads + producer_threads:
        thread.start()
    for thread in producer_threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    mailbox.close()
    for thread in consumer_threads:
        thread.join(timeout=30)
        assert not thread.is_alive()

    everything = [item for sink in received for item in sink]
    assert len(everything) == producers * per_producer
    assert set(everything) == {(p, s) for p in range(producers) for s in range(per_producer)}
    for sink in received:
        for producer in range(producers):
            sequence = [seq for source, seq in sink if source == producer]
            assert sequence == sorted(sequence)
    assert mailbox.nbytes == 0


def test_many_producers_one_consumer_deliver_exactly_once_in_fifo_order() -> None:
    run_producers_and_consumers(producers=8, consumers=1, per_producer=1500)


def test_many_producers_many_consumers_deliver_exactly_once() -> None:
    run_producers_and_consumers(producers=4, consumers=4, per_producer=1500)


def test_randomized_blocking_handoff_with_timeouts() -> None:
    """Producers and consumers using short timeouts never lose nor duplicate an item."""
    rng = random.Random(20240601)
    mailbox: Mailbox[int] = Mailbox(2)
    total = 3000
    taken: list[int] = []
    taken_lock = threading.Lock()
    next_item = iter(range(total))
    source_lock = threading.Lock()

    def produce() -> None:
        while True:
            with source_lock:
                item = next(next_item, None)
            if item is None:
                return
            while True:
                try:
                    mailbox.put(item, timeout=rng.choice([0, 0.0005, 0.002]))
                    break
                except MailboxFull:
                    continue

    def consume() -> None:
        while True:
            try:
                item = mailbox.get(timeout=rng.choice([0, 0.0005, 0.002]))
            except queue.Empty:
                continue
            except MailboxClosed:
                return
            with taken_lock:
                taken.append(item)

    consumers = [threading.Thread(target=consume, daemon=True) for _ in range(3)]
    producers = [threading.Thread(target=produce, daemon=True) for _ in range(3)]
    for thread in consumers + producers:
        thread.start()
    for thread in producers:
        thread.join(timeout=30)
    mailbox.close()
    for thread in consumers:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert sorted(taken) == list(range(total))


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 40), st.booleans()),
        st.tuples(st.just("get"), st.just(0), st.just(False)),
        st.tuples(st.just("drain"), st.just(0), st.just(False)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=operations, capacity=st.integers(1, 5), max_bytes=st.integers(1, 60))
def test_bounds_match_a_reference_model(
    ops: list[tuple[str, int, bool]], capacity: int, max_bytes: int
) -> None:
    mailbox: Mailbox[bytes] = Mailbox(capacity, max_bytes=max_bytes, sizeof=len)
    model: list[bytes] = []
    for counter, (operation, size, force) in enumerate(ops):
        if operation == "put":
            item = bytes([counter % 256]) * size
            fits = (
                force
                or not model
                or (len(model) < capacity and sum(map(len, model)) + size <= max_bytes)
            )
            if fits:
                mailbox.put(item, block=False, force=force)
                model.append(item)
            else:
                with pytest.raises(MailboxFull):
                    mailbox.put(item, block=False)
        elif operation == "get":
            if model:
                assert mailbox.get_nowait() == model.pop(0)
            else:
                with pytest.raises(queue.Empty):
                    mailbox.get_nowait()
        else:
            assert mailbox.drain() == model
            model.clear()
        assert len(mailbox) == len(model)
        assert mailbox.nbytes == sum(map(len, model))
