"""The consumer loop's side of offset commits: what it asked Kafka to commit, what the
broker confirmed, and the commit at the end of an assignment.

The :class:`~kingest.pipeline.committer.OffsetCommitter` knows, per partition and
assignment generation, the next offset that is durable in PostgreSQL. Only the loop
thread talks to Kafka, so it alone commits; :class:`LoopCommits` holds what it needs
to commit each offset once and no more:

* *committed*: per partition, the offset last sent to the broker (its asynchronous
  commit may still be in flight). An offset is committed again only once the
  committer reports a higher one, or once the broker rejected the commit that carried
  it (:meth:`LoopCommits.on_commit` forgets it, so the next interval sends it again);
* *confirmed*: per partition, the offset the broker said it stored (the committed
  offset gauge; read from other threads through :meth:`LoopCommits.confirmed`).

Offsets of an earlier assignment of a partition are never committed: a write that
finished after a rebalance took the partition away must not move the new owner's
position. At the end of an assignment (revoke, shutdown), :meth:`LoopCommits.final`
commits what the broker has not confirmed and reads it back, bounded by the drain
deadline. Each commit has a span (:class:`kingest.telemetry.tracing.CommitSpans`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from opentelemetry.trace import SpanContext

from kingest.kafka import TopicPartitionKey
from kingest.telemetry import PipelineStats, catalog, tracing

__all__ = ["CommitSource", "LoopCommits", "Owned", "durable_offsets"]

log = logging.getLogger(__name__)


class Owned(Protocol):
    """An owned partition, as far as commits care: the assignment it belongs to."""

    @property
    def generation(self) -> int: ...


class CommitSource(Protocol):
    """Where durable offsets come from (the :class:`OffsetCommitter`)."""

    def committable(self) -> dict[TopicPartitionKey, tuple[int, int]]:
        """``{tp: (generation, next offset to commit)}`` for partitions with progress."""
        ...

    def commit_links(self, offsets: Iterable[tuple[TopicPartitionKey, int]]) -> list[SpanContext]:
        """Span contexts of the batches that committing ``offsets`` settles."""
        ...


def durable_offsets(
    committer: CommitSource, owned: Mapping[TopicPartitionKey, Owned]
) -> dict[TopicPartitionKey, int]:
    """The next offset to commit of each owned partition with progress, counting only
    acknowledgements of the partition's current assignment (generation)."""
    durable = {}
    for tp, (generation, offset) in committer.committable().items():
        partition = owned.get(tp)
        if partition is not None and partition.generation == generation:
            durable[tp] = offset
    return durable


class LoopCommits:
    """The loop thread's offset commits; see the module docstring.

    ``owned`` is the loop's live map of owned partitions (read, never changed here).
    The committer is passed to each call rather than held: it exists only while the
    pipeline runs. Everything here runs on the loop thread except :meth:`confirmed`.
    """

    def __init__(
        self,
        owned: Mapping[TopicPartitionKey, Owned],
        *,
        stats: PipelineStats,
        group_id: str | None,
        interval_s: float,
    ) -> None:
        self._owned = owned
        self._stats = stats
        self._interval_s = interval_s
        self._spans = tracing.CommitSpans(group_id)
        self._last_progress = 0.0
        #: Per partition, the offset committed or being committed (sent to the broker).
        self._committed: dict[TopicPartitionKey, int] = {}
        #: Per partition owned now, the offset the broker confirmed as committed.
        self._confirmed: dict[TopicPartitionKey, int] = {}

    # ------------------------------------------------------------------ observation

    def committed(self) -> dict[TopicPartitionKey, int]:
        """Offsets committed or being committed, per partition (a copy)."""
        return self._committed.copy()

    def confirmed(self) -> dict[TopicPartitionKey, int]:
        """Offsets the broker confirmed, per owned partition (a copy; any thread)."""
        return self._confirmed.copy()

    def pending(
        self, committer: CommitSource, tps: Iterable[TopicPartitionKey]
    ) -> list[TopicPartition]:
        """Durable offsets of ``tps`` beyond what was committed or is being committed:
        what the next periodic commit sends."""
        return self._beyond(committer, tps, self._committed)

    def unconfirmed(
        self, committer: CommitSource, tps: Iterable[TopicPartitionKey]
    ) -> list[TopicPartition]:
        """Durable offsets of ``tps`` beyond what the broker confirmed: what the final
        commit sends (including offsets whose asynchronous commit is in flight)."""
        return self._beyond(committer, tps, self._confirmed)

    def _beyond(
        self,
        committer: CommitSource,
        tps: Iterable[TopicPartitionKey],
        known: Mapping[TopicPartitionKey, int],
    ) -> list[TopicPartition]:
        wanted = set(tps)
        return [
            TopicPartition(tp[0], tp[1], offset)
            for tp, offset in durable_offsets(committer, self._owned).items()
            if tp in wanted and known.get(tp, -1) < offset
        ]

    # ------------------------------------------------------------------ commits

    def progress(self, consumer: Consumer, committer: CommitSource, now: float) -> bool:
        """Once per commit interval, commit asynchronously the durable offsets of the
        owned partitions not committed yet; True if the interval had elapsed."""
        if now - self._last_progress < self._interval_s:
            return False
        self._last_progress = now
        offsets = self.pending(committer, self._owned)
        if offsets:
            for p in offsets:
                self._committed[(p.topic, p.partition)] = p.offset
            self._spans.started(offsets, committer)
            consumer.commit(offsets=offsets, asynchronous=True)
        return True

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's ``on_commit`` callback (on the loop thread, inside consume()).

        A failed asynchronous commit is retried by the next interval: forgetting its
        offsets makes them committable again.
        """
        self._spans.finished(error, partitions)
        failed = [p for p in partitions if p.error is not None] if error is None else partitions
        for p in failed:
            key = (p.topic, p.partition)
            if self._committed.get(key) == p.offset:
                del self._committed[key]
        if failed:
            log.warning("offset commit failed for %d partitions: %s", len(failed), error)
            self._stats.count(catalog.COMMITS, {("failed",): 1})
        else:
            self._confirm(partitions)
            self._stats.count(catalog.COMMITS, {("ok",): 1})

    def final(
        self,
        consumer: Consumer,
        committer: CommitSource,
        tps: Iterable[TopicPartitionKey],
        deadline: float,
    ) -> bool:
        """Commit the durable offsets of ``tps`` the broker has not confirmed, and wait
        until it has, at most until ``deadline``; False if it did not.

        Offsets whose asynchronous commit is still in flight are committed again: that
        commit may yet fail, or not be answered before the consumer closes.
        """
        offsets = self.unconfirmed(committer, tps)
        if not offsets:
            return True
        try:
            with self._spans.sync(offsets, committer):
                _commit_within(consumer, offsets, deadline)
        except KafkaException as error:
            log.warning("final offset commit not confirmed: %s", error)
            self._stats.count(catalog.COMMITS, {("failed",): 1})
            return False
        for p in offsets:
            self._committed[(p.topic, p.partition)] = p.offset
        self._confirm(offsets)
        self._stats.count(catalog.COMMITS, {("ok",): 1})
        return True

    def release(self, tps: Iterable[TopicPartitionKey]) -> None:
        """Forget what the broker confirmed for partitions no longer owned.

        What was committed is kept: should a partition come back, offsets up to it
        are not sent again.
        """
        for tp in tps:
            self._confirmed.pop(tp, None)

    def close(self) -> None:
        """End the spans of asynchronous commits still waiting for their result."""
        self._spans.close()

    def _confirm(self, partitions: Iterable[TopicPartition]) -> None:
        """Remember offsets the broker confirmed (the committed-offset gauge)."""
        for p in partitions:
            key = (p.topic, p.partition)
            if key in self._owned and p.offset >= 0:
                self._confirmed[key] = p.offset


def _commit_within(consumer: Consumer, offsets: list[TopicPartition], deadline: float) -> None:
    """Commit ``offsets`` and return once the group coordinator holds them; raise
    :class:`KafkaException` if it rejected them, or did not answer by ``deadline``.

    ``commit(asynchronous=False)`` cannot be bounded: librdkafka waits for its result
    without a timeout, holding it back while the coordinator is unavailable (up to
    session.timeout.ms), then each attempt may take socket.timeout.ms. An asynchronous
    commit's result comes to ``on_commit`` only through ``consume()``, which must not
    be called inside a rebalance callback (it would deliver messages and callbacks).
    ``committed(timeout)`` is bounded and allowed there: the offsets are read back from
    the coordinator, which answers a member's requests in order, so after the commit.
    A rejected commit is not retried (during a rebalance the coordinator keeps
    rejecting it until this callback returns): its offsets will be redelivered.
    """
    consumer.commit(offsets=offsets, asynchronous=True)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "drain deadline passed"))
    wanted = {(p.topic, p.partition): p.offset for p in offsets}
    held = consumer.committed([TopicPartition(t, p) for t, p in wanted], timeout=remaining)
    behind = [p for p in held if p.error is not None or p.offset < wanted[(p.topic, p.partition)]]
    if behind:
        raise KafkaException(
            KafkaError(
                KafkaError._FAIL,
                "the coordinator did not store "
                + ", ".join(
                    f"{p.topic}/{p.partition}:{wanted[(p.topic, p.partition)]}" for p in behind
                ),
            )
        )
