"""An upper bound of a kingest process's resident memory, computed from its configuration.

Invariant 4 of ``docs/design.md`` (bounded memory) says every queue is bounded; this module
adds up what those bounds allow, queue by queue, so that an operator can size a container
from the settings (see ``docs/memory.md``) and the integration test can hold the process to
the figure.

Every queue between Kafka and PostgreSQL is bounded in *messages* (and some in bytes
too), so the bound is a sum of ``messages x bytes per message`` terms. The bytes a
message costs depend on its payload, which the configuration cannot know: the bound takes
the **mean payload** (key + value + headers, in bytes) as a parameter,
``message_bytes``; pass the largest mean your topics will carry. The per-message costs on
top of the payload were measured on CPython 3.11 / confluent-kafka 2.16 / x86-64 with
the synthetic stream (``kingest.dev.synth``, 188-byte mean payload) and rounded up:

* a message queued inside librdkafka: ~300 B beyond the payload (``rd_kafka_op_t`` with
  its embedded message, its malloc header; measured as RSS growth of a consumer that
  prefetched 200,000 messages);
* a ``confluent_kafka.Message`` in Python: ~290 B beyond the payload (the object, a
  ``str`` for the topic, ``bytes`` for key and value; tracemalloc over 20,000);
* a row of a :class:`~kingest.store.rows.RowBatch`: ~640 B besides its source message
  (one object per column value plus the list slots; tracemalloc over 20,000 rows).

The librdkafka prefetch depends on the number of assigned partitions, and so do the
partition mailboxes and open batches: the bound is computed for a partition count
(the pipeline logs it for the partitions it is assigned).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

from kingest.config import Settings
from kingest.kafka import consumer_config

__all__ = [
    "DEFAULT_MESSAGE_BYTES",
    "MemoryBudget",
    "MemoryTerm",
    "memory_budget",
    "partition_unacked_bounds",
]

MIB: Final = 1024 * 1024

#: RSS of ``kingest start`` connected, assigned and idle: the interpreter, the imported
#: libraries (protobuf, psycopg, confluent-kafka, OpenTelemetry), librdkafka's threads
#: and the writers' connections. Measured 61 MiB (VmHWM 62 MiB) with 8 partitions and 4
#: writers; rounded up for code paths that only warm up under load (prepared
#: statements, lazily imported modules, thread stacks touched deeper).
BASELINE_BYTES: Final = 80 * MIB

#: Mean payload assumed when none is given: the synthetic stream's events are 150-380
#: bytes with a 25-byte key (188 B on average); 512 B leaves room for bigger events.
DEFAULT_MESSAGE_BYTES: Final = 512

#: A message queued inside librdkafka beyond its payload (measured ~300 B).
RDKAFKA_MESSAGE_OVERHEAD: Final = 320
#: A ``confluent_kafka.Message`` in Python beyond its payload (measured ~290 B).
PYTHON_MESSAGE_OVERHEAD: Final = 320
#: A RowBatch row besides its source message, plus the payload-derived strings it holds
#: (measured ~640 B for a 188 B payload, counted here as 640 + payload).
ROW_OVERHEAD: Final = 640
#: What RowBatch.nbytes counts per row besides twice the payload (rows._ROW_OVERHEAD_BYTES).
ROWBATCH_ESTIMATE_PER_ROW: Final = 700
#: Per row of a batch being written: the writer's merged column lists (a reference per
#: column) and the encoded array parameters, which exist twice while the statement is
#: sent (psycopg's bytes and libpq's output buffer, which keeps its largest size).
ENCODED_ROW_OVERHEAD: Final = 256
#: Compression ratio assumed for fetched record batches: ``max.partition.fetch.bytes``
#: and ``fetch.max.bytes`` count compressed bytes, the queue holds them decompressed
#: (lz4 on the synthetic stream: about 2.5; a batch of repetitive events compresses more).
COMPRESSION_RATIO: Final = 4
#: Freed memory that the allocators (pymalloc arenas, glibc's per-thread malloc arenas)
#: keep instead of returning to the system, as a fraction of the dynamic terms.
ALLOCATOR_SLACK: Final = 0.25

# librdkafka's defaults (CONFIGURATION.md of librdkafka 2.x) for properties kingest
# does not set, so that a KINGEST_RDKAFKA_* override is honoured when present.
_RDKAFKA_DEFAULTS: Final[Mapping[str, int]] = {
    "queued.min.messages": 100_000,
    "max.partition.fetch.bytes": 1_048_576,
    "fetch.max.bytes": 52_428_800,
    "message.max.bytes": 1_000_000,
}


@attrs.frozen
class MemoryTerm:
    """One part of the bound: what holds the memory and how much it may hold."""

    name: str
    nbytes: int
    explanation: str


@attrs.frozen
class MemoryBudget:
    """The bound of a process's RSS for ``partitions`` assigned partitions."""

    partitions: int
    message_bytes: int
    terms: tuple[MemoryTerm, ...]

    @property
    def total_bytes(self) -> int:
        return sum(term.nbytes for term in self.terms)

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MIB

    def describe(self) -> str:
        """One line per term, then the total (for logs, ``docs/memory.md`` and tests)."""
        lines = [
            f"{term.name:>22}: {term.nbytes / MIB:8.1f} MiB  {term.explanation}"
            for term in self.terms
        ]
        lines.append(f"{'total':>22}: {self.total_mib:8.1f} MiB")
        return "\n".join(lines)


def _property(config: Mapping[str, Any], name: str) -> int:
    value = config.get(name, _RDKAFKA_DEFAULTS.get(name))
    if value is None:
        raise KeyError(name)
    return int(value)


def partition_unacked_bounds(settings: Settings) -> tuple[int, int]:
    """(messages, bytes) a partition may have consumed and not yet durable before the
    consumer loop pauses it (``KINGEST_PARTITION_UNACKED_MESSAGES`` / ``_BYTES``).

    A setting of 0 stands for what the pipeline holds for one partition when it is only
    busy: a full mailbox and a poll more, then its open batch, the writers' whole queue
    and two batches per writer (a writer tops its batch up with one more), every batch
    at its largest. A partition is then paused by this bound only when acknowledgements
    stop being contiguous (a batch stuck in retries while later ones are written), never
    in steady state.
    """
    pipeline = settings.pipeline
    poll = settings.kafka.poll_batch_size
    batches = pipeline.writer_queue_batches + 2 * pipeline.writers + 1
    messages = pipeline.partition_unacked_messages or (
        pipeline.partition_queue_messages + poll + batches * (pipeline.batch_size + poll)
    )
    nbytes = pipeline.partition_unacked_bytes or (
        pipeline.partition_queue_bytes + batches * pipeline.batch_bytes
    )
    return messages, nbytes


def memory_budget(
    settings: Settings, partitions: int, *, message_bytes: int = DEFAULT_MESSAGE_BYTES
) -> MemoryBudget:
    """Upper bound of the RSS of one ``kingest start`` process owning ``partitions``.

    ``message_bytes`` is the mean payload (key + value + headers) of the consumed
    messages. Each term says which bound it comes from; see the module docstring for
    the measured per-message costs and ``docs/memory.md`` for how to size a process.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    if message_bytes < 1:
        raise ValueError(f"message_bytes must be at least 1, got {message_bytes}")
    pipeline = settings.pipeline
    config = consumer_config(settings)
    poll = settings.kafka.poll_batch_size
    rdkafka_message = message_bytes + RDKAFKA_MESSAGE_OVERHEAD
    python_message = message_bytes + PYTHON_MESSAGE_OVERHEAD
    row = python_message + ROW_OVERHEAD + message_bytes
    written_row = row + 2 * (ENCODED_ROW_OVERHEAD + message_bytes)
    # A partition actor flushes at batch_size messages or batch_bytes of estimated memory
    # (RowBatch.nbytes: about ROWBATCH_ESTIMATE_PER_ROW + twice the payload per row),
    # and adds a whole poll's worth to its batch before it checks either.
    rows_by_bytes = math.ceil(
        pipeline.batch_bytes / (ROWBATCH_ESTIMATE_PER_ROW + 2 * message_bytes)
    )
    largest_batch = min(pipeline.batch_size, rows_by_bytes) + poll - 1

    # librdkafka stops fetching for the consumer queue (one queue for every partition
    # with subscribe()) once it holds queued.min.messages messages or
    # queued.max.messages.kbytes of payload; a fetch response already under way is still
    # queued in full. One fetch is outstanding per broker, and a response carries at
    # most max.partition.fetch.bytes per partition and fetch.max.bytes in all, so the
    # overshoot is at most partitions x min(max.partition.fetch.bytes, fetch.max.bytes)
    # compressed bytes (a broker per partition in the worst case).
    queued_payload = _property(config, "queued.max.messages.kbytes") * 1024
    queued_messages = min(
        _property(config, "queued.min.messages"), math.ceil(queued_payload / message_bytes)
    )
    fetch_bytes = max(_property(config, "fetch.max.bytes"), _property(config, "message.max.bytes"))
    response_bytes = partitions * min(_property(config, "max.partition.fetch.bytes"), fetch_bytes)
    overshoot_messages = math.ceil(response_bytes * COMPRESSION_RATIO / message_bytes)
    prefetch = (queued_messages + overshoot_messages) * rdkafka_message + response_bytes

    # A partition is paused once its backlog reaches partition_queue_messages or its
    # mailbox partition_queue_bytes (as estimated by records_size, which counts at
    # least the payload per message), or once what it has consumed and not yet seen
    # durable (its mailbox among the rest) reaches the unacknowledged bounds; one poll
    # may add up to poll_batch_size more.
    unacked_messages, unacked_bytes = partition_unacked_bounds(settings)
    per_mailbox = min(
        pipeline.partition_queue_messages,
        math.ceil(pipeline.partition_queue_bytes / message_bytes),
        unacked_messages,
        math.ceil(unacked_bytes / message_bytes),
    )
    mailboxes = (partitions * per_mailbox + poll) * python_message

    open_batches = partitions * largest_batch * row
    writer_queue = pipeline.writer_queue_batches * largest_batch * row
    # A writer tops its batch up with queued ones while it has room for batch_size
    # messages, so it may hold batch_size plus one more batch.
    in_flight = pipeline.writers * (pipeline.batch_size + largest_batch) * written_row

    # The loop takes no more messages once the whole process holds in_flight_bytes of
    # work not yet durable (as records_size counts it: at least the payload and the
    # message overhead each), and one poll may overshoot: the four stages above hold at
    # most that many messages together, each at most as costly as a row being written.
    stages = mailboxes + open_batches + writer_queue + in_flight
    capped = stages
    cap_explanation = "none (KINGEST_IN_FLIGHT_BYTES=0)"
    if pipeline.in_flight_bytes:
        in_flight_messages = math.ceil(pipeline.in_flight_bytes / python_message) + poll
        capped = min(stages, in_flight_messages * written_row)
        cap_explanation = (
            f"the stages above together hold at most {in_flight_messages:,} messages "
            f"x {written_row} B (KINGEST_IN_FLIGHT_BYTES and a poll)"
        )
    dynamic = prefetch + capped
    terms = (
        MemoryTerm(
            "baseline",
            BASELINE_BYTES,
            "interpreter, libraries, librdkafka threads, idle connections (measured)",
        ),
        MemoryTerm(
            "librdkafka prefetch",
            prefetch,
            f"{queued_messages:,} queued + {overshoot_messages:,} in fetch responses "
            f"x {rdkafka_message} B, plus {response_bytes / MIB:.1f} MiB of raw responses",
        ),
        MemoryTerm(
            "partition mailboxes",
            mailboxes,
            f"{partitions} x {per_mailbox:,} messages + one poll ({poll:,}) x {python_message} B",
        ),
        MemoryTerm(
            "open batches",
            open_batches,
            f"{partitions} x {largest_batch:,} rows x {row} B (row + its message)",
        ),
        MemoryTerm(
            "writer queue",
            writer_queue,
            f"{pipeline.writer_queue_batches} batches x {largest_batch:,} rows x {row} B",
        ),
        MemoryTerm(
            "batches in flight",
            in_flight,
            f"{pipeline.writers} writers x {pipeline.batch_size + largest_batch:,} rows "
            f"x {written_row} B (rows, merged columns, psycopg and libpq buffers)",
        ),
        MemoryTerm("in-flight bound", capped - stages, cap_explanation),
        MemoryTerm(
            "allocator slack",
            math.ceil(dynamic * ALLOCATOR_SLACK),
            f"{ALLOCATOR_SLACK:.0%} of the terms above but the baseline: freed memory "
            "the allocators keep",
        ),
    )
    return MemoryBudget(partitions=partitions, message_bytes=message_bytes, terms=terms)
