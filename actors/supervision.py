"""What happens when an actor raises.

Every exception raised by an actor's `receive`, `on_start`, `on_stop`, `on_restart` or
`on_receive_timeout` becomes a `Failure` handed to the actor's `Supervisor`, which
answers with a `Directive`:

RESUME
    Drop the failed message, keep the actor's state, go on with the next message.
RESTART
    Call `actor.on_restart(error)` (by default `on_stop()` then `on_start()`, which
    resets the state `on_start` builds), then go on with the next message. A failure
    inside `on_restart` is a new failure for the supervisor.
STOP
    Stop the actor: its pending messages are dropped and their ask-futures fail with
    `ActorStopped`; `on_stop` still runs, then the thread ends. A pool worker that
    stops leaves the shared queue to its siblings; when the last worker of a pool
    ends, the pool's queue is closed and its pending messages dropped the same way.
ESCALATE
    Stop the actor as for STOP and hand the failure upwards: the supervisor's own
    escalation callback (`OneForOneSupervisor(on_escalate=...)`) and the handler of
    the `ActorSystem` that spawned the actor (`ActorSystem(on_failure=...)`,
    `ActorSystem.wait_failure()`); the application decides, e.g. shuts down with an
    error.

In every case the ask-future of the failed message (if any) fails with the original
exception. A failure in `on_start` is supervised like any other (RESUME: carry on as
if started; RESTART: `on_restart`). A failure in `on_stop` is reported too, but the
actor is ending anyway: only ESCALATE has an effect there.

No actor thread dies silently. An exception escaping the runtime's own loop (a bug in
the runtime or in a supervisor, not in the actor) is logged with its traceback,
wrapped in `ActorRuntimeError`, shown to the supervisor, and escalated whatever the
supervisor answers. An actor created without a supervisor gets one that logs each
failure with its traceback and escalates.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from actors.actor import Actor

__all__ = [
    "ActorRuntimeError",
    "Directive",
    "Failure",
    "OneForOneSupervisor",
    "Supervisor",
    "escalate_always",
    "restart_on_exception",
]

logger = logging.getLogger(__name__)


class Directive(enum.Enum):
    """A supervisor's answer to a failure (semantics in the module docstring)."""

    RESUME = "resume"
    RESTART = "restart"
    STOP = "stop"
    ESCALATE = "escalate"


@dataclass(frozen=True)
class Failure:
    """One failure of one actor. `message` is the message being handled, or None when
    the failure happened in a lifecycle hook or in the runtime itself."""

    actor_name: str
    error: BaseException
    message: object | None


class ActorRuntimeError(Exception):
    """An exception escaped the actor runtime's own loop (its `__cause__`).

    This is a bug outside the actor's hooks; the actor cannot safely go on, so the
    failure is always escalated.
    """


class Supervisor(Protocol):
    """Decides what an actor does after a failure. Called in the failing actor's
    thread; one supervisor may serve several actors concurrently."""

    def on_failure(self, actor: Actor[Any], failure: Failure) -> Directive: ...


def restart_on_exception(failure: Failure) -> Directive:
    """RESTART for an `Exception`, ESCALATE for anything else (`SystemExit`, ...)."""
    return Directive.RESTART if isinstance(failure.error, Exception) else Directive.ESCALATE


def escalate_always(failure: Failure) -> Directive:
    """ESCALATE every failure: the actor stops and the application decides."""
    return Directive.ESCALATE


_LOG_LEVELS = {
    Directive.RESUME: logging.WARNING,
    Directive.RESTART: logging.WARNING,
    Directive.STOP: logging.ERROR,
    Directive.ESCALATE: logging.ERROR,
}


class OneForOneSupervisor:
    """Applies `decider` to each failure of each supervised actor on its own.

    Restarts are budgeted per actor: a RESTART that would be the actor's
    `max_restarts + 1`-th within `within_seconds` becomes ESCALATE, so a failure that
    a restart cannot fix does not loop forever. On ESCALATE `on_escalate` is called
    (in the failing actor's thread; its exceptions are logged, not raised) and the
    runtime stops the actor. `ActorRuntimeError`s are escalated whatever the decider says.
    Every failure is logged with the directive taken, and with its traceback unless
    `traceback_for` says the error is an expected condition that its message explains.
    """

    def __init__(
        self,
        decider: Callable[[Failure], Directive] | None = None,
        max_restarts: int = 3,
        within_seconds: float = 60.0,
        on_escalate: Callable[[Failure], None] | None = None,
        traceback_for: Callable[[BaseException], bool] = lambda _error: True,
    ) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be non-negative, got {max_restarts}")
        if within_seconds <= 0:
            raise ValueError(f"within_seconds must be positive, got {within_seconds}")
        self._decider = decider if decider is not None else restart_on_exception
        self._max_restarts = max_restarts
        self._within_seconds = within_seconds
        self._on_escalate = on_escalate
        self._traceback_for = traceback_for
        self._lock = threading.Lock()
        # Weak keys: supervising an actor must not keep it alive.
        self._restarts: weakref.WeakKeyDictionary[Actor[Any], deque[float]] = (
            weakref.WeakKeyDictionary()
        )

    def on_failure(self, actor: Actor[Any], failure: Failure) -> Directive:
        if isinstance(failure.error, ActorRuntimeError):
            directive = Directive.ESCALATE
        else:
            directive = self._decider(failure)
            if directive is Directive.RESTART and not self._restart_allowed(actor):
                logger.error(
                    "actor %r restarted %d times within %.0f s; escalating",
                    failure.actor_name,
                    self._max_restarts,
                    self._within_seconds,
                )
                directive = Directive.ESCALATE
        logger.log(
            _LOG_LEVELS.get(directive, logging.ERROR),
            "actor %r failed (%s); directive %s",
            failure.actor_name,
            type(failure.error).__name__,
            directive.name,
            exc_info=failure.error if self._traceback_for(failure.error) else None,
        )
        if directive is Directive.ESCALATE and self._on_escalate is not None:
            try:
                self._on_escalate(failure)
            except Exception:
                logger.exception("escalation callback failed for actor %r", failure.actor_name)
        return directive

    def _restart_allowed(self, actor: Actor[Any]) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = self._restarts.setdefault(actor, deque())
            while recent and now - recent[0] > self._within_seconds:
                recent.popleft()
            if len(recent) >= self._max_restarts:
                return False
            recent.append(now)
            return True


def default_supervisor() -> OneForOneSupervisor:
    """The supervisor of an actor created without one: log with traceback, escalate."""
    return OneForOneSupervisor(decider=escalate_always)
