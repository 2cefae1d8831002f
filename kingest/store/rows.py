"""Kafka records to table rows: decode, validate, and buffer column by column.

This is the per-event hot path of the whole service, so a :class:`RowBatch` keeps one
Python list per column per table (the writer sends each list as one array parameter)
and the loop does the least per event it can: no ``datetime`` (timestamps are epoch
microseconds, converted by PostgreSQL), no per-row dict or attrs object, no JSON
encoding of empty maps, ``''`` rather than ``None`` for missing optional text (SQL
turns it into NULL), and the mapping of each payload type compiled from the catalog
into a function written as by hand (:mod:`kingest.store.mapping`).

The catalog decides how a record is read: in envelope mode every value is the envelope
message, whose oneof names the event type; a typed topic (``KINGEST_TOPIC_TYPES``)
carries one message type (or, framed, any fact message of that type's file). An event
without an ``occurred_at`` field (or, where not required, with it unset) takes its
Kafka timestamp.

A message that cannot become a row (undecodable, invalid) becomes a
:class:`Rejection` in the same batch, so it is dead-lettered in the same transaction
as the rows around it and never blocks its partition.

Every row keeps a reference to its source Kafka record (last buffer of its table):
when PostgreSQL rejects a batch the writer bisects it with :meth:`RowBatch.halves`
down to the offending row and dead-letters it with the original key, value and headers
(:meth:`RowBatch.as_rejected`). The references keep those records alive, so
:attr:`RowBatch.nbytes` counts them.

Idempotency keys of events without ``event_id``: :mod:`kingest.store.event_ids`;
reading headers (never raising) and the correlation id they may carry:
:mod:`kingest.store.headers`. Correlation id of a row: the envelope's, else the
``correlation-id`` Kafka header, else the event id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, Protocol

import attrs
from google.protobuf.message import Message

from kingest.schema import DecodeError, ValidationError
from kingest.store.event_ids import derived_event_id_of
from kingest.store.headers import (
    Headers,
    UnreadableHeaders,
    header_correlation_id,
    header_tuple,
    message_headers,
)
from kingest.store.mapping import RowReader, row_reader
from kingest.store.tables import WritePlan, WriteTable

__all__ = [
    "KAFKA_NO_TIMESTAMP",
    "MAX_STORABLE_TIMESTAMP_MS",
    "MIN_STORABLE_TIMESTAMP_MS",
    "KafkaRecord",
    "Rejection",
    "RowBatch",
    "storable_timestamp_ms",
]

#: Approximate memory of one buffered row besides its Kafka value: list slots and the
#: small objects of its columns (tracemalloc on the synthetic mix: about 640 bytes)
#: plus the record object and its key (about 150). The value is counted twice: once
#: in the record, once as the strings decoded from it.
_ROW_OVERHEAD_BYTES: Final = 700
_REJECTION_OVERHEAD_BYTES: Final = 400

_NO_TIMESTAMP: Final = 0  # confluent_kafka.TIMESTAMP_NOT_AVAILABLE
#: Kafka's timestamp of a message that has none (RecordBatch.NO_TIMESTAMP).
KAFKA_NO_TIMESTAMP: Final = -1
#: 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z in epoch ms: the Kafka timestamps
#: that both PostgreSQL's timestamptz and Python's datetime can hold.
MIN_STORABLE_TIMESTAMP_MS: Final = -62_135_596_800_000
MAX_STORABLE_TIMESTAMP_MS: Final = 253_402_300_799_999


class KafkaRecord(Protocol):
    """What a RowBatch reads from a Kafka message; ``confluent_kafka.Message`` fits."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def __len__(self) -> int:
        """The value's length in bytes, 0 without one (``confluent_kafka.Message``'s)."""
        ...


@attrs.frozen
class Rejection:
    """A Kafka message that will be stored as a dead letter instead of as a row.

    ``error_stage`` is ``"decode"``, ``"validate"`` or ``"write"``; ``error_class`` a
    short stable code (``invalid_protobuf``, ``missing_field``, a PostgreSQL error
    name...). ``event_id`` is the raw string the producer sent (it may be invalid).
    ``kafka_timestamp_ms`` is the Kafka timestamp as the producer set it (any int64, e.g.
    nanoseconds by mistake): where it is stored, :func:`storable_timestamp_ms` applies.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    kafka_timestamp_ms: int | None
    error_stage: str
    error_class: str
    error_message: str
    sqlstate: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    correlation_id: str | None = None


def storable_timestamp_ms(timestamp_ms: int | None) -> int | None:
    """A Kafka timestamp (epoch ms, as the producer set it) as kingest stores it: itself
    when it falls in the years 1-9999, else None.

    A producer sets any int64 it likes (``time.time_ns()`` by mistake, a negative or
    random number); PostgreSQL refuses a timestamptz beyond its range (SQLSTATE 22008)
    and Python's datetime (``kingest dlq``) one outside the years 1-9999. Such a
    timestamp is stored as NULL: it says nothing true about the message, and the
    message is stored or dead-lettered on its own merits. The raw value stays in the
    ``kingest.dlq.source.timestamp`` header of a dead letter on a topic. -1 is Kafka's
    "no timestamp" (some brokers report a CreateTime of -1 for a message produced
    without one), so it is None too.
    """
    if (
        timestamp_ms is None
        or timestamp_ms == KAFKA_NO_TIMESTAMP
        or not (MIN_STORABLE_TIMESTAMP_MS <= timestamp_ms <= MAX_STORABLE_TIMESTAMP_MS)
    ):
        return None
    return timestamp_ms


def _rejection(
    record: KafkaRecord,
    *,
    stage: str,
    error_class: str,
    message: str,
    sqlstate: str | None = None,
    event_id: str | None = None,
    event_type: str | None = None,
    correlation_id: str | None = None,
) -> Rejection:
    partition = record.partition()
    offset = record.offset()
    timestamp_type, timestamp_ms = record.timestamp()
    headers = message_headers(record)
    if isinstance(headers, UnreadableHeaders):
        message = f"{message}; {headers.reason}"
    return Rejection(
        topic=record.topic() or "",
        partition=-1 if partition is None else partition,
        offset=-1 if offset is None else offset,
        key=record.key(),
        value=record.value(),
        headers=header_tuple(headers),
        kafka_timestamp_ms=None if timestamp_type == _NO_TIMESTAMP else timestamp_ms,
        error_stage=stage,
        error_class=error_class,
        error_message=message,
        sqlstate=sqlstate,
        event_id=event_id,
        event_type=event_type,
        correlation_id=correlation_id,
    )


def _kafka_time_micros(record: KafkaRecord) -> int | None:
    """The Kafka timestamp in epoch microseconds, standing in for an event without
    occurred_at; None when the record has none kingest could store."""
    timestamp_type, timestamp_ms = record.timestamp()
    if timestamp_type == _NO_TIMESTAMP:
        return None
    storable = storable_timestamp_ms(timestamp_ms)
    return None if storable is None else storable * 1000


def _rejection_size(rejection: Rejection) -> int:
    headers = sum(len(key) + len(value or b"") for key, value in rejection.headers)
    return (
        _REJECTION_OVERHEAD_BYTES
        + len(rejection.value or b"")
        + len(rejection.key or b"")
        + headers
        + len(rejection.error_message)
    )


def _empty_buffers(table: WriteTable) -> list[list[Any]]:
    """One list per column, plus the source records last."""
    return [[] for _ in range(len(table.columns) + 1)]


class RowBatch:
    """Rows for every fact table, column by column, plus the batch's rejections.

    Built by one thread (a partition actor), then handed over whole to a writer; not
    safe for concurrent use. ``now`` (Unix seconds) fixes the validator's clock,
    for tests; by default each :meth:`add_records` call reads the clock once. ``plan``
    is the write plan of the catalog the records belong to (the built-in catalog's by
    default).
    """

    def __init__(self, *, now: float | None = None, plan: WritePlan | None = None) -> None:
        self._now = now
        self._reader: RowReader = row_reader(plan)
        self._buffers: dict[str, list[list[Any]]] = {
            table.event_type: _empty_buffers(table) for table in self._reader.plan.tables
        }
        self._rejections: list[Rejection] = []
        self._nbytes = 0

    # --- building ----------------------------------------------------------------------

    @property
    def plan(self) -> WritePlan:
        """The write plan (and catalog) of the batch's tables."""
        return self._reader.plan

    def decode(self, record: KafkaRecord) -> Message:
        """The record's value as a message of the catalog (as :meth:`add_records` reads
        it, without validating); raises ``DecodeError``."""
        reader = self._reader
        decoder = reader.topics.get(record.topic() or "", reader.envelope)
        if decoder is None:
            raise DecodeError("unknown_topic", f"topic {record.topic()!r} has no message type")
        return decoder.decode(record.value())

    def add_records(self, records: Iterable[KafkaRecord]) -> None:
        """Decode, validate and map each record, in order; failures become rejections."""
        now = time.time() if self._now is None else self._now
        reader = self._reader
        buffers = self._buffers
        rows = reader.rows
        validate = reader.validator.validate
        decode_envelope = None if reader.envelope is None else reader.envelope.decode
        typed = reader.topics
        kinds = reader.kinds
        envelope_fields = reader.validator.envelope_fields
        correlation_of_headers = header_correlation_id
        rows_before = self.event_count
        value_bytes = 0
        try:
            for record in records:
                value = record.value()
                kind: str | None = None
                try:
                    decoder = typed.get(record.topic() or "") if typed else None
                    if decoder is not None:
                        event = decoder.decode(value)
                        kind = kinds[event.DESCRIPTOR.full_name]
                    elif decode_envelope is not None:
                        event = decode_envelope(value)
                    else:
                        raise DecodeError(
                            "unknown_topic", f"topic {record.topic()!r} has no message type"
                        )
                except DecodeError as exc:
                    self._reject_undecodable(record, exc)
                    continue
                try:
                    # The value bounds every string in it (validation need not re-encode
                    # the event to know whether lengths must be checked), and a value
                    # without a zero byte cannot hold NUL (no text scan needed).
                    kind, payload, occurred_micros = validate(event, kind, now, None, value)
                except ValidationError as exc:
                    self._reject_invalid(record, event, kind, exc.error_class, str(exc))
                    continue
                # Everything that could fail comes before the first append, so a row is
                # either wholly buffered or not at all.
                columns = buffers[kind]
                topic = record.topic()
                partition = record.partition()
                offset = record.offset()
                if occurred_micros is None:
                    occurred_micros = _kafka_time_micros(record)
                    if occurred_micros is None:
                        self._reject_invalid(
                            record,
                            event,
                            kind,
                            "missing_field",
                            "occurred_at is not set and the Kafka timestamp cannot stand in",
                        )
                        continue
                fields = envelope_fields if decoder is None else reader.fields_of(kind)
                event_id, correlation_id, source = fields(event)  # type: ignore[misc]
                event_id = event_id or derived_event_id_of(record, topic, partition, offset)
                correlation_id = correlation_id or correlation_of_headers(record) or event_id
                try:
                    rows[kind](payload, columns)
                except KeyError as exc:
                    # An enum number the mapping does not know (the validator should
                    # have said so); the mapper looks enums up before appending.
                    self._reject_invalid(
                        record, event, kind, "unknown_enum", f"unmapped enum {exc}"
                    )
                    continue
                except (ValueError, TypeError) as exc:
                    # A value the mapping cannot render (the validator should have said
                    # so); values that may fail are computed before the first append.
                    self._reject_invalid(record, event, kind, "unmappable", str(exc))
                    continue
                columns[0].append(event_id)
                columns[1].append(occurred_micros)
                columns[2].append(correlation_id)
                columns[3].append(source)
                columns[4].append(topic)
                columns[5].append(partition)
                columns[6].append(offset)
                columns[-1].append(record)
                value_bytes += len(value)  # type: ignore[arg-type]
        finally:
            added = self.event_count - rows_before
            self._nbytes += 2 * value_bytes + _ROW_OVERHEAD_BYTES * added

    def _reject_undecodable(self, record: KafkaRecord, exc: DecodeError) -> None:
        correlation_id = header_correlation_id(record) or None
        self.add_rejection(
            _rejection(
                record,
                stage="decode",
                error_class=exc.error_class,
                message=str(exc),
                correlation_id=correlation_id,
            )
        )

    def _reject_invalid(
        self,
        record: KafkaRecord,
        event: Message,
        kind: str | None,
        error_class: str,
        message: str,
    ) -> None:
        reader = self._reader
        fields = reader.validator.envelope_fields
        if (record.topic() or "") in reader.topics:  # a typed topic: its own roles
            fields = None if kind is None else reader.fields_of(kind)
        else:
            kind = reader.validator.payload_name(event)
        event_id, correlation_id, _source = ("", "", "") if fields is None else fields(event)
        self.add_rejection(
            _rejection(
                record,
                stage="validate",
                error_class=error_class,
                message=message,
                event_id=event_id or None,
                event_type=kind,
                correlation_id=correlation_id or header_correlation_id(record) or None,
            )
        )

    def add_rejection(self, rejection: Rejection) -> None:
        """Add a message to dead-letter with this batch (e.g. one rejected elsewhere)."""
        self._rejections.append(rejection)
        self._nbytes += _rejection_size(rejection)

    def extend(self, other: RowBatch) -> None:
        """Append ``other``'s rows and rejections (``other`` is left as it was)."""
        for kind, other_columns in other._buffers.items():
            if other_columns[0]:
                for column, more in zip(self._buffers[kind], other_columns, strict=True):
                    column.extend(more)
        self._rejections.extend(other._rejections)
        self._nbytes += other._nbytes

    # --- bisecting and dead-lettering rows ----------------------------------------------

    def halves(self) -> tuple[RowBatch, RowBatch]:
        """Split the rows in two batches of (nearly) equal size, preserving their order.

        Rows are taken in write order (tables in the plan's order, each table
        in arrival order); the first half gets the first ``event_count // 2`` of them
        and all the rejections, which must be stored exactly once. A writer bisects a
        batch that PostgreSQL rejects until the offending row is alone.
        """
        if self.event_count < 2:
            raise ValueError("halves() needs at least two rows")
        first = RowBatch(now=self._now, plan=self.plan)
        second = RowBatch(now=self._now, plan=self.plan)
        room = self.event_count // 2
        for table in self._reader.plan.tables:
            columns = self._buffers[table.event_type]
            size = len(columns[0])
            if not size:
                continue
            cut = min(room, size)
            room -= cut
            for target, column in enumerate(columns):
                first._buffers[table.event_type][target].extend(column[:cut])
                second._buffers[table.event_type][target].extend(column[cut:])
        first._rejections.extend(self._rejections)
        rejection_bytes = sum(map(_rejection_size, self._rejections))
        row_bytes = self._nbytes - rejection_bytes
        first._nbytes = rejection_bytes + row_bytes * first.event_count // self.event_count
        second._nbytes = row_bytes - (first._nbytes - rejection_bytes)
        return first, second

    def as_rejected(
        self, *, error_class: str, error_message: str, sqlstate: str | None = None
    ) -> RowBatch:
        """A batch with no rows that dead-letters every row of this one (stage "write").

        Each row becomes a Rejection carrying its source record's key, value, headers
        and coordinates, its event id (derived or not), type and correlation id, and
        the reason PostgreSQL gave. This batch's own rejections are carried over.
        """
        rejected = RowBatch(now=self._now, plan=self.plan)
        for rejection in self._rejections:
            rejected.add_rejection(rejection)
        for table in self._reader.plan.tables:
            columns = self._buffers[table.event_type]
            for event_id, correlation_id, record in zip(
                columns[0], columns[2], columns[-1], strict=True
            ):
                rejected.add_rejection(
                    _rejection(
                        record,
                        stage="write",
                        error_class=error_class,
                        message=error_message,
                        sqlstate=sqlstate,
                        event_id=event_id,
                        event_type=table.event_type,
                        correlation_id=correlation_id,
                    )
                )
        return rejected

    # --- reading -------------------------------------------------------------------------

    def columns(self, table: WriteTable) -> list[list[Any]]:
        """The column lists of ``table``, in :attr:`WriteTable.columns` order (no copy)."""
        return self._buffers[table.event_type][:-1]

    def source_records(self, table: WriteTable) -> list[KafkaRecord]:
        """The Kafka record behind each row of ``table``, row for row (no copy)."""
        records: list[KafkaRecord] = self._buffers[table.event_type][-1]
        return records

    def rows(self, table: WriteTable) -> list[dict[str, Any]]:
        """Rows of ``table`` as dicts keyed by column name (for tests and debugging)."""
        names = table.column_names
        return [
            dict(zip(names, row, strict=True)) for row in zip(*self.columns(table), strict=True)
        ]

    def iter_tables(self) -> Iterator[WriteTable]:
        """The fact tables that have rows, in write order."""
        return (table for table in self.plan.tables if self._buffers[table.event_type][0])

    @property
    def event_count(self) -> int:
        return sum(len(columns[0]) for columns in self._buffers.values())

    @property
    def rejection_count(self) -> int:
        return len(self._rejections)

    @property
    def rejections(self) -> list[Rejection]:
        """The rejections in the order they were added (a copy)."""
        return list(self._rejections)

    @property
    def counts_by_type(self) -> Mapping[str, int]:
        """Rows per event type (e.g. ``{"inference_completed": 812}``), types with rows only."""
        return {kind: len(columns[0]) for kind, columns in self._buffers.items() if columns[0]}

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the batch, source records included (for queue bounds)."""
        return self._nbytes

    def __len__(self) -> int:
        return self.event_count + len(self._rejections)

    def __repr__(self) -> str:
        return (
            f"RowBatch(events={self.event_count}, rejections={self.rejection_count}, "
            f"nbytes={self.nbytes})"
        )
