"""The partition actor: one per assigned partition, processing its messages in order.

It receives lists of Kafka messages (each list is one poll's worth for this partition,
in offset order), decodes, validates and maps them into a :class:`RowBatch`, and hands
the batch to the writer pool when it holds ``batch_size`` messages, when its estimated
memory (:attr:`RowBatch.nbytes`) reaches ``batch_bytes``, or when it has been open for
``batch_linger`` seconds. Messages that fail to decode or validate become rejections
inside the same batch, so they are stored (with their coordinates and the reason) in the
same transaction as their neighbours and never block the partition.

Before a batch goes to the writers its offset range is registered with the offset
committer; handing it over blocks while the writers' queue is full, which backs work up
into this actor's mailbox, which makes the consumer loop pause the partition. Its
counters and spans are recorded through its
:class:`~kingest.pipeline.observe.PartitionTelemetry`.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from actors import Actor, ActorStopped, Pool, Supervisor
from kingest.kafka import TopicPartitionKey
from kingest.pipeline.messages import Register, WriteBatch
from kingest.pipeline.observe import PartitionTelemetry
from kingest.pipeline.threads import PARTITION_THREAD_PREFIX
from kingest.store import KafkaRecord, RowBatch, UnreadableHeaders, WritePlan, unreadable_headers

if TYPE_CHECKING:
    from kingest.pipeline.committer import OffsetCommitter
    from kingest.telemetry import PipelineStats

__all__ = ["PartitionActor", "records_size"]

log = logging.getLogger(__name__)

#: Per-message memory of a confluent_kafka.Message beyond its key and value: the object,
#: a str for the topic, bytes for key and value (measured ~290 B; docs/memory.md).
MESSAGE_OVERHEAD_BYTES = 320


_record_key = operator.methodcaller("key")


def records_size(records: Sequence[KafkaRecord]) -> int:
    """Approximate memory held by a list of Kafka messages (for the mailbox byte bound).

    Called for every poll's worth of messages: the loops run in C. A message's length
    is its value's (a slot call, a quarter of the cost of calling ``value()``);
    ``filter(None, ...)`` skips absent keys.
    """
    return (
        MESSAGE_OVERHEAD_BYTES * len(records)
        + sum(map(len, records))
        + sum(map(len, filter(None, map(_record_key, records))))
    )


#: At most this many offsets are written in the text of an unreadable-headers warning
#: (its ``offsets`` field lists them all).
_LOGGED_OFFSETS = 20

#: How far in the future a Kafka timestamp may be (clock skew) and still be a latency.
FUTURE_TIMESTAMP_SLACK_MS = 60_000


def _timestamp_ms(record: KafkaRecord) -> int | None:
    """The Kafka timestamp of ``record`` in epoch ms, None when it has none or when it
    cannot be a time the message was produced at (negative, or in the future beyond
    clock skew: e.g. nanoseconds), which the latency metric must not observe."""
    kind, value = record.timestamp()
    if not kind or value < 0 or value > time.time() * 1000 + FUTURE_TIMESTAMP_SLACK_MS:
        return None
    return value


class PartitionActor(Actor[Sequence[KafkaRecord]]):
    """Decodes one partition's messages in offset order into write batches."""

    def __init__(
        self,
        tp: TopicPartitionKey,
        generation: int,
        *,
        writers: Pool[WriteBatch],
        committer: OffsetCommitter,
        batch_size: int,
        batch_bytes: int,
        batch_linger_s: float,
        max_bytes: int,
        supervisor: Supervisor | None = None,
        consumer_group: str | None = None,
        trace_message_spans: int = 16,
        stats: PipelineStats | None = None,
        plan: WritePlan | None = None,
    ) -> None:
        super().__init__(
            f"{PARTITION_THREAD_PREFIX}{tp[0]}-{tp[1]}",
            # The consumer loop enqueues with force=True and pauses the partition when it
            # is over its bound, so these bounds never block it; they size the backlog.
            capacity=1_000_000,
            max_bytes=max_bytes,
            sizeof=records_size,
            receive_timeout=max(batch_linger_s, 0.001),
            supervisor=supervisor,
        )
        self.tp = tp
        self.generation = generation
        self._writers = writers
        self._committer = committer
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._linger = batch_linger_s
        self._plan = plan
        self._rows = RowBatch(plan=plan)
        self._first: int | None = None
        self._count = 0
        self._opened_at = 0.0
        #: Where this actor records its counters and spans.
        self._telemetry = PartitionTelemetry(
            tp, stats, consumer_group=consumer_group, max_message_spans=trace_message_spans
        )
        #: Kafka timestamps of the open batch's first and latest message (latency).
        self._first_timestamp_ms: int | None = None
        self._last_timestamp_ms: int | None = None
        #: Offset of the last message this actor has taken from its mailbox (any thread reads).
        self.received_offset = -1

    def receive(self, message: Sequence[KafkaRecord]) -> Any:
        if not message:
            return None
        # Before anything else reads them: found here, they are counted and logged once.
        unreadable = unreadable_headers(message)
        if unreadable:
            self._report_unreadable(message, unreadable)
        if self._first is None:
            self._first = message[0].offset()
            self._opened_at = time.monotonic()
            self._telemetry.batch_opened()
            self._first_timestamp_ms = _timestamp_ms(message[0])
        self._last_timestamp_ms = _timestamp_ms(message[-1])
        self._telemetry.received(message)
        self._rows.add_records(message)
        last = message[-1].offset()
        assert last is not None
        self.received_offset = last
        self._count += len(message)
        if (
            self._count >= self._batch_size
            or self._rows.nbytes >= self._batch_bytes
            or time.monotonic() - self._opened_at >= self._linger
        ):
            self.flush()
        return None

    def _report_unreadable(
        self, records: Sequence[KafkaRecord], found: list[tuple[int, UnreadableHeaders]]
    ) -> None:
        """Count and log, once per poll, the messages whose headers could not be read:
        they go on without any header, which nothing else would show for a valid one."""
        offsets = [records[position].offset() for position, _ in found]
        topic, partition = self.tp
        self._telemetry.unreadable_headers(len(found))
        log.warning(
            "partition %s: Kafka headers could not be read for %d message(s), processed "
            "without any of their headers; offsets %s; first: %s",
            self.tp,
            len(found),
            ", ".join(map(str, offsets[:_LOGGED_OFFSETS]))
            + (" ..." if len(offsets) > _LOGGED_OFFSETS else ""),
            found[0][1].reason,
            extra={
                "topic": topic,
                "partition": partition,
                "offset": offsets[0],
                "offsets": offsets,
            },
        )

    def next_receive_timeout(self) -> float | None:
        """While a batch is open, the time left of its linger: the linger counts from
        when the batch opened, so a partition whose messages keep trickling in still
        flushes on time (an idle timeout would wait for a pause in its stream)."""
        if self._first is None:
            return super().next_receive_timeout()
        return max(0.0, self._opened_at + self._linger - time.monotonic())

    def on_receive_timeout(self) -> None:
        if self._count:
            self.flush()

    def on_stop(self) -> None:
        # A draining stop (revoke, shutdown) still writes what was received; a stop
        # without drain (lost partition) or after a failure does not.
        if self._count and not self.discarding:
            self.flush()

    def flush(self) -> None:
        """Register the open batch with the committer, then hand it to the writers."""
        first = self._first
        if first is None:
            return
        batch = WriteBatch(
            tp=self.tp,
            generation=self.generation,
            first_offset=first,
            message_count=self._count,
            rows=self._rows,
            first_timestamp_ms=self._first_timestamp_ms,
            last_timestamp_ms=self._last_timestamp_ms,
        )
        self._rows = RowBatch(plan=self._plan)
        self._first = None
        self._count = 0
        register = Register(self.tp, self.generation, first, self.received_offset)
        try:
            # While tracing, the batch's process span is current here, so the committer
            # and the writer receive its context with the messages.
            with self._telemetry.handing_over(batch, register.last) as sent:
                self._committer.tell(register)
                self._writers.tell(sent)
        except ActorStopped:
            # The writers (or the committer) stopped while the batch was on its way: the
            # drain deadline passed, or the pipeline failed. The batch is abandoned: it is
            # never acknowledged, so its offsets are not committed and it is redelivered.
            log.info(
                "partition %s: batch of offsets %d-%d abandoned (the writers stopped); "
                "it will be redelivered",
                self.tp,
                first,
                register.last,
                extra={"topic": self.tp[0], "partition": self.tp[1], "offset": first},
            )
