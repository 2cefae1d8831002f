"""Writer spans: ``{db.operation.name} {db.namespace}`` (CLIENT), one per transaction.

A writer opens :func:`db_write_span` around each transaction (a child of the first
batch's span, linked to the other batches it writes: :func:`transaction_links`), names
it after the connection's database (:func:`record_connection`), records each retry as a
span event (:func:`record_retry`) and the committed counts as attributes
(:func:`record_write_result`). A permanent error marks the span failed and the writer
bisects the batch inside a ``kingest.bisect`` span (:func:`bisect_span`); writes inside
it carry their depth. Once the batches are durable (or abandoned) the writer ends their
message spans (:func:`end_message_spans`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from kingest.store import first_line
from kingest.telemetry.tracing.batches import BatchTrace, mark_dead_lettered
from kingest.telemetry.tracing.conventions import (
    DB_BATCH_SIZE,
    DB_NAMESPACE,
    DB_OPERATION_NAME,
    DB_STATUS_CODE,
    DB_SYSTEM_NAME,
    ERROR_TYPE,
    SERVER_ADDRESS,
    SERVER_PORT,
)
from kingest.telemetry.tracing.setup import tracer, tracing_active

if TYPE_CHECKING:
    from kingest.store import Rejection, RowBatch, WriteResult

__all__ = [
    "WriteSpan",
    "bisect_span",
    "db_write_span",
    "end_message_spans",
    "record_connection",
    "record_retry",
    "record_write_result",
    "transaction_links",
]

_BISECT_DEPTH = otel_context.create_key("kingest.bisect_depth")


class _HasTrace(Protocol):
    @property
    def tp(self) -> tuple[str, int]: ...
    @property
    def trace(self) -> BatchTrace | None: ...


def transaction_links(batches: Sequence[_HasTrace]) -> list[Link]:
    """Links from a transaction's spans to the batches written with the first one."""
    return [
        Link(batch.trace.span_context, {"kingest.link": "batch"})
        for batch in batches[1:]
        if batch.trace is not None and batch.trace.span_context.is_valid
    ]


def _statement_count(rows: RowBatch, dead_letters: bool) -> int:
    present = rows.counts_by_type
    count = sum(
        1
        for statement in rows.plan.statements
        if any(table.event_type in present for table in statement.fact_tables)
    )
    return count + (1 if dead_letters and rows.rejection_count else 0)


class WriteSpan:
    """The span of one writer transaction (see :func:`db_write_span`)."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def fail(self, error: BaseException | None) -> None:
        """Mark the transaction failed with a permanent ``error`` (None: it succeeded)."""
        if error is None or not self.span.is_recording():
            return
        sqlstate = getattr(error, "sqlstate", None)
        self.span.set_attribute(ERROR_TYPE, sqlstate or type(error).__qualname__)
        if sqlstate:
            self.span.set_attribute(DB_STATUS_CODE, sqlstate)
        self.span.set_status(Status(StatusCode.ERROR, first_line(error)[:200]))


_NO_WRITE_SPAN: Final = WriteSpan(trace.INVALID_SPAN)


def _db_attributes(database: str, host: str | None, port: int | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if database:
        attributes[DB_NAMESPACE] = database
    if host:
        attributes[SERVER_ADDRESS] = host
        if port:
            attributes[SERVER_PORT] = port
    return attributes


@contextmanager
def db_write_span(
    rows: RowBatch, links: Sequence[Link] = (), *, dead_letters: bool = True
) -> Iterator[WriteSpan]:
    """The CLIENT span of one transaction writing ``rows``; current for the block.

    Named ``{db.operation.name}`` until :func:`record_connection` adds the database.
    """
    if not tracing_active():
        yield _NO_WRITE_SPAN
        return
    statements = _statement_count(rows, dead_letters)
    operation = "BATCH INSERT" if statements > 1 else "INSERT"
    attributes: dict[str, Any] = {
        DB_SYSTEM_NAME: "postgresql",
        DB_OPERATION_NAME: operation,
        "kingest.write.events": rows.event_count,
        "kingest.write.rejections": rows.rejection_count,
    }
    if statements > 1:
        attributes[DB_BATCH_SIZE] = statements
    depth = otel_context.get_value(_BISECT_DEPTH)
    if isinstance(depth, int):
        attributes["kingest.bisect.depth"] = depth
    with tracer.start_as_current_span(
        operation, kind=SpanKind.CLIENT, attributes=attributes, links=links
    ) as span:
        yield WriteSpan(span)


def record_connection(conn: Any) -> None:
    """Add the connection's database, host and port to the current write span, and the
    database to its name (no network call: libpq knows them)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None)
    if isinstance(attributes, Mapping) and DB_NAMESPACE in attributes:
        return  # a retry on a new connection: named already
    info = conn.info
    host = info.host if info.host and not info.host.startswith("/") else None
    try:
        port = int(info.port) if host and info.port else None
    except (TypeError, ValueError):
        port = None
    database = info.dbname or ""
    span.set_attributes(_db_attributes(database, host, port))
    if database and isinstance(attributes, Mapping):
        span.update_name(f"{attributes.get(DB_OPERATION_NAME, 'INSERT')} {database}")


def record_retry(error: BaseException, delay_s: float, attempt: int) -> None:
    """A transient failure of the current span's operation, retried after ``delay_s``."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    sqlstate = getattr(error, "sqlstate", None)
    attributes: dict[str, Any] = {
        ERROR_TYPE: sqlstate or type(error).__qualname__,
        "kingest.retry.attempt": attempt,
        "kingest.retry.delay_s": round(delay_s, 3),
        "exception.message": first_line(error)[:200],
    }
    if sqlstate:
        attributes[DB_STATUS_CODE] = sqlstate
    span.add_event("retry", attributes)


def record_write_result(result: WriteResult) -> None:
    """The counts of a committed write, on the current span."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("kingest.write.rows_inserted", sum(result.inserted.values()))
    span.set_attribute("kingest.write.duplicates", result.duplicates)
    span.set_attribute("kingest.write.dead_lettered", result.dead_lettered)


@contextmanager
def bisect_span(rows: RowBatch) -> Iterator[None]:
    """An INTERNAL span holding the writes of the two halves of a rejected batch."""
    depth = otel_context.get_value(_BISECT_DEPTH)
    depth = depth + 1 if isinstance(depth, int) else 1
    with tracer.start_as_current_span(
        "kingest.bisect",
        attributes={"kingest.bisect.depth": depth, "kingest.write.events": rows.event_count},
    ):
        token = otel_context.attach(otel_context.set_value(_BISECT_DEPTH, depth))
        try:
            yield
        finally:
            otel_context.detach(token)


def end_message_spans(
    batches: Sequence[_HasTrace],
    rejections: Sequence[Rejection] = (),
    *,
    abandoned: bool = False,
) -> None:
    """End the per-message spans of ``batches``, now durable (or abandoned); a message
    PostgreSQL rejected (a write-stage dead letter in ``rejections``) is marked so."""
    traced = [b for b in batches if b.trace is not None and b.trace.message_spans]
    if not traced:
        return
    rejected: dict[tuple[str, int, int], Rejection] = {}
    if not abandoned:
        rejected = {
            (r.topic, r.partition, r.offset): r for r in rejections if r.error_stage == "write"
        }
    for batch in traced:
        assert batch.trace is not None
        topic, partition = batch.tp
        for offset, span in batch.trace.message_spans.items():
            if abandoned:
                span.set_status(
                    Status(StatusCode.ERROR, "abandoned at the drain deadline (redelivered)")
                )
            else:
                rejection = rejected.get((topic, partition, offset))
                if rejection is not None:
                    mark_dead_lettered(span, rejection)
            span.end()
        batch.trace.message_spans.clear()
