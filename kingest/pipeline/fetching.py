"""Which owned partitions the consumer could fetch messages for, and since when it has not.

A partition the client keeps paused on its own (or one stuck for another reason) is
never consumed, so it never shows as unacknowledged work either. The consumer loop
therefore records when each partition last fetched messages, was resumed or assigned
(:attr:`FetchWatch.fetched_at`), and about once a second how many messages each
partition kingest has not paused could fetch by the client's cached high watermark
(:attr:`FetchWatch.backlog`): the metrics and health checks read both (from other
threads: the loop writes single entries, or replaces the backlog whole).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Container, Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from kingest.kafka import TopicPartitionKey

__all__ = ["COMMITTED_TIMEOUT_S", "FETCH_CHECK_INTERVAL_S", "FetchWatch"]

log = logging.getLogger(__name__)

#: How often the loop checks which partitions have messages the consumer could fetch.
FETCH_CHECK_INTERVAL_S = 1.0
#: Longest the loop waits for the group's committed offsets of idle partitions.
COMMITTED_TIMEOUT_S = 2.0


class FetchWatch:
    """The loop's record of fetching per owned partition; see the module docstring."""

    def __init__(self, *, stall_s: float, auto_offset_reset: str) -> None:
        #: Per partition, time.monotonic() of its latest fetched messages, resume or
        #: assignment: how long a partition has gone unfetched counts from there.
        self.fetched_at: dict[TopicPartitionKey, float] = {}
        #: Per partition not paused by kingest, messages the consumer could fetch by its
        #: cached high watermark (absent: none or unknown); replaced whole.
        self.backlog: dict[TopicPartitionKey, int] = {}
        #: Where fetching starts for partitions that fetched nothing since their
        #: assignment (position unknown): the group's committed offset, looked up once.
        self._start: dict[TopicPartitionKey, int | None] = {}
        self._next_check = 0.0
        self._stall_s = stall_s
        self._auto_offset_reset = auto_offset_reset

    def release(self, tp: TopicPartitionKey) -> None:
        """Forget a partition no longer owned."""
        self.fetched_at.pop(tp, None)
        self._start.pop(tp, None)

    def check(
        self,
        consumer: Consumer,
        owned: Iterable[TopicPartitionKey],
        paused: Container[TopicPartitionKey],
    ) -> None:
        """Publish how many messages the consumer could fetch for each partition kingest
        owns and has not paused (cached high watermark minus position; local calls, no
        request), at most once per :data:`FETCH_CHECK_INTERVAL_S`, so that one with
        messages that is not fetched shows: a partition the client keeps paused on its
        own is never consumed and so never unacknowledged either."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + FETCH_CHECK_INTERVAL_S
        candidates = [TopicPartition(t, p) for t, p in owned if (t, p) not in paused]
        backlog: dict[TopicPartitionKey, int] = {}
        unknown: list[TopicPartitionKey] = []
        try:
            positions = consumer.position(candidates) if candidates else []
            for position in positions:
                tp = (position.topic, position.partition)
                start = position.offset if position.offset >= 0 else self._start.get(tp)
                if start is None:
                    # Nothing fetched since the assignment: once it has been idle for a
                    # while, learn where its fetching starts (the committed offset).
                    idle = now - self.fetched_at.get(tp, now)
                    if tp not in self._start and 2 * idle >= self._stall_s:
                        unknown.append(tp)
                    continue
                high = consumer.get_watermark_offsets(position, cached=True)[1]
                if high > start:
                    backlog[tp] = high - start
        except KafkaException as error:
            log.debug("cannot read positions and cached watermarks: %s", error)
        self.backlog = backlog
        if unknown:
            self._look_up_start(consumer, unknown)

    def _look_up_start(self, consumer: Consumer, tps: list[TopicPartitionKey]) -> None:
        """Remember where fetching starts for partitions not fetched since assigned."""
        reset = self._auto_offset_reset
        try:
            committed = consumer.committed(
                [TopicPartition(t, p) for t, p in tps], timeout=COMMITTED_TIMEOUT_S
            )
        except KafkaException as error:
            log.debug("cannot read committed offsets: %s", error)
            committed = []
        found = {(c.topic, c.partition): c for c in committed}
        for tp in tps:
            entry = found.get(tp)
            start: int | None = None
            if entry is not None and entry.error is None and entry.offset >= 0:
                start = entry.offset
            elif entry is not None and entry.error is None and reset == "earliest":
                low = consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)[0]
                start = low if low >= 0 else None
            # None (unknown, or "latest") is kept too: looked up once per assignment.
            self._start[tp] = start
