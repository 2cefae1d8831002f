"""The actor system: starts actors and pools, collects escalations, stops in order."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from actors.actor import Actor
from actors.pool import Pool
from actors.supervision import Failure

__all__ = ["ActorSystem"]

logger = logging.getLogger(__name__)

A = TypeVar("A", bound="Actor[Any] | Pool[Any]")


class ActorSystem:
    """Owns actors/pools, a default supervisor, and an orderly shutdown.

    Every failure escalated by an actor the system spawned (by the actor's supervisor
    answering ESCALATE, by the default supervisor of an actor created without one, or
    by a runtime fault) is recorded in `failures`, wakes `wait_failure`, and is passed
    to `on_failure` (called in the failing actor's thread; its exceptions are logged).
    A typical main thread runs until `wait_failure()` returns a failure or a shutdown
    signal arrives, then calls `stop()`.
    """

    def __init__(
        self,
        name: str = "actors",
        *,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> None:
        self._name = name
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self._spawned: list[Actor[Any] | Pool[Any]] = []
        self._failures: list[Failure] = []
        self._stopped = False

    @property
    def name(self) -> str:
        return self._name

    def spawn(self, actor: A) -> A:
        """Start `actor` (an Actor or a Pool), route its escalations here, record it."""
        with self._cond:
            if self._stopped:
                raise RuntimeError(f"actor system {self._name!r} is stopped")
            actor._set_escalation_handler(self._record_failure)
            actor.start()
            self._spawned.append(actor)
        return actor

    @property
    def spawned(self) -> tuple[Actor[Any] | Pool[Any], ...]:
        """What was spawned, in spawn order."""
        with self._cond:
            return tuple(self._spawned)

    def stop(self, *, timeout: float | None = None) -> bool:
        """Stop everything in REVERSE spawn order, draining, within one overall deadline.

        Spawn downstream consumers first and their upstream producers after them: a
        producer then stops (and stops sending) before the consumer it feeds, and
        every consumer still drains what it was sent. Actors whose turn comes after
        the deadline are still told to stop, just not waited for. True if every
        thread ended in time. Idempotent; no spawn is accepted afterwards.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._stopped = True
            spawned = list(reversed(self._spawned))
        ended = True
        for actor in spawned:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ended = actor.stop(drain=True, timeout=remaining) and ended
        return ended

    @property
    def failures(self) -> list[Failure]:
        """The escalated failures seen so far, oldest first (a copy)."""
        with self._cond:
            return list(self._failures)

    def wait_failure(self, timeout: float | None = None) -> Failure | None:
        """The first escalated failure, waiting up to `timeout` for one; None if none."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._failures), timeout)
            return self._failures[0] if self._failures else None

    def __enter__(self) -> ActorSystem:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _record_failure(self, failure: Failure) -> None:
        with self._cond:
            self._failures.append(failure)
            self._cond.notify_all()
        if self._on_failure is not None:
            try:
                self._on_failure(failure)
            except Exception:
                logger.exception("on_failure handler of actor system %r failed", self._name)
