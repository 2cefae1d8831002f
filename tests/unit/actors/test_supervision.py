"""Supervision: each directive, failures in lifecycle hooks, restart budget, runtime faults."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from actors import (
    Actor,
    ActorRuntimeError,
    ActorStopped,
    ActorSystem,
    Directive,
    Envelope,
    Failure,
    Mailbox,
    OneForOneSupervisor,
    Supervisor,
    escalate_always,
    restart_on_exception,
)


class BoomError(Exception):
    """The failure the test actors raise on purpose."""


class Stateful(Actor[str]):
    """Keeps a list built by on_start; "boom" raises, "gate" waits for `gate`."""

    def __init__(self, name: str, supervisor: Supervisor, **kwargs: Any) -> None:
        super().__init__(name, supervisor=supervisor, **kwargs)
        self.state: list[str] = ["uninitialised"]
        self.starts = 0
        self.stops = 0
        self.restart_errors: list[BaseException] = []
        self.gate = threading.Event()
        self.in_gate = threading.Event()

    def on_start(self) -> None:
        self.starts += 1
        self.state = []

    def on_stop(self) -> None:
        self.stops += 1

    def on_restart(self, error: BaseException) -> None:
        self.restart_errors.append(error)
        super().on_restart(error)

    def receive(self, message: str) -> list[str]:
        if message == "gate":
            self.in_gate.set()
            assert self.gate.wait(timeout=5)
        if message == "boom":
            raise BoomError(f"boom after {self.state}")
        self.state.append(message)
        return list(self.state)


class RecordingDecider:
    """A decider that answers a fixed directive and remembers what it saw."""

    def __init__(self, directive: Directive) -> None:
        self.directive = directive
        self.failures: list[Failure] = []

    def __call__(self, failure: Failure) -> Directive:
        self.failures.append(failure)
        return self.directive


def test_resume_drops_the_message_and_keeps_state() -> None:
    decider = RecordingDecider(Directive.RESUME)
    actor = Stateful("resume", OneForOneSupervisor(decider=decider)).start()
    try:
        actor.tell("a")
        failed = actor.ask("boom")
        assert actor.ask("b").result(timeout=5) == ["a", "b"]
        with pytest.raises(BoomError):
            failed.result(timeout=0)
        assert [failure.message for failure in decider.failures] == ["boom"]
        assert decider.failures[0].actor_name == "resume"
        assert isinstance(decider.failures[0].error, BoomError)
        assert actor.restart_errors == []
        assert actor.alive
    finally:
        assert actor.stop(timeout=5)


def test_restart_calls_on_restart_and_resets_state() -> None:
    decider = RecordingDecider(Directive.RESTART)
    actor = Stateful("restart", OneForOneSupervisor(decider=decider)).start()
    try:
        actor.tell("a")
        failed = actor.ask("boom")
        assert actor.ask("b").result(timeout=5) == ["b"]  # state rebuilt by on_start
        with pytest.raises(BoomError):
            failed.result(timeout=0)
        assert len(actor.restart_errors) == 1
        assert isinstance(actor.restart_errors[0], BoomError)
        assert (actor.starts, actor.stops) == (2, 1)  # default on_restart: stop, then start
    finally:
        assert actor.stop(timeout=5)
    assert actor.stops == 2


def test_stop_ends_the_actor_and_fails_pending_asks() -> None:
    decider = RecordingDecider(Directive.STOP)
    actor = Stateful("stop", OneForOneSupervisor(decider=decider)).start()
    actor.tell("gate")
    assert actor.in_gate.wait(timeout=5)
    failed = actor.ask("boom")
    pending = [actor.ask(str(number)) for number in range(5)]
    actor.gate.set()
    assert actor.join(timeout=5)
    with pytest.raises(BoomError):
        failed.result(timeout=0)
    for future in pending:
        with pytest.raises(ActorStopped):
            future.result(timeout=0)
    assert actor.state == ["gate"]
    assert actor.stops == 1
    assert actor.stopping
    with pytest.raises(ActorStopped):
        actor.tell("late")


def test_escalate_stops_the_actor_and_reaches_the_callback() -> None:
    escalated: Future[Failure] = Future()
    supervisor = OneForOneSupervisor(decider=escalate_always, on_escalate=escalated.set_result)
    actor = Stateful("escalate", supervisor).start()
    actor.tell("a")
    actor.tell("boom")
    failure = escalated.result(timeout=5)
    assert failure.actor_name == "escalate"
    assert failure.message == "boom"
    assert isinstance(failure.error, BoomError)
    assert actor.join(timeout=5)
    assert actor.stops == 1


def test_escalation_also_reaches_the_actor_system() -> None:
    system_failures: list[Failure] = []
    with ActorSystem("escalation", on_failure=system_failures.append) as system:
        actor = system.spawn(Stateful("escalate", OneForOneSupervisor(decider=escalate_always)))
        actor.tell("boom")
        failure = system.wait_failure(timeout=5)
        assert failure is not None
        assert failure.message == "boom"
        assert system.failures == [failure]
        assert system_failures == [failure]
        assert actor.join(timeout=5)


def test_failure_in_on_start_reaches_the_supervisor() -> None:
    decider = RecordingDecider(Directive.RESUME)

    class FailsToStart(Stateful):
        def on_start(self) -> None:
            super().on_start()
            raise BoomError("cannot start")

    actor = FailsToStart("bad-start", OneForOneSupervisor(decider=decider)).start()
    try:
        assert actor.ask("a").result(timeout=5) == ["a"]  # RESUME: carry on as if started
        assert len(decider.failures) == 1
        assert decider.failures[0].message is None
        assert str(decider.failures[0].error) == "cannot start"
    finally:
        assert actor.stop(timeout=5)


def test_failure_in_on_start_with_stop_drops_everything() -> None:
    class FailsToStart(Stateful):
        def on_start(self) -> None:
            raise BoomError("cannot start")

    actor = FailsToStart("bad-start", OneForOneSupervisor(decider=lambda _: Directive.STOP))
    pending = actor.ask("a")
    actor.start()
    assert actor.join(timeout=5)
    with pytest.raises(ActorStopped):
        pending.result(timeout=0)
    assert actor.stops == 1  # on_stop still runs to release what on_start acquired


def test_too_many_restarts_escalate() -> None:
    escalated: list[Failure] = []
    supervisor = OneForOneSupervisor(
        decider=restart_on_exception,
        max_restarts=2,
        within_seconds=60,
        on_escalate=escalated.append,
    )
    actor = Stateful("flaky", supervisor).start()
    for _ in range(2):
        with pytest.raises(BoomError):
            actor.ask("boom").result(timeout=5)
        assert actor.alive
    with pytest.raises(BoomError):
        actor.ask("boom").result(timeout=5)
    assert actor.join(timeout=5)
    assert len(actor.restart_errors) == 2
    assert len(escalated) == 1
    assert escalated[0].message == "boom"


def test_restart_budget_is_per_actor() -> None:
    supervisor = OneForOneSupervisor(decider=restart_on_exception, max_restarts=1)
    first = Stateful("first", supervisor).start()
    second = Stateful("second", supervisor).start()
    try:
        for actor in (first, second):
            with pytest.raises(BoomError):
                actor.ask("boom").result(timeout=5)
            assert actor.ask("ok").result(timeout=5) == ["ok"]
            assert actor.alive
    finally:
        assert first.stop(timeout=5)
        assert second.stop(timeout=5)


def test_failure_in_on_restart_is_a_new_failure() -> None:
    decider = RecordingDecider(Directive.RESTART)

    class BadRestart(Stateful):
        def on_restart(self, error: BaseException) -> None:
            raise BoomError("restart failed")

    supervisor = OneForOneSupervisor(decider=decider, max_restarts=1)
    actor = BadRestart("bad-restart", supervisor).start()
    actor.tell("boom")
    assert actor.join(timeout=5)  # the restart budget is spent by the failing restart
    assert [str(failure.error) for failure in decider.failures] == [
        "boom after []",
        "restart failed",
    ]
    assert decider.failures[1].message is None


def test_failure_in_on_stop_is_reported() -> None:
    escalated: Future[Failure] = Future()

    class BadStop(Stateful):
        def on_stop(self) -> None:
            raise BoomError("cannot stop")

    supervisor = OneForOneSupervisor(decider=escalate_always, on_escalate=escalated.set_result)
    actor = BadStop("bad-stop", supervisor).start()
    assert actor.stop(timeout=5)
    assert str(escalated.result(timeout=0).error) == "cannot stop"


def test_failure_in_on_receive_timeout_is_supervised() -> None:
    decider = RecordingDecider(Directive.STOP)

    class BadIdle(Stateful):
        def on_receive_timeout(self) -> None:
            raise BoomError("idle failure")

    actor = BadIdle("bad-idle", OneForOneSupervisor(decider=decider), receive_timeout=0.01)
    actor.start()
    assert actor.join(timeout=5)
    assert [str(failure.error) for failure in decider.failures] == ["idle failure"]


def test_runtime_fault_is_escalated_whatever_the_supervisor_says() -> None:
    class BrokenMailbox(Mailbox[Envelope[str]]):
        def get(self, timeout: float | None = None) -> Envelope[str]:
            raise RuntimeError("bug in the runtime")

    decider = RecordingDecider(Directive.RESUME)
    escalated: list[Failure] = []
    supervisor = OneForOneSupervisor(decider=decider, on_escalate=escalated.append)
    with ActorSystem("faults") as system:
        actor = system.spawn(Stateful("broken", supervisor, mailbox=BrokenMailbox(10)))
        failure = system.wait_failure(timeout=5)
        assert failure is not None
        assert isinstance(failure.error, ActorRuntimeError)
        assert isinstance(failure.error.__cause__, RuntimeError)
        assert actor.join(timeout=5)
    assert decider.failures == []  # the decider is not even asked
    assert escalated == [failure]


def test_a_failing_supervisor_escalates() -> None:
    class BrokenSupervisor:
        def on_failure(self, actor: Actor[Any], failure: Failure) -> Directive:
            raise RuntimeError("supervisor bug")

    with ActorSystem("bad-supervisor") as system:
        actor = system.spawn(Stateful("supervised", BrokenSupervisor()))
        actor.tell("boom")
        failure = system.wait_failure(timeout=5)
        assert failure is not None
        assert isinstance(failure.error, BoomError)
        assert actor.join(timeout=5)


def test_default_supervisor_logs_the_traceback_and_escalates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Plain(Actor[str]):
        def receive(self, message: str) -> None:
            raise BoomError(message)

    with ActorSystem("defaults") as system:
        with caplog.at_level(logging.ERROR, logger="actors"):
            actor = system.spawn(Plain("plain"))
            actor.tell("unsupervised")
            failure = system.wait_failure(timeout=5)
            assert actor.join(timeout=5)
        assert failure is not None
        assert str(failure.error) == "unsupervised"
    records = [record for record in caplog.records if record.exc_info]
    assert records
    assert records[0].exc_info is not None
    assert records[0].exc_info[1] is failure.error
    assert "ESCALATE" in records[0].getMessage()


def test_supervisor_rejects_invalid_budgets() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        OneForOneSupervisor(max_restarts=-1)
    with pytest.raises(ValueError, match="within_seconds"):
        OneForOneSupervisor(within_seconds=0)


def test_default_decider_restarts_exceptions_and_escalates_the_rest() -> None:
    assert restart_on_exception(Failure("a", BoomError(), None)) is Directive.RESTART
    assert restart_on_exception(Failure("a", SystemExit(), None)) is Directive.ESCALATE


def test_idle_timeouts_are_not_failures() -> None:
    decider = RecordingDecider(Directive.STOP)
    idled = threading.Semaphore(0)

    class Idler(Stateful):
        def on_receive_timeout(self) -> None:
            idled.release()

    actor = Idler("idle", OneForOneSupervisor(decider=decider), receive_timeout=0.005)
    actor.start()
    try:
        for _ in range(3):
            assert idled.acquire(timeout=5)
        assert actor.ask("a").result(timeout=5) == ["a"]
        assert decider.failures == []
    finally:
        assert actor.stop(timeout=5)


def test_an_expected_failure_is_logged_without_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Explained(Actor[str]):
        def receive(self, message: str) -> None:
            raise (BoomError if message == "bug" else KeyError)(message)

    supervisor = OneForOneSupervisor(
        escalate_always, traceback_for=lambda error: not isinstance(error, KeyError)
    )
    with ActorSystem("expected") as system, caplog.at_level(logging.ERROR, logger="actors"):
        for message in ("known", "bug"):
            actor = system.spawn(Explained(f"explained-{message}", supervisor=supervisor))
            actor.tell(message)
            assert actor.join(timeout=5)
    logged = {
        type(record.exc_info[1]).__name__ if record.exc_info else "none": record.getMessage()
        for record in caplog.records
        if "directive ESCALATE" in record.getMessage()
    }
    assert set(logged) == {"none", "BoomError"}
    assert "KeyError" in logged["none"]
