"""Several actors behind one address: a pool sharing one mailbox, and routers.

A `Pool` gives N worker actors ONE bounded mailbox. An idle worker takes the next
message as soon as it is free, so work is balanced by construction and a slow message
never holds up the others, but messages finish in no particular order. The shared
bound throttles all senders together.

The routers spread messages over actors that keep their own mailboxes:
`RoundRobinRouter` in turn, `KeyRouter` by a key, so that messages with the same key
always reach the same actor and keep their relative order.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, Self, TypeVar

from actors.actor import Actor, ActorStopped, envelope_sizeof, fail_all, post
from actors.envelope import Envelope
from actors.mailbox import Mailbox, MailboxClosed
from actors.supervision import Failure

M = TypeVar("M")

__all__ = ["KeyRouter", "Pool", "RoundRobinRouter", "Router"]


class Pool(Generic[M]):
    """N worker actors sharing ONE bounded mailbox (work-stealing by construction).

    `factory(i)` builds worker `i` (unstarted; give each a distinct name). The pool
    replaces each worker's own mailbox with the shared one, bounded by `capacity`,
    `max_bytes` and `sizeof` (the bounds given to the workers themselves are unused).
    Each worker keeps its own supervisor. A worker stopped by a directive leaves the
    others serving the mailbox; when the last one ends, the mailbox is closed and what
    is still queued is dropped (ask-futures fail with `ActorStopped`), so senders are
    never left blocked on a pool that nobody drains.
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[int], Actor[M]],
        size: int,
        *,
        capacity: int,
        max_bytes: int | None = None,
        sizeof: Callable[[M], int] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, got size={size}")
        self._name = name
        self._mailbox: Mailbox[Envelope[M]] = Mailbox(capacity, max_bytes, envelope_sizeof(sizeof))
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False
        self._live_workers = 0
        workers = []
        for index in range(size):
            worker = factory(index)
            worker._join_pool(self._mailbox, self._worker_exited)
            workers.append(worker)
        self._workers = tuple(workers)

    def start(self) -> Self:
        """Start every worker; returns self."""
        with self._lock:
            if self._started:
                raise RuntimeError(f"pool {self._name!r} was already started")
            if self._stopping:
                raise RuntimeError(f"pool {self._name!r} was stopped before it started")
            self._started = True
            # Counted up front: a worker that fails at once must not see itself as
            # the last one while its siblings are still being started.
            self._live_workers = len(self._workers)
            for worker in self._workers:
                worker.start()
        return self

    def tell(
        self,
        message: M,
        *,
        block: bool = True,
        timeout: float | None = None,
        force: bool = False,
    ) -> None:
        """As `Actor.tell`, into the shared mailbox."""
        try:
            post(self._mailbox, message, None, block=block, timeout=timeout, force=force)
        except MailboxClosed:
            raise ActorStopped(f"pool {self._name!r} is stopped") from None

    def ask(self, message: M, *, timeout: float | None = None) -> Future[Any]:
        """As `Actor.ask`; whichever worker takes the message answers."""
        reply: Future[Any] = Future()
        try:
            post(self._mailbox, message, reply, timeout=timeout)
        except MailboxClosed:
            raise ActorStopped(f"pool {self._name!r} is stopped") from None
        return reply

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> bool:
        """Close the shared mailbox once and stop every worker, all within `timeout`.

        drain=True: the workers handle everything queued, each ends when the mailbox
        is closed and empty. drain=False: what is queued is dropped after the messages
        in hand. True if every worker thread ended in time. Idempotent.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._stopping = True
            started = self._started
        for worker in self._workers:
            worker._request_stop(drain=drain)
        self._mailbox.close()
        if not drain or not started:
            fail_all(self._mailbox.drain(), self._name)
        return self.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every worker to end, all within `timeout`; True if they have
        (False when called from a worker, which cannot wait for itself)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = True
        for worker in self._workers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ended = worker.join(remaining) and ended
        return ended

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def mailbox(self) -> Mailbox[Envelope[M]]:
        return self._mailbox

    @property
    def workers(self) -> tuple[Actor[M], ...]:
        return self._workers

    @property
    def alive(self) -> bool:
        """True while every worker runs (a pool missing a worker is degraded)."""
        return all(worker.alive for worker in self._workers)

    @property
    def stopping(self) -> bool:
        return self._stopping or self._mailbox.closed

    @property
    def processed(self) -> int:
        """Messages handled by all workers together."""
        return sum(worker.processed for worker in self._workers)

    def __repr__(self) -> str:
        live = sum(worker.alive for worker in self._workers)
        return f"<Pool {self._name!r} {live}/{len(self._workers)} alive {self._mailbox!r}>"

    def _set_escalation_handler(self, handler: Callable[[Failure], None] | None) -> None:
        for worker in self._workers:
            worker._set_escalation_handler(handler)

    def _worker_exited(self) -> None:
        with self._lock:
            self._live_workers -= 1
            last = self._live_workers == 0
        if last:
            self._mailbox.close()
            fail_all(self._mailbox.drain(), self._name)


class Router(Generic[M]):
    """Base of the routers: sends each message to the routee :meth:`route` picks.

    Safe to use from several threads. The routees are started and stopped by their
    owner (e.g. an `ActorSystem`), not by the router.
    """

    def __init__(self, routees: Sequence[Actor[M]]) -> None:
        if not routees:
            raise ValueError("a router needs at least one routee")
        self._routees = tuple(routees)

    @property
    def routees(self) -> tuple[Actor[M], ...]:
        return self._routees

    def route(self, message: M) -> Actor[M]:
        """The routee ``message`` goes to."""
        raise NotImplementedError

    def tell(
        self,
        message: M,
        *,
        block: bool = True,
        timeout: float | None = None,
        force: bool = False,
    ) -> None:
        self.route(message).tell(message, block=block, timeout=timeout, force=force)

    def ask(self, message: M, *, timeout: float | None = None) -> Future[Any]:
        return self.route(message).ask(message, timeout=timeout)


class RoundRobinRouter(Router[M]):
    """Sends each message to the next routee in turn (each keeps its own mailbox)."""

    def __init__(self, routees: Sequence[Actor[M]]) -> None:
        super().__init__(routees)
        self._counter = itertools.count()  # next() on it is atomic under the GIL

    def route(self, message: M) -> Actor[M]:
        """The routee the next message goes to."""
        return self._routees[next(self._counter) % len(self._routees)]


class KeyRouter(Router[M]):
    """Sends each message to the routee chosen by `key(message)`.

    The same key always reaches the same routee (for the life of the process: keys
    are placed by `hash()`), so messages sharing a key are handled in the order they
    were sent. Integer keys are placed deterministically (`key % len(routees)` for
    non-negative ints), which keeps e.g. partition-to-routee placement reproducible.
    """

    def __init__(self, routees: Sequence[Actor[M]], key: Callable[[M], Hashable]) -> None:
        super().__init__(routees)
        self._key = key

    def route(self, message: M) -> Actor[M]:
        """The routee that owns `message`'s key."""
        return self._routees[hash(self._key(message)) % len(self._routees)]
