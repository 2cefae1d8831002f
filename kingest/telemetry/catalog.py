"""Every metric kingest exports, defined in one place with its meaning.

Instruments are created from these specifications (:mod:`kingest.telemetry.metrics`), the
metric table of docs/metrics.md and the Grafana dashboard and alert rules in ``ops/`` are checked
against them, so a name cannot drift between the code and what users query. Names follow
the OpenTelemetry semantic conventions where one exists (``messaging.*``, ``db.*``,
``process.*``) and live under ``kingest.`` otherwise.

:attr:`MetricSpec.prometheus_name` is the name the Prometheus exporter serves: dots become
underscores, the unit is appended (``s`` as ``_seconds``, ``By`` as ``_bytes``; annotations
such as ``{message}`` add nothing) and monotonic counters end in ``_total``.

:data:`INTERNAL` declares the counters kingest keeps without exporting them (writes,
transactions, pauses...): the shutdown summary and the tests read them from
:class:`~kingest.telemetry.stats.PipelineStats`, which keys every counter by its
specification here, exported or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from kingest.telemetry.tracing.conventions import (
    DB_OPERATION_NAME,
    DB_SYSTEM_NAME,
    ERROR_TYPE,
    MESSAGING_CONSUMER_GROUP,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_PARTITION_ID,
)

__all__ = [
    "ALL",
    "BATCHES_ABANDONED",
    "BATCHES_IN_FLIGHT",
    "BATCHES_WRITTEN",
    "BATCH_SIZE",
    "COMMITS",
    "COMMITTED_OFFSET",
    "CONSUMER_LAG",
    "CONSUME_ERRORS",
    "DB_WRITE_DURATION",
    "DEAD_LETTERS",
    "DEAD_LETTERS_PUBLISHED",
    "DEAD_LETTER_PUBLISH_FAILURES",
    "END_TO_END_LATENCY",
    "EVENTS_PROCESSED",
    "FETCH_STALL",
    "INTERNAL",
    "MAILBOX_DEPTH",
    "MESSAGES_CONSUMED",
    "MESSAGES_WRITTEN",
    "OLDEST_UNACKED_AGE",
    "PARTITIONS_ASSIGNED",
    "PARTITIONS_PAUSED",
    "PARTITION_PAUSES",
    "PROCESS_CPU_TIME",
    "PROCESS_MEMORY_USAGE",
    "READY",
    "REBALANCES",
    "RETRIES",
    "TRANSACTIONS",
    "UNREADABLE_HEADERS",
    "WRITER_QUEUE_DEPTH",
    "MetricSpec",
]

Kind = Literal["counter", "histogram", "gauge"]

_UNIT_SUFFIXES: Final = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "ratio"}
_ANNOTATION = re.compile(r"^\{[^}]*\}$")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its OpenTelemetry instrument name, kind, UCUM unit, meaning, attributes.

    ``counter`` is a monotonic sum, ``gauge`` a value observed at collection time (or an
    up-down counter), ``histogram`` a distribution with ``buckets`` as explicit bounds.
    """

    name: str
    kind: Kind
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def prometheus_name(self) -> str:
        """The metric family name on ``/metrics`` (histograms add _bucket/_sum/_count)."""
        name = re.sub(r"[^a-zA-Z0-9_:]", "_", self.name)
        if self.unit and not _ANNOTATION.match(self.unit):
            suffix = _UNIT_SUFFIXES.get(self.unit, self.unit)
            if not name.endswith(f"_{suffix}"):
                name = f"{name}_{suffix}"
        if self.kind == "counter":
            name = f"{name}_total"
        return name

    @property
    def prometheus_attributes(self) -> tuple[str, ...]:
        """Label names on ``/metrics``: attribute names with dots as underscores."""
        return tuple(attribute.replace(".", "_") for attribute in self.attributes)


_TP: Final = (MESSAGING_DESTINATION_NAME, MESSAGING_PARTITION_ID)

_LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip

MESSAGES_CONSUMED: Final = MetricSpec(
    "messaging.client.consumed.messages",
    "counter",
    "{message}",
    "Kafka messages consumed and handed to their partition's actor.",
    (*_TP, MESSAGING_CONSUMER_GROUP),
)
EVENTS_PROCESSED: Final = MetricSpec(
    "kingest.events.processed",
    "counter",
    "{event}",
    "Messages whose batch was committed to PostgreSQL, by event type and outcome: stored "
    "(a new row), duplicate (its event_id was already stored) or dead_lettered.",
    ("kingest.event.type", "kingest.outcome"),
)
DEAD_LETTERS: Final = MetricSpec(
    "kingest.dead_letters",
    "counter",
    "{message}",
    "Messages stored as dead letters, by stage (decode, validate, write) and reason "
    "(error class, e.g. invalid_protobuf or a PostgreSQL error name).",
    ("kingest.error.stage", ERROR_TYPE),
)
DEAD_LETTER_PUBLISH_FAILURES: Final = MetricSpec(
    "kingest.dead_letter.publish_failures",
    "counter",
    "{message}",
    "Dead letters the dead-letter topic did not take (a permanent Kafka error, or the "
    "publish budget spent) and that were kept in kingest.dead_letters instead, by the "
    "Kafka error name (e.g. MSG_SIZE_TOO_LARGE, TOPIC_AUTHORIZATION_FAILED, _MSG_TIMED_OUT).",
    (ERROR_TYPE,),
)
UNREADABLE_HEADERS: Final = MetricSpec(
    "kingest.unreadable_headers",
    "counter",
    "{message}",
    "Messages consumed whose Kafka headers could not be read (a header name that is not "
    "UTF-8): processed without any of their headers (no trace context, no correlation-id "
    "header; a dead letter of one keeps none).",
    _TP,
)
RETRIES: Final = MetricSpec(
    "kingest.retries",
    "counter",
    "{retry}",
    "Transient failures retried with backoff, by operation (write, dead_letter_publish) "
    "and reason (SQLSTATE class or Kafka error name).",
    ("kingest.operation", ERROR_TYPE),
)
BATCH_SIZE: Final = MetricSpec(
    "kingest.batch.size",
    "histogram",
    "{message}",
    "Messages per batch written to PostgreSQL in one transaction.",
    (),
    (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000),
)
DB_WRITE_DURATION: Final = MetricSpec(
    "db.client.operation.duration",
    "histogram",
    "s",
    "Duration of one batch's write transaction in PostgreSQL, commit included.",
    (DB_SYSTEM_NAME, DB_OPERATION_NAME),
    _LATENCY_BUCKETS,
)
END_TO_END_LATENCY: Final = MetricSpec(
    "kingest.end_to_end.latency",
    "histogram",
    "s",
    "From a message's Kafka timestamp to the commit of the transaction that stored it. "
    "Observed per write batch for its first and last message (two observations per "
    "batch, none per message, so the hot path stays per batch).",
    (),
    (*_LATENCY_BUCKETS, 120.0, 300.0, 900.0, 3600.0),
)
MAILBOX_DEPTH: Final = MetricSpec(
    "kingest.partition.mailbox.depth",
    "gauge",
    "{message}",
    "Messages waiting in a partition actor's mailbox.",
    _TP,
)
WRITER_QUEUE_DEPTH: Final = MetricSpec(
    "kingest.writer.queue.depth",
    "gauge",
    "{batch}",
    "Batches waiting for a database writer.",
)
BATCHES_IN_FLIGHT: Final = MetricSpec(
    "kingest.batches.in_flight",
    "gauge",
    "{batch}",
    "Batches handed to the writers and not yet acknowledged (queued or being written).",
)
COMMITTED_OFFSET: Final = MetricSpec(
    "kingest.partition.committed_offset",
    "gauge",
    "{offset}",
    "The last offset kingest committed for a partition (the next message to consume).",
    _TP,
)
CONSUMER_LAG: Final = MetricSpec(
    "kingest.partition.lag",
    "gauge",
    "{message}",
    "Messages between a partition's end offset (high watermark) and kingest's committed "
    "offset, also while the partition is paused.",
    _TP,
)
OLDEST_UNACKED_AGE: Final = MetricSpec(
    "kingest.partition.oldest_unacked.age",
    "gauge",
    "s",
    "Seconds since kingest consumed the oldest message of a partition that is not yet "
    "durable in PostgreSQL (0 when everything consumed is acknowledged).",
    _TP,
)
FETCH_STALL: Final = MetricSpec(
    "kingest.partition.fetch.stall",
    "gauge",
    "s",
    "Seconds since an assigned partition that has messages to fetch, and that kingest has "
    "not paused, last delivered messages (0 when it is paused, has nothing to fetch or "
    "is being fetched): a partition the client does not fetch.",
    _TP,
)
REBALANCES: Final = MetricSpec(
    "kingest.rebalances",
    "counter",
    "{rebalance}",
    "Rebalance callbacks received, by kind: assign, revoke or lost.",
    ("kingest.rebalance.kind",),
)
PARTITIONS_ASSIGNED: Final = MetricSpec(
    "kingest.partitions.assigned",
    "gauge",
    "{partition}",
    "Partitions currently assigned to this process.",
)
PARTITIONS_PAUSED: Final = MetricSpec(
    "kingest.partitions.paused",
    "gauge",
    "{partition}",
    "Assigned partitions paused because their backlog is over its bound.",
)
COMMITS: Final = MetricSpec(
    "kingest.commits",
    "counter",
    "{commit}",
    "Offset commits sent to the group coordinator, by result (ok, failed).",
    ("kingest.commit.result",),
)
READY: Final = MetricSpec(
    "kingest.ready",
    "gauge",
    "{status}",
    "1 while /readyz answers 200 (partitions assigned, database reachable, not stuck), else 0.",
)
PROCESS_CPU_TIME: Final = MetricSpec(
    "process.cpu.time",
    "counter",
    "s",
    "CPU time of the kingest process, by mode (user, system).",
    ("cpu.mode",),
)
PROCESS_MEMORY_USAGE: Final = MetricSpec(
    "process.memory.usage",
    "gauge",
    "By",
    "Resident memory (RSS) of the kingest process.",
)

#: Every metric, in the order docs/metrics.md lists them.
ALL: Final[tuple[MetricSpec, ...]] = (
    MESSAGES_CONSUMED,
    EVENTS_PROCESSED,
    DEAD_LETTERS,
    DEAD_LETTER_PUBLISH_FAILURES,
    UNREADABLE_HEADERS,
    RETRIES,
    BATCH_SIZE,
    DB_WRITE_DURATION,
    END_TO_END_LATENCY,
    MAILBOX_DEPTH,
    WRITER_QUEUE_DEPTH,
    BATCHES_IN_FLIGHT,
    COMMITTED_OFFSET,
    CONSUMER_LAG,
    OLDEST_UNACKED_AGE,
    FETCH_STALL,
    REBALANCES,
    PARTITIONS_ASSIGNED,
    PARTITIONS_PAUSED,
    COMMITS,
    READY,
    PROCESS_CPU_TIME,
    PROCESS_MEMORY_USAGE,
)

# ------------------------------------------------------------------------ not exported

MESSAGES_WRITTEN: Final = MetricSpec(
    "kingest.messages.written",
    "counter",
    "{message}",
    "Messages of the write batches acknowledged after their transaction committed.",
)
BATCHES_WRITTEN: Final = MetricSpec(
    "kingest.batches.written",
    "counter",
    "{batch}",
    "Write batches acknowledged after their transaction committed.",
)
TRANSACTIONS: Final = MetricSpec(
    "kingest.writer.transactions",
    "counter",
    "{transaction}",
    "Writes committed by the writers: one per group of batches written together (a "
    "bisected group counts once).",
)
BATCHES_ABANDONED: Final = MetricSpec(
    "kingest.batches.abandoned",
    "counter",
    "{batch}",
    "Write batches given up at the drain deadline (redelivered on the next start).",
)
DEAD_LETTERS_PUBLISHED: Final = MetricSpec(
    "kingest.dead_letters.published",
    "counter",
    "{message}",
    "Dead letters the dead-letter topic confirmed.",
)
CONSUME_ERRORS: Final = MetricSpec(
    "kingest.consume.errors",
    "counter",
    "{error}",
    "Errors the Kafka consumer reported while polling.",
)
PARTITION_PAUSES: Final = MetricSpec(
    "kingest.partition.pauses",
    "counter",
    "{pause}",
    "Partitions paused because their backlog went over its bound.",
)

#: Counters kept but not exported (no instrument, no README row, no dashboard panel).
INTERNAL: Final[tuple[MetricSpec, ...]] = (
    MESSAGES_WRITTEN,
    BATCHES_WRITTEN,
    TRANSACTIONS,
    BATCHES_ABANDONED,
    DEAD_LETTERS_PUBLISHED,
    CONSUME_ERRORS,
    PARTITION_PAUSES,
)
