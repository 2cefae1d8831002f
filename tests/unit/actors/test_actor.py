"""Actor: ordering, tell/ask, stop with and without drain, idle timeouts, lifecycle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

import pytest

from actors import (
    Actor,
    ActorStopped,
    Directive,
    Envelope,
    Failure,
    MailboxFull,
    OneForOneSupervisor,
)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


def resume_all(failure: Failure) -> Directive:
    return Directive.RESUME


class Recorder(Actor[Any]):
    """Records every message; "gate" blocks until `gate` is set; "fail" raises."""

    def __init__(self, name: str = "recorder", **kwargs: Any) -> None:
        kwargs.setdefault("supervisor", OneForOneSupervisor(decider=resume_all))
        super().__init__(name, **kwargs)
        self.seen: list[Any] = []
        self.gate = threading.Event()
        self.in_gate = threading.Event()
        self.lifecycle: list[tuple[str, str]] = []
        self.wait_times: list[float] = []

    def on_start(self) -> None:
        self.lifecycle.append(("start", threading.current_thread().name))

    def on_stop(self) -> None:
        self.lifecycle.append(("stop", threading.current_thread().name))

    def receive(self, message: Any) -> Any:
        envelope = self.current_envelope
        assert envelope is not None
        self.wait_times.append(time.monotonic() - envelope.enqueued_at)
        self.seen.append(message)
        if message == "gate":
            self.in_gate.set()
            assert self.gate.wait(timeout=5)
        if message == "fail":
            raise ValueError("asked to fail")
        return ("echo", message)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    actor = Recorder()
    yield actor
    actor.stop(drain=False, timeout=5)
    assert not actor.alive


def test_messages_are_processed_in_order(recorder: Recorder) -> None:
    recorder.start()
    for number in range(1000):
        recorder.tell(number)
    assert recorder.ask("last").result(timeout=5) == ("echo", "last")
    assert recorder.seen == [*range(1000), "last"]
    assert recorder.processed == 1001


def test_ask_returns_the_value_or_raises_the_exception(recorder: Recorder) -> None:
    recorder.start()
    assert recorder.ask(42).result(timeout=5) == ("echo", 42)
    with pytest.raises(ValueError, match="asked to fail"):
        recorder.ask("fail").result(timeout=5)
    assert recorder.ask(43).result(timeout=5) == ("echo", 43)  # RESUME: still alive


def test_messages_told_before_start_are_processed_after(recorder: Recorder) -> None:
    recorder.tell(1)
    recorder.tell(2)
    recorder.start()
    assert recorder.ask(3).result(timeout=5) == ("echo", 3)
    assert recorder.seen == [1, 2, 3]


def test_hooks_run_in_the_actor_thread_in_order() -> None:
    actor = Recorder("hooks").start()
    actor.ask("x").result(timeout=5)
    assert actor.stop(timeout=5)
    assert actor.lifecycle == [("start", "hooks"), ("stop", "hooks")]
    assert actor.seen == ["x"]


def test_stop_with_drain_processes_everything_queued(recorder: Recorder) -> None:
    recorder.start()
    recorder.tell("gate")
    assert recorder.in_gate.wait(timeout=5)
    for number in range(100):
        recorder.tell(number)
    assert not recorder.stop(drain=True, timeout=0)  # still busy in the gated message
    assert recorder.stopping
    with pytest.raises(ActorStopped):
        recorder.tell("late")
    recorder.gate.set()
    assert recorder.join(timeout=5)
    assert recorder.seen == ["gate", *range(100)]
    assert recorder.lifecycle[-1][0] == "stop"


def test_stop_without_drain_fails_pending_asks(recorder: Recorder) -> None:
    recorder.start()
    in_hand = recorder.ask("gate")
    assert recorder.in_gate.wait(timeout=5)
    pending = [recorder.ask(number) for number in range(10)]
    assert not recorder.stop(drain=False, timeout=0)
    for future in pending:  # failed at once, without waiting for the message in hand
        with pytest.raises(ActorStopped):
            future.result(timeout=0)
    recorder.gate.set()
    assert recorder.join(timeout=5)
    assert in_hand.result(timeout=0) == ("echo", "gate")
    assert recorder.seen == ["gate"]
    assert recorder.lifecycle[-1][0] == "stop"


def test_a_draining_stop_can_be_cut_short(recorder: Recorder) -> None:
    recorder.start()
    recorder.tell("gate")
    assert recorder.in_gate.wait(timeout=5)
    pending = recorder.ask("queued")
    assert not recorder.stop(drain=True, timeout=0)
    assert not recorder.stop(drain=False, timeout=0)
    with pytest.raises(ActorStopped):
        pending.result(timeout=0)
    recorder.gate.set()
    assert recorder.join(timeout=5)


def test_tell_and_ask_after_stop_raise_actor_stopped(recorder: Recorder) -> None:
    recorder.start()
    assert recorder.stop(timeout=5)
    assert recorder.stop(timeout=5)  # idempotent
    with pytest.raises(ActorStopped):
        recorder.tell(1)
    with pytest.raises(ActorStopped):
        recorder.ask(1)
    assert not recorder.alive


def test_stop_before_start_fails_pending_asks_and_forbids_start() -> None:
    actor = Recorder("never-started")
    pending = actor.ask(1)
    assert actor.stop(timeout=1)
    with pytest.raises(ActorStopped):
        pending.result(timeout=0)
    with pytest.raises(RuntimeError, match="stopped before"):
        actor.start()


def test_start_twice_is_an_error(recorder: Recorder) -> None:
    recorder.start()
    with pytest.raises(RuntimeError, match="already started"):
        recorder.start()


def test_stop_from_inside_receive_does_not_join_itself() -> None:
    answers: Future[bool] = Future()

    class SelfStopper(Actor[str]):
        def receive(self, message: str) -> None:
            answers.set_result(self.stop())

    actor = SelfStopper("self-stopper").start()
    actor.tell("stop yourself")
    assert answers.result(timeout=5) is False  # could not have ended yet
    assert actor.join(timeout=5)
    assert not actor.alive


def test_non_blocking_tell_on_a_full_mailbox_raises(recorder: Recorder) -> None:
    actor = Recorder("small", capacity=2)
    actor.start()
    try:
        actor.tell("gate")
        assert actor.in_gate.wait(timeout=5)
        actor.tell(1)
        actor.tell(2)
        with pytest.raises(MailboxFull):
            actor.tell(3, block=False)
        with pytest.raises(MailboxFull):
            actor.ask(3, timeout=0.01)
        actor.tell(3, force=True)
        assert len(actor.mailbox) == 3
    finally:
        actor.gate.set()
        assert actor.stop(timeout=5)
    assert actor.seen == ["gate", 1, 2, 3]


def test_byte_bounded_mailbox_measures_messages() -> None:
    actor: Actor[bytes] = Recorder("bytes", max_bytes=10, sizeof=len)
    assert actor.mailbox.max_bytes == 10
    actor.tell(b"123456")
    with pytest.raises(MailboxFull):
        actor.tell(b"123456", block=False)
    assert actor.mailbox.nbytes == 6
    actor.stop()


def test_receive_timeout_fires_when_idle() -> None:
    idle = threading.Event()
    idle_count = 0

    class Idler(Actor[int]):
        def receive(self, message: int) -> None:
            pass

        def on_receive_timeout(self) -> None:
            nonlocal idle_count
            idle_count += 1
            if idle_count == 3:
                idle.set()

    actor = Idler("idler", receive_timeout=0.01).start()
    try:
        before = actor.last_activity
        assert idle.wait(timeout=5)
        assert actor.last_activity > before
        assert actor.processed == 0
    finally:
        assert actor.stop(timeout=5)


def test_cancelled_ask_is_skipped(recorder: Recorder) -> None:
    recorder.start()
    recorder.tell("gate")
    assert recorder.in_gate.wait(timeout=5)
    cancelled = recorder.ask("cancel me")
    assert cancelled.cancel()
    recorder.gate.set()
    assert recorder.ask("after").result(timeout=5) == ("echo", "after")
    assert recorder.seen == ["gate", "after"]
    with pytest.raises(CancelledError):
        cancelled.result(timeout=0)


def test_current_envelope_exposes_queue_wait_and_activity(recorder: Recorder) -> None:
    assert recorder.current_envelope is None
    recorder.tell("gate")
    recorder.start()
    assert recorder.in_gate.wait(timeout=5)
    envelope = recorder.current_envelope
    assert isinstance(envelope, Envelope)
    assert envelope.message == "gate"
    assert envelope.reply is None
    recorder.gate.set()
    recorder.ask("next").result(timeout=5)
    assert recorder.current_envelope is None
    assert all(wait >= 0 for wait in recorder.wait_times)
    assert time.monotonic() >= recorder.last_activity >= envelope.enqueued_at
    assert recorder.processed == 2


def test_actor_threads_are_named_daemons(recorder: Recorder) -> None:
    recorder.start()
    threads = [thread for thread in threading.enumerate() if thread.name == "recorder"]
    assert len(threads) == 1
    assert threads[0].daemon
    assert "alive" in repr(recorder)


def test_receive_must_be_implemented() -> None:
    caught: Future[BaseException] = Future()

    def record(failure: Failure) -> Directive:
        caught.set_result(failure.error)
        return Directive.RESUME

    actor: Actor[int] = Actor("abstract", supervisor=OneForOneSupervisor(decider=record))
    actor.start()
    actor.tell(1)
    assert isinstance(caught.result(timeout=5), NotImplementedError)
    assert actor.stop(timeout=5)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="name"):
        Actor("")
    with pytest.raises(ValueError, match="receive_timeout"):
        Actor("x", receive_timeout=0)


def test_subclass_private_names_do_not_collide_with_the_runtime() -> None:
    class Busy(Actor[int]):
        def __init__(self) -> None:
            super().__init__("busy")
            self._name = "mine"
            self._thread = None
            self._stopping = "mine"
            self._mailbox = "mine"
            self._processed: list[int] = []

        def _process(self, message: int) -> int:
            self._processed.append(message)
            return message * 2

        def _stop(self) -> None:
            raise AssertionError("the runtime must not call a subclass's _stop")

        def receive(self, message: int) -> int:
            return self._process(message)

    actor = Busy().start()
    assert actor.ask(21).result(timeout=5) == 42
    assert actor.stop(timeout=5)
    assert actor.name == "busy"
    assert actor.processed == 1
    assert actor._processed == [21]


def test_an_actor_with_a_deadline_of_its_own_sets_each_wait() -> None:
    # The constructor's receive_timeout (an hour) never elapses here: the actor's own
    # deadline, asked before every wait, is due at once.
    due = threading.Event()
    waits: list[float | None] = []

    class Deadline(Actor[int]):
        def receive(self, message: int) -> None:
            pass

        def next_receive_timeout(self) -> float | None:
            waits.append(super().next_receive_timeout())
            return 0.0

        def on_receive_timeout(self) -> None:
            due.set()

    actor = Deadline("deadline", receive_timeout=3600).start()
    try:
        assert due.wait(timeout=5)
        assert waits[0] == 3600  # what the base class would have waited
    finally:
        assert actor.stop(timeout=5)
