"""Batch and message spans: ``process {topic}`` (CONSUMER), opened by a partition actor.

:func:`batch_span` is one partition batch's span, from its first message to its
hand-over to the writers, linked to its messages' trace contexts; it also starts the
spans of (some of) the messages sampled upstream, children of their producer's spans.
Their context and the open message spans travel with the write batch as a
:class:`BatchTrace`; the writer ends the message spans once the batch is durable
(:func:`kingest.telemetry.tracing.writes.end_message_spans`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
)

from actors import with_correlation_id
from kingest.telemetry.tracing.conventions import (
    DB_STATUS_CODE,
    ERROR_TYPE,
    MESSAGING_BATCH_COUNT,
    MESSAGING_CONSUMER_GROUP,
    MESSAGING_CONVERSATION_ID,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_KAFKA_OFFSET,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_PARTITION_ID,
    MESSAGING_SYSTEM,
)
from kingest.telemetry.tracing.setup import link_limit, tracer
from kingest.telemetry.tracing.traceparent import TraceCollector, parse_traceparent

if TYPE_CHECKING:
    from kingest.store import Rejection, RowBatch

__all__ = ["BatchTrace", "batch_span", "mark_dead_lettered"]


@dataclass(slots=True)
class BatchTrace:
    """Travels with a write batch: its span's context, and the open per-message spans
    (by offset) that the writer ends once the batch is durable."""

    span_context: SpanContext
    message_spans: dict[int, Span] = field(default_factory=dict)


def _messaging_attributes(topic: str, partition: int, group: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        MESSAGING_SYSTEM: "kafka",
        MESSAGING_OPERATION_TYPE: "process",
        MESSAGING_OPERATION_NAME: "process",
        MESSAGING_DESTINATION_NAME: topic,
        MESSAGING_PARTITION_ID: str(partition),
    }
    if group:
        attributes[MESSAGING_CONSUMER_GROUP] = group
    return attributes


def _shared_correlation_id(rows: RowBatch) -> str | None:
    """The correlation id of every row and rejection of ``rows`` when they share one."""
    seen: set[str] = set()
    for table in rows.iter_tables():
        seen.update(rows.columns(table)[table.column_names.index("correlation_id")])
        if len(seen) > 1:
            return None
    for rejection in rows.rejections:
        seen.add(rejection.correlation_id or "")
    if len(seen) != 1:
        return None
    (only,) = seen
    return only or None


def _message_details(
    rows: RowBatch, offsets: set[int]
) -> dict[int, tuple[str | None, str | None, str | None, Rejection | None]]:
    """offset -> (event id, event type, correlation id, rejection) for ``offsets``."""
    found: dict[int, tuple[str | None, str | None, str | None, Rejection | None]] = {}
    for table in rows.iter_tables():
        names = table.column_names
        columns = rows.columns(table)
        column_offsets = columns[names.index("kafka_offset")]
        position = dict(zip(column_offsets, range(len(column_offsets)), strict=True))
        event_ids = columns[names.index("event_id")]
        correlation_ids = columns[names.index("correlation_id")]
        for offset in offsets:
            index = position.get(offset)
            if index is not None:
                found[offset] = (
                    event_ids[index],
                    table.event_type,
                    correlation_ids[index],
                    None,
                )
    for rejection in rows.rejections:
        if rejection.offset in offsets:
            found[rejection.offset] = (
                rejection.event_id,
                rejection.event_type,
                rejection.correlation_id,
                rejection,
            )
    return found


def mark_dead_lettered(span: Span, rejection: Rejection) -> None:
    """Mark a message's span failed with the reason its message became a dead letter
    (at decoding when the span starts, or at writing when the writer ends it)."""
    span.set_attribute(ERROR_TYPE, rejection.error_class)
    span.set_attribute("kingest.dead_letter.stage", rejection.error_stage)
    if rejection.sqlstate:
        span.set_attribute(DB_STATUS_CODE, rejection.sqlstate)
    span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {rejection.error_message}"[:200]))


def _message_spans(
    chosen: list[tuple[int, bytes, int]],
    rows: RowBatch,
    batch_context: SpanContext,
    attributes: Mapping[str, Any],
) -> dict[int, Span]:
    details = _message_details(rows, {offset for offset, _, _ in chosen})
    topic = attributes[MESSAGING_DESTINATION_NAME]
    spans: dict[int, Span] = {}
    for offset, raw, received_ns in chosen:
        parent = parse_traceparent(raw)
        if parent is None or offset in spans:
            continue
        event_id, event_type, correlation_id, rejection = details.get(
            offset, (None, None, None, None)
        )
        own: dict[str, Any] = {**attributes, MESSAGING_KAFKA_OFFSET: offset}
        if correlation_id:
            own[MESSAGING_CONVERSATION_ID] = correlation_id
        if event_id:
            own["kingest.event.id"] = event_id
        if event_type:
            own["kingest.event.type"] = event_type
        span = tracer.start_span(
            f"process {topic}",
            context=trace.set_span_in_context(NonRecordingSpan(parent)),
            kind=SpanKind.CONSUMER,
            attributes=own,
            links=[Link(batch_context, {"kingest.link": "batch"})],
            start_time=received_ns,
        )
        if rejection is not None:
            mark_dead_lettered(span, rejection)
        spans[offset] = span
    return spans


@contextmanager
def batch_span(
    tp: tuple[str, int],
    *,
    group: str | None,
    first_offset: int,
    last_offset: int,
    message_count: int,
    rows: RowBatch,
    collector: TraceCollector,
    max_message_spans: int = 16,
) -> Iterator[BatchTrace]:
    """The process span of one partition batch, current (with the batch's correlation id
    when all its messages share one) for the block that hands the batch over; and the
    spans of at most ``max_message_spans`` of its messages sampled upstream."""
    topic, partition = tp
    links, dropped = collector.links(link_limit())
    chosen = collector.pick_sampled(max_message_spans)
    attributes = _messaging_attributes(topic, partition, group)
    span = tracer.start_span(
        f"process {topic}",
        context=otel_context.Context(),
        kind=SpanKind.CONSUMER,
        attributes={
            **attributes,
            MESSAGING_BATCH_COUNT: message_count,
            "kingest.batch.first_offset": first_offset,
            "kingest.batch.last_offset": last_offset,
            "kingest.batch.events": rows.event_count,
            "kingest.batch.rejections": rows.rejection_count,
            "kingest.links.dropped": dropped,
            "kingest.message_spans": len(chosen),
            "kingest.message_spans.skipped": len(collector.sampled) - len(chosen),
        },
        links=links,
        start_time=collector.opened_ns,
    )
    context = trace.set_span_in_context(span, otel_context.Context())
    if span.is_recording():
        correlation_id = _shared_correlation_id(rows)
        if correlation_id is not None:
            span.set_attribute(MESSAGING_CONVERSATION_ID, correlation_id)
            context = with_correlation_id(correlation_id, context)
    span_context = span.get_span_context()
    message_spans = _message_spans(chosen, rows, span_context, attributes) if chosen else {}
    token = otel_context.attach(context)
    try:
        yield BatchTrace(span_context, message_spans)
    except BaseException as error:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        raise
    finally:
        otel_context.detach(token)
        span.end()
