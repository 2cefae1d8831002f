"""Process-wide pipeline counters, updated once per batch (never per message)."""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["PipelineStats"]


class PipelineStats:
    """Thread-safe named counters: ``messages_consumed``, ``rows_inserted``, ``retries``...

    Counters are bumped per batch by the actor that finished the work, so the lock is
    taken a few thousand times per second at most.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        #: time.monotonic() when the first message was consumed, and of the latest write.
        self.first_consumed_at: float | None = None
        self.last_written_at: float | None = None

    def busy_seconds(self) -> float | None:
        """Seconds from the first consumed message to the latest committed write."""
        if self.first_consumed_at is None or self.last_written_at is None:
            return None
        return max(0.0, self.last_written_at - self.first_consumed_at)

    def add(self, **deltas: int) -> None:
        with self._lock:
            self._counts.update(deltas)

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
