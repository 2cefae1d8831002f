"""The actor: one thread draining one bounded mailbox, one message at a time.

An actor handles its messages strictly in mailbox order and never concurrently, so
`receive` may use the actor's state without locks. Senders `tell` (fire and forget) or
`ask` (get a `Future` for `receive`'s return value). Each envelope carries the sender's
OpenTelemetry context; the actor thread attaches it around `receive` and detaches it
afterwards, so spans started in `receive` are children of the sender's span and
`current_correlation_id()` returns the sender's id. Between messages the actor thread's
context is empty.

Threads are daemon threads. Durability never depends on an actor finishing its work
(the pipeline commits a source offset only after the data is durable), the orderly
path is an explicit `stop()` / `ActorSystem.stop()`, and a non-daemon thread would turn
any forgotten stop, or a crash of the main thread, into a process that never exits.

Failures go to the actor's supervisor; see `actors.supervision` for the directives.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Generic, Self, TypeVar

from opentelemetry import context as otel_context

from actors.cputime import thread_finished
from actors.envelope import Envelope
from actors.mailbox import Mailbox, MailboxClosed
from actors.supervision import ActorRuntimeError, Directive, Failure, Supervisor, default_supervisor

M = TypeVar("M")

__all__ = ["Actor", "ActorStopped"]

logger = logging.getLogger(__name__)

_get_current_context = otel_context.get_current
_attach_context = otel_context.attach
_detach_context = otel_context.detach
_monotonic = time.monotonic


class ActorStopped(Exception):  # noqa: N818 - public name fixed by the API
    """The actor (or pool) is stopping or stopped: the message was not, and will not
    be, handled."""


class Actor(Generic[M]):
    """Subclass and implement receive(). One thread per actor.

    `capacity`, `max_bytes` and `sizeof` bound the actor's own mailbox (`sizeof`
    measures a message, not its envelope). `receive_timeout` makes the actor call
    `on_receive_timeout()` whenever its mailbox stayed empty that many seconds (an actor
    with deadlines of its own overrides `next_receive_timeout()`).
    `mailbox` supplies a ready-made mailbox instead (a `Pool` shares one among its
    workers; stopping any actor closes its mailbox, so stop a pool, not its workers).

    The runtime's own attributes and methods are name-mangled (`__x`), so a subclass
    is free to use any single-underscore name (`_process`, `_stop`, ...) of its own.
    """

    def __init__(
        self,
        name: str,
        *,
        capacity: int = 1000,
        max_bytes: int | None = None,
        sizeof: Callable[[M], int] | None = None,
        supervisor: Supervisor | None = None,
        receive_timeout: float | None = None,
        mailbox: Mailbox[Envelope[M]] | None = None,
    ) -> None:
        if not name:
            raise ValueError("an actor needs a non-empty name")
        if receive_timeout is not None and receive_timeout <= 0:
            raise ValueError(f"receive_timeout must be positive, got {receive_timeout}")
        if mailbox is None:
            mailbox = Mailbox(capacity, max_bytes, envelope_sizeof(sizeof))
        self.__name = name
        self.__mailbox = mailbox
        self.__supervisor: Supervisor = (
            supervisor if supervisor is not None else default_supervisor()
        )
        self.__receive_timeout = receive_timeout
        self.__thread: threading.Thread | None = None
        self.__lifecycle_lock = threading.Lock()
        self.__stopping = False
        # Set once queued messages must be failed instead of handled.
        self.__discarding = False
        self.__processed = 0
        self.__last_activity = _monotonic()
        self.__current_envelope: Envelope[M] | None = None
        # Wired by ActorSystem.spawn and Pool; see _set_escalation_handler/_join_pool.
        self.__escalation_handler: Callable[[Failure], None] | None = None
        self.__mailbox_shared = False
        self.__on_exit: Callable[[], None] | None = None

    # -- subclass hooks ------------------------------------------------------------

    def receive(self, message: M) -> Any:
        """Handle one message; the return value answers an `ask`."""
        raise NotImplementedError(f"{type(self).__name__} must implement receive()")

    def on_start(self) -> None:
        """Runs in the actor thread before the first message."""

    def on_stop(self) -> None:
        """Runs in the actor thread after the last message (also after a failed start)."""

    def on_restart(self, error: BaseException) -> None:
        """Runs on a RESTART directive; by default `on_stop()` then `on_start()`."""
        self.on_stop()
        self.on_start()

    def on_receive_timeout(self) -> None:
        """Runs when the mailbox stayed empty for `receive_timeout` seconds."""

    def next_receive_timeout(self) -> float | None:
        """How long the coming wait for a message may last before `on_receive_timeout()`
        runs; asked before every wait. The `receive_timeout` given at construction, unless
        the actor keeps a deadline of its own (0: at once, if no message is waiting)."""
        return self.__receive_timeout

    # -- API -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start the actor's thread; returns self (typed as the subclass)."""
        with self.__lifecycle_lock:
            if self.__thread is not None:
                raise RuntimeError(f"actor {self.__name!r} was already started")
            if self.__stopping:
                raise RuntimeError(f"actor {self.__name!r} was stopped before it started")
            self.__thread = threading.Thread(target=self.__run, name=self.__name, daemon=True)
            self.__thread.start()
        return self

    def tell(
        self,
        message: M,
        *,
        block: bool = True,
        timeout: float | None = None,
        force: bool = False,
        size: int | None = None,
    ) -> None:
        """Queue `message`, waiting for room unless `block` is false (`force`, and `size`
        when the caller has measured the message already, as for `Mailbox.put`). Raises
        `ActorStopped` when the actor is stopping or stopped, `MailboxFull` when there is
        no room in time."""
        try:
            self.__mailbox.put(
                Envelope(message, _get_current_context(), None, _monotonic()),
                block=block,
                timeout=timeout,
                force=force,
                size=size,
            )
        except MailboxClosed:
            raise ActorStopped(f"actor {self.__name!r} is stopped") from None

    def ask(self, message: M, *, timeout: float | None = None) -> Future[Any]:
        """Queue `message`; the future gets `receive`'s result or exception.

        `timeout` bounds the enqueue only (raising `MailboxFull`); bound the wait for
        the answer with `future.result(timeout)`. Cancelling the future before the
        actor reaches the message skips it.
        """
        reply: Future[Any] = Future()
        try:
            self.__mailbox.put(
                Envelope(message, _get_current_context(), reply, _monotonic()),
                timeout=timeout,
            )
        except MailboxClosed:
            raise ActorStopped(f"actor {self.__name!r} is stopped") from None
        return reply

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop accepting messages and end the thread; True if it ended within timeout.

        drain=True: everything already queued is handled, then `on_stop`.
        drain=False: the message in hand is finished, everything still queued is
        dropped at once (ask-futures fail with `ActorStopped`), then `on_stop`.
        Idempotent, and a later drain=False may cut short an earlier drain=True that
        is taking too long. An actor stopped before it started handles nothing: what
        was queued is dropped (ask-futures fail with `ActorStopped`). Called from the
        actor's own thread it does not wait (and returns False: the thread cannot have
        ended yet).
        """
        started = self._request_stop(drain=drain)
        self.__mailbox.close()
        if not drain or not started:
            fail_all(self.__mailbox.drain(), self.__name)
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it has (or never started). From the
        actor's own thread it returns False at once."""
        thread = self.__thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False  # the actor itself cannot wait for its own end
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def name(self) -> str:
        return self.__name

    @property
    def mailbox(self) -> Mailbox[Envelope[M]]:
        return self.__mailbox

    @property
    def alive(self) -> bool:
        """True while the actor's thread runs."""
        thread = self.__thread
        return thread is not None and thread.is_alive()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested or the actor stopped on its own."""
        return self.__stopping

    @property
    def discarding(self) -> bool:
        """True once queued messages are dropped instead of handled: a stop without
        drain, or a STOP/ESCALATE directive. `on_stop` can read it to skip a final flush."""
        return self.__discarding

    @property
    def processed(self) -> int:
        """Messages handled so far, successfully or not (for health and metrics)."""
        return self.__processed

    @property
    def last_activity(self) -> float:
        """`time.monotonic()` when the actor last started or finished a message (or
        started, or timed out idle): a liveness signal."""
        return self.__last_activity

    @property
    def current_envelope(self) -> Envelope[M] | None:
        """The envelope being handled (inside `receive`), else None; e.g.
        `time.monotonic() - self.current_envelope.enqueued_at` is the queue wait."""
        return self.__current_envelope

    @property
    def supervisor(self) -> Supervisor:
        return self.__supervisor

    def __repr__(self) -> str:
        state = "alive" if self.alive else ("stopping" if self.__stopping else "idle")
        return f"<{type(self).__name__} {self.__name!r} {state} queued={len(self.__mailbox)}>"

    # -- wiring used by Pool and ActorSystem -----------------------------------------

    def _set_escalation_handler(self, handler: Callable[[Failure], None] | None) -> None:
        self.__escalation_handler = handler

    def _request_stop(self, *, drain: bool) -> bool:
        """Mark the actor stopping (and discarding unless `drain`); True if started.

        Separate from `stop` so a pool can flag all its workers before it empties
        their shared mailbox, and none of them takes one more message in between.
        """
        with self.__lifecycle_lock:
            self.__stopping = True
            if not drain:
                self.__discarding = True
            return self.__thread is not None

    def _join_pool(self, mailbox: Mailbox[Envelope[M]], on_exit: Callable[[], None]) -> None:
        """Replace this (unstarted, empty) actor's mailbox with a pool's shared one."""
        if self.__thread is not None or self.__stopping:
            raise RuntimeError(f"actor {self.__name!r} must be new to join a pool")
        if len(self.__mailbox):
            raise RuntimeError(f"actor {self.__name!r} already has queued messages")
        self.__mailbox = mailbox
        self.__mailbox_shared = True
        self.__on_exit = on_exit

    # -- the actor thread ------------------------------------------------------------

    def __run(self) -> None:
        try:
            if self.__start():
                self.__loop()
            self.__stop()
        except BaseException as bug:
            self.__runtime_fault(bug)
        finally:
            try:
                self.__finish()
            finally:
                thread_finished()  # its CPU seconds outlive the thread (actors.cputime)

    def __start(self) -> bool:
        self.__last_activity = _monotonic()
        try:
            self.on_start()
        except BaseException as error:
            failure = Failure(self.__name, error, None)
            return self.__apply(self.__decide(failure), failure)
        return True

    def __loop(self) -> None:
        get = self.__mailbox.get
        next_receive_timeout = self.next_receive_timeout
        while True:
            try:
                envelope = get(next_receive_timeout())
            except queue.Empty:
                if not self.__idle():
                    return
                continue
            except MailboxClosed:
                return
            if self.__discarding:
                fail_all((envelope,), self.__name)
                continue
            if not self.__process(envelope):
                return

    def __process(self, envelope: Envelope[M]) -> bool:
        """Handle one envelope; False when a directive ended the loop."""
        reply = envelope.reply
        if reply is not None and not reply.set_running_or_notify_cancel():
            return True  # the asker cancelled before we got here
        self.__current_envelope = envelope
        self.__last_activity = _monotonic()
        token = _attach_context(envelope.context)
        try:
            result = self.receive(envelope.message)
        except BaseException as error:
            if reply is not None:
                reply.set_exception(error)
            # Decided with the sender's context attached: the supervisor's log line
            # carries the message's correlation id and trace.
            failure = Failure(self.__name, error, envelope.message)
            directive = self.__decide(failure)
        else:
            if reply is not None:
                reply.set_result(result)
            return True
        finally:
            _detach_context(token)
            self.__current_envelope = None
            self.__processed += 1
            self.__last_activity = _monotonic()
        return self.__apply(directive, failure)

    def __idle(self) -> bool:
        self.__last_activity = _monotonic()
        try:
            self.on_receive_timeout()
        except BaseException as error:
            failure = Failure(self.__name, error, None)
            return self.__apply(self.__decide(failure), failure)
        return True

    def __stop(self) -> None:
        try:
            self.on_stop()
        except BaseException as error:
            failure = Failure(self.__name, error, None)
            if self.__decide(failure) is Directive.ESCALATE:
                self.__escalate(failure)

    def __decide(self, failure: Failure) -> Directive:
        try:
            directive = self.__supervisor.on_failure(self, failure)
        except BaseException:
            logger.exception("supervisor of actor %r failed; escalating", self.__name)
            return Directive.ESCALATE
        if not isinstance(directive, Directive):
            logger.error(
                "supervisor of actor %r answered %r, not a Directive; escalating",
                self.__name,
                directive,
            )
            return Directive.ESCALATE
        return directive

    def __apply(self, directive: Directive, failure: Failure) -> bool:
        """Carry out `directive` for `failure`; False when the actor must stop."""
        while directive is Directive.RESTART:
            try:
                self.on_restart(failure.error)
            except BaseException as error:
                failure = Failure(self.__name, error, None)
                directive = self.__decide(failure)
            else:
                return True
        if directive is Directive.RESUME:
            return True
        if directive is Directive.ESCALATE:
            self.__escalate(failure)
        self.__halt()
        return False

    def __halt(self) -> None:
        """Stop from inside: refuse new messages and drop the pending ones. A pool
        worker only leaves; its siblings keep serving the shared mailbox."""
        self.__stopping = True
        if not self.__mailbox_shared:
            self.__discarding = True
            self.__mailbox.close()
            fail_all(self.__mailbox.drain(), self.__name)

    def __escalate(self, failure: Failure) -> None:
        handler = self.__escalation_handler
        if handler is None:
            return
        try:
            handler(failure)
        except Exception:
            logger.exception("escalation handler failed for actor %r", self.__name)

    def __runtime_fault(self, bug: BaseException) -> None:
        logger.critical("actor %r: runtime loop failed", self.__name, exc_info=bug)
        fault = ActorRuntimeError(f"actor {self.__name!r}: runtime loop failed: {bug!r}")
        fault.__cause__ = bug
        failure = Failure(self.__name, fault, None)
        self.__decide(failure)  # shown to the supervisor; escalated whatever it answers
        self.__escalate(failure)
        self.__halt()

    def __finish(self) -> None:
        self.__stopping = True
        self.__current_envelope = None
        if self.__mailbox_shared:
            if self.__on_exit is not None:
                self.__on_exit()
        else:
            self.__mailbox.close()
            fail_all(self.__mailbox.drain(), self.__name)


def envelope_sizeof(
    sizeof: Callable[[M], int] | None,
) -> Callable[[Envelope[M]], int] | None:
    """Lift a message size function to envelopes (None stays None)."""
    if sizeof is None:
        return None
    measure = sizeof

    def measure_envelope(envelope: Envelope[M]) -> int:
        return measure(envelope.message)

    return measure_envelope


def post(
    mailbox: Mailbox[Envelope[M]],
    message: M,
    reply: Future[Any] | None,
    *,
    block: bool = True,
    timeout: float | None = None,
    force: bool = False,
) -> None:
    """Wrap `message` with the current context and queue it (for pools and routers)."""
    mailbox.put(
        Envelope(message, _get_current_context(), reply, _monotonic()),
        block=block,
        timeout=timeout,
        force=force,
    )


def fail_all(envelopes: Iterable[Envelope[Any]], name: str) -> None:
    """Fail the ask-futures of envelopes that will never be handled."""
    for envelope in envelopes:
        reply = envelope.reply
        if reply is None:
            continue
        try:
            if reply.set_running_or_notify_cancel():
                reply.set_exception(ActorStopped(f"actor {name!r} stopped before the message"))
        except (InvalidStateError, RuntimeError):
            pass  # already answered or cancelled
