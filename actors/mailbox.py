"""A thread-safe FIFO bounded by item count and by total bytes.

Every queue in the pipeline must be bounded twice: by count, because each item costs a
fixed overhead, and by bytes, because items are batches whose size varies by orders of
magnitude. One lock and one `threading.Condition` guard the state; producers waiting
for room and consumers waiting for an item sleep on that same condition.

Wake-ups are targeted where that is safe: a put wakes a single waiting consumer when no
producer is waiting (the common case, so N idle pool workers are not all woken for one
item), and wakes everyone otherwise, so that a producer is never the only thread woken
for an item only a consumer can take. A take wakes every waiting producer, because
freed bytes may let several small items in at once. Waiters only exist when the mailbox
is empty or full, so these broadcasts are rare. Every waiter re-checks its condition
after waking, also after a timeout, so a wake-up that races with a timeout is never
lost.

An item larger than `max_bytes` is still accepted into an empty mailbox: otherwise it
could never pass, and the bound would become a deadlock.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Mailbox", "MailboxClosed", "MailboxFull"]


class MailboxClosed(Exception):  # noqa: N818 - public name fixed by the API
    """The mailbox is closed: no more puts, and (for `get`) nothing is left to take."""


class MailboxFull(Exception):  # noqa: N818 - public name fixed by the API
    """No room for the item: a non-blocking put, or the put's timeout elapsed."""


class Mailbox(Generic[T]):
    """Thread-safe FIFO bounded by item count AND total bytes.

    `sizeof` measures an item in bytes; it is required when `max_bytes` is set and
    optional otherwise (then `nbytes` is still tracked, for metrics). It is called once
    per item, at put time, outside the lock; the measured size is what the mailbox
    later subtracts, so items may change after they were queued without corrupting the
    byte count.
    """

    __slots__ = (
        "_capacity",
        "_closed",
        "_cond",
        "_getters_waiting",
        "_items",
        "_max_bytes",
        "_nbytes",
        "_putters_waiting",
        "_sizeof",
        "_sizes",
    )

    def __init__(
        self,
        capacity: int,
        max_bytes: int | None = None,
        sizeof: Callable[[T], int] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_bytes is not None:
            if max_bytes < 1:
                raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
            if sizeof is None:
                raise ValueError("max_bytes needs a sizeof function to measure items")
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._sizeof = sizeof
        self._items: deque[T] = deque()
        # Sizes live in a parallel deque (only when measured) instead of (item, size)
        # tuples: no extra allocation per item on the hot path.
        self._sizes: deque[int] | None = deque() if sizeof is not None else None
        self._nbytes = 0
        self._closed = False
        self._cond = threading.Condition(threading.Lock())
        self._getters_waiting = 0
        self._putters_waiting = 0

    # -- producer side -------------------------------------------------------------

    def put(
        self,
        item: T,
        *,
        block: bool = True,
        timeout: float | None = None,
        force: bool = False,
        size: int | None = None,
    ) -> None:
        """Append `item`, waiting for room unless `block` is false.

        `size` is the item's size when the caller has measured it already (it then
        stands for `sizeof(item)`, which is not called).

        `force=True` enqueues even when over the bounds: it never blocks and never
        drops. A poll loop that must not stall uses it for what it already received,
        then pauses its source while `is_over()`.

        Raises `MailboxClosed` when the mailbox is (or becomes, while waiting) closed,
        and `MailboxFull` when there is no room and `block` is false or `timeout`
        seconds elapsed.
        """
        sizeof = self._sizeof
        if sizeof is None:
            size = 0
        elif size is None:
            size = sizeof(item)
        if size < 0:
            raise ValueError(f"negative size of a mailbox item: {size}")
        with self._cond:
            if self._closed:
                raise MailboxClosed("mailbox is closed")
            if not force and not self._has_room(size):
                if not block:
                    raise MailboxFull("mailbox is full")
                self._wait_for_room(size, timeout)
            self._items.append(item)
            if self._sizes is not None:
                self._sizes.append(size)
                self._nbytes += size
            if self._getters_waiting:
                if self._putters_waiting:
                    self._cond.notify_all()
                else:
                    self._cond.notify()

    def _has_room(self, size: int) -> bool:
        count = len(self._items)
        if count == 0:
            return True
        if count >= self._capacity:
            return False
        return self._max_bytes is None or self._nbytes + size <= self._max_bytes

    def _wait_for_room(self, size: int, timeout: float | None) -> None:
        deadline = _deadline(timeout)
        self._putters_waiting += 1
        try:
            while True:
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise MailboxFull(f"mailbox still full after {timeout} s")
                    self._cond.wait(remaining)
                if self._closed:
                    raise MailboxClosed("mailbox closed while waiting for room")
                if self._has_room(size):
                    return
        finally:
            self._putters_waiting -= 1

    # -- consumer side -------------------------------------------------------------

    def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest item, waiting up to `timeout` seconds.

        Raises `queue.Empty` when the timeout elapses, and `MailboxClosed` once the
        mailbox is closed and empty (what was queued before `close()` is still
        returned first).
        """
        with self._cond:
            if not self._items:
                if self._closed:
                    raise MailboxClosed("mailbox is closed and empty")
                self._wait_for_item(timeout)
            return self._take()

    def get_nowait(self) -> T:
        """Remove and return the oldest item, or raise `queue.Empty` at once.

        Never raises `MailboxClosed`: a non-blocking poll only says whether an item is
        available now; check `closed` to tell an empty mailbox from a finished one.
        """
        with self._cond:
            if not self._items:
                raise queue.Empty
            return self._take()

    def _take(self) -> T:
        item = self._items.popleft()
        if self._sizes is not None:
            self._nbytes -= self._sizes.popleft()
        if self._putters_waiting:
            self._cond.notify_all()
        return item

    def _wait_for_item(self, timeout: float | None) -> None:
        deadline = _deadline(timeout)
        self._getters_waiting += 1
        try:
            while True:
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise queue.Empty
                    self._cond.wait(remaining)
                if self._items:
                    return
                if self._closed:
                    raise MailboxClosed("mailbox closed while waiting for an item")
        finally:
            self._getters_waiting -= 1

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Refuse further puts; gets still return what is left, then raise
        `MailboxClosed`. Wakes every waiter. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[T]:
        """Remove and return everything queued, oldest first."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            if self._sizes is not None:
                self._sizes.clear()
            self._nbytes = 0
            if self._putters_waiting:
                self._cond.notify_all()
            return items

    # -- inspection (lock-free reads of single values: exact under the GIL) ----------

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Total measured size of the queued items (0 when there is no `sizeof`)."""
        return self._nbytes

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    def is_over(self, fraction: float = 1.0) -> bool:
        """True when the count or the bytes reach `fraction` of their bound.

        With `fraction` below 1 this gives a high-water mark, e.g. pause a source at
        `is_over(1.0)` and resume it once `not is_over(0.5)`.
        """
        if len(self._items) >= fraction * self._capacity:
            return True
        return self._max_bytes is not None and self._nbytes >= fraction * self._max_bytes

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Mailbox {state} {len(self._items)}/{self._capacity} items,"
            f" {self._nbytes}/{self._max_bytes} bytes>"
        )


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be non-negative, got {timeout}")
    return time.monotonic() + timeout
