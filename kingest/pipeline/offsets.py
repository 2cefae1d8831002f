"""Contiguous acknowledgement tracking for one partition (a pure data structure).

A partition's messages reach PostgreSQL in *write batches*: consecutive runs of the
partition's offsets, registered here in offset order before they are written. Writers
finish batches in any order; a batch is acknowledged once its rows (and its dead letters)
are committed in PostgreSQL. The next offset that is safe to commit to Kafka is one past
the last offset of the longest acknowledged prefix of registered batches: every message
below it is durable, whatever order the writes finished in (invariant 1 of
``docs/design.md``: no loss).

Offsets inside a partition need not be consecutive (compacted topics, transaction
markers), so progress is tracked by registered ranges, never by ``offset + 1``
arithmetic across batches.
"""

from __future__ import annotations

from collections import deque

__all__ = ["OffsetRangeError", "PartitionOffsets"]


class OffsetRangeError(ValueError):
    """A range was registered out of order or overlapping an earlier one."""


class _Range:
    __slots__ = ("acked", "first", "last")

    def __init__(self, first: int, last: int) -> None:
        self.first = first
        self.last = last
        self.acked = False


class PartitionOffsets:
    """Registered write batches of one partition and the committable position."""

    __slots__ = ("_by_first", "_committable", "_last_registered", "_pending")

    def __init__(self) -> None:
        self._pending: deque[_Range] = deque()
        self._by_first: dict[int, _Range] = {}
        self._last_registered = -1
        self._committable: int | None = None

    def register(self, first: int, last: int) -> None:
        """Record a batch covering offsets ``first..last`` (inclusive), in offset order."""
        if first < 0 or last < first:
            raise OffsetRangeError(f"invalid range {first}..{last}")
        if first <= self._last_registered:
            raise OffsetRangeError(
                f"range {first}..{last} does not follow the last registered offset "
                f"{self._last_registered}"
            )
        entry = _Range(first, last)
        self._pending.append(entry)
        self._by_first[first] = entry
        self._last_registered = last

    def ack(self, first: int) -> bool:
        """Mark the batch starting at ``first`` durable; False if no such batch is pending.

        Acknowledging twice, or acknowledging a batch this tracker never registered (a late
        completion from an earlier assignment), changes nothing.
        """
        entry = self._by_first.get(first)
        if entry is None:
            return False
        entry.acked = True
        pending = self._pending
        while pending and pending[0].acked:
            done = pending.popleft()
            del self._by_first[done.first]
            self._committable = done.last + 1
        return True

    @property
    def committable(self) -> int | None:
        """The offset to commit (last contiguous acknowledged offset + 1), None before any."""
        return self._committable

    @property
    def pending_batches(self) -> int:
        """Registered batches not yet part of the acknowledged prefix."""
        return len(self._pending)

    @property
    def unacked_batches(self) -> int:
        """Registered batches not acknowledged yet (queued or being written)."""
        return sum(1 for entry in self._pending if not entry.acked)

    @property
    def oldest_pending(self) -> int | None:
        """First offset of the oldest batch that holds the committable position back."""
        return self._pending[0].first if self._pending else None

    @property
    def drained(self) -> bool:
        """True when every registered batch has been acknowledged."""
        return not self._pending
