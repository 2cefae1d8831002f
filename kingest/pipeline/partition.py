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
into this actor's mailbox, which makes the consumer loop pause the partition.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from actors import Actor, Pool, Supervisor
from kingest.pipeline.messages import Register, TopicPartitionKey, WriteBatch
from kingest.store.rows import KafkaRecord, RowBatch

if TYPE_CHECKING:
    from kingest.pipeline.committer import OffsetCommitter

__all__ = ["PartitionActor", "records_size"]

#: Per-message memory of a confluent_kafka.Message beyond its key and value: the object,
#: a str for the topic, bytes for key and value (measured ~290 B; docs/memory.md).
MESSAGE_OVERHEAD_BYTES = 320


def records_size(records: Sequence[KafkaRecord]) -> int:
    """Approximate memory held by a list of Kafka messages (for the mailbox byte bound)."""
    total = MESSAGE_OVERHEAD_BYTES * len(records)
    for record in records:
        value = record.value()
        key = record.key()
        if value is not None:
            total += len(value)
        if key is not None:
            total += len(key)
    return total


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
    ) -> None:
        super().__init__(
            f"partition-{tp[0]}-{tp[1]}",
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
        self._rows = RowBatch()
        self._first: int | None = None
        self._count = 0
        self._opened_at = 0.0
        #: Offset of the last message this actor has taken from its mailbox (any thread reads).
        self.received_offset = -1

    def receive(self, message: Sequence[KafkaRecord]) -> Any:
        if not message:
            return None
        if self._first is None:
            self._first = message[0].offset()
            self._opened_at = time.monotonic()
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
        )
        self._rows = RowBatch()
        self._first = None
        self._count = 0
        self._committer.tell(Register(self.tp, self.generation, first, self.received_offset))
        self._writers.tell(batch)
