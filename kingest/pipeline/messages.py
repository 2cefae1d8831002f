"""Messages exchanged by the pipeline's actors.

Actors exchange batches, never single Kafka messages: per-message Python overhead is the
throughput limit, so each hop carries hundreds to thousands of events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from kingest.kafka import TopicPartitionKey
from kingest.store import RowBatch

if TYPE_CHECKING:
    from kingest.telemetry import BatchTrace


@attrs.frozen(slots=True)
class WriteBatch:
    """Rows built from ``message_count`` messages of one partition, from ``first_offset``
    on (the same range was registered with the offset committer)."""

    tp: TopicPartitionKey
    generation: int
    first_offset: int
    message_count: int
    rows: RowBatch
    #: The batch's span context and open per-message spans, while tracing is on.
    trace: BatchTrace | None = None
    #: Kafka timestamps (epoch ms) of the batch's first and last message, when they have
    #: one: the end-to-end latency is observed for these two, not for every message.
    first_timestamp_ms: int | None = None
    last_timestamp_ms: int | None = None

    @property
    def timestamps_ms(self) -> tuple[int, ...]:
        return tuple(t for t in (self.first_timestamp_ms, self.last_timestamp_ms) if t is not None)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes


@attrs.frozen(slots=True)
class Assigned:
    """The consumer now owns these partitions under ``generation``."""

    tps: tuple[TopicPartitionKey, ...]
    generation: int


@attrs.frozen(slots=True)
class Released:
    """The consumer gave these partitions up; their trackers are dropped."""

    tps: tuple[TopicPartitionKey, ...]
    generation: int


@attrs.frozen(slots=True)
class Register:
    """A partition actor handed ``first..last`` to the writers (sent before the batch)."""

    tp: TopicPartitionKey
    generation: int
    first: int
    last: int


@attrs.frozen(slots=True)
class Ack:
    """A writer committed the batch starting at ``first`` in PostgreSQL."""

    tp: TopicPartitionKey
    generation: int
    first: int


@attrs.frozen(slots=True)
class Barrier:
    """Answered once every message told to the committer before it has been applied."""


CommitterMessage = Assigned | Released | Register | Ack | Barrier
