"""OpenTelemetry tracing: set-up from the standard ``OTEL_*`` variables, and kingest's spans.

Set-up (:func:`configure_tracing`, from the :class:`~kingest.config.TracingConfig` that
:mod:`kingest.config.otel` reads off the ``OTEL_*`` variables) happens once, in
``kingest start``.

With tracing off no tracer provider is installed, :func:`tracing_active` is false and the
pipeline skips everything below (no header is looked at). With tracing on, the pipeline
records, following the OpenTelemetry messaging, Kafka and database conventions:

* ``process {topic}`` (CONSUMER), one per partition batch, from the batch's first
  message to its hand-over to the writers, linked to the distinct span contexts of the
  messages' W3C ``traceparent`` headers (sampled ones first, at most the SDK's link
  limit, :data:`DEFAULT_MAX_LINKS` by default; the number left out is in
  ``kingest.links.dropped``);
* ``process {topic}`` (CONSUMER), one per message whose ``traceparent`` has the sampled
  flag (at most ``KINGEST_TRACE_MESSAGE_SPANS`` per batch, spread over it: such a span
  costs about 0.1 ms of CPU with its export), child of the producer's span (same trace),
  linked to its batch span, carrying the correlation id
  (``messaging.message.conversation_id``); it ends when the message's transaction
  committed, so its duration is the message's time inside kingest;
* ``{db.operation.name} {db.namespace}`` (CLIENT), one per writer transaction, child of
  the batch span (the context crosses the actor hop in the envelope) and linked to the
  other batches written in the same transaction; retries are span events; row counts
  are attributes; a permanent error sets the error status and is followed by a
  ``kingest.bisect`` span holding the transactions of the two halves;
* ``send {dead-letter topic}`` (PRODUCER), one per publication to the dead-letter topic,
  whose context is the ``traceparent`` header of the dead letters it publishes;
* ``commit {topic}`` (CLIENT, ``messaging.operation.type=settle``), one per offset
  commit, linked to the sampled batch spans whose offsets it commits.

A root span linked to a sampled context is sampled whenever the configured sampler is
parent-based (the default): a producer's sampled trace therefore always leads to a
recorded batch span and its database write.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from actors import with_correlation_id
from kingest import __version__
from kingest.config import TracingConfig, describe_tracing, redact_url
from kingest.store import WRITE_PLAN, first_line, message_headers

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

    from kingest.store import Rejection, RowBatch, WriteResult

__all__ = [
    "DEFAULT_MAX_LINKS",
    "BatchTrace",
    "CommitSpans",
    "TraceCollector",
    "TracingHandle",
    "batch_span",
    "bisect_span",
    "configure_tracing",
    "db_write_span",
    "dead_letter_span",
    "end_message_spans",
    "open_batch",
    "parse_traceparent",
    "record_connection",
    "record_retry",
    "record_write_result",
    "tracing_active",
    "transaction_links",
]

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME: Final = "kingest"
TRACEPARENT_HEADER: Final = "traceparent"
#: The SDK's default link limit per span (``OTEL_SPAN_LINK_COUNT_LIMIT``).
DEFAULT_MAX_LINKS: Final = 128

# --------------------------------------------------------------------------- attributes

MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_PARTITION_ID: Final = "messaging.destination.partition.id"
MESSAGING_CONSUMER_GROUP: Final = "messaging.consumer.group.name"
MESSAGING_BATCH_COUNT: Final = "messaging.batch.message_count"
MESSAGING_KAFKA_OFFSET: Final = "messaging.kafka.offset"
MESSAGING_CONVERSATION_ID: Final = "messaging.message.conversation_id"
DB_SYSTEM_NAME: Final = "db.system.name"
DB_NAMESPACE: Final = "db.namespace"
DB_OPERATION_NAME: Final = "db.operation.name"
DB_BATCH_SIZE: Final = "db.operation.batch.size"
DB_STATUS_CODE: Final = "db.response.status_code"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"

_tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__)
_BISECT_DEPTH = otel_context.create_key("kingest.bisect_depth")

# ================================================================================ set-up


@dataclass
class TracingHandle:
    """What :func:`configure_tracing` installed; :meth:`shutdown` flushes and stops it."""

    provider: TracerProvider | None = None

    def shutdown(self) -> None:
        """Export what is still queued and stop the exporters (idempotent)."""
        provider, self.provider = self.provider, None
        if provider is None:
            return
        try:
            provider.shutdown()
        except Exception:
            log.warning("shutting down tracing failed", exc_info=True)


def _make_sampler(config: TracingConfig) -> Sampler:
    # The SDK's TracerProvider reads OTEL_TRACES_SAMPLER and _ARG itself (the six
    # built-in names), but on an unknown name or a bad ratio it only logs a warning and
    # samples everything; kingest validates them (above), builds the same sampler from
    # the checked values and extends the parent-based ones to links.
    from opentelemetry.sdk.trace import sampling  # noqa: PLC0415 - the SDK only when tracing

    ratio = 1.0 if config.sampler_ratio is None else config.sampler_ratio
    roots: dict[str, Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
    }
    name = config.sampler
    if not name.startswith("parentbased_"):
        return roots[name]
    delegate = sampling.ParentBased(roots[name.removeprefix("parentbased_")])

    class LinkedParentBased(sampling.Sampler):
        """ParentBased, extended to links: a span without a parent that links to a
        sampled span context is sampled (a batch holding a sampled message is recorded)."""

        def should_sample(  # noqa: PLR0917 - the SDK's signature
            self,
            parent_context: otel_context.Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[Link] | None = None,
            trace_state: Any = None,
        ) -> sampling.SamplingResult:
            if links and not trace.get_current_span(parent_context).get_span_context().is_valid:
                for link in links:
                    if link.context.trace_flags.sampled:
                        return sampling.SamplingResult(
                            sampling.Decision.RECORD_AND_SAMPLE, attributes
                        )
            return delegate.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            description: str = delegate.get_description()  # type: ignore[no-untyped-call]
            return f"LinkedParentBased{{{description}}}"

    return LinkedParentBased()


def _make_resource(environ: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource  # noqa: PLC0415

    from_env = OTELResourceDetector().detect().attributes
    defaults = {"service.name": "kingest", "service.version": __version__}
    # Resource.create lets explicit attributes override the environment's: pass only the
    # defaults the environment does not set, so OTEL_SERVICE_NAME and
    # OTEL_RESOURCE_ATTRIBUTES win.
    return Resource.create({k: v for k, v in defaults.items() if k not in from_env})


def _make_exporter(name: str, config: TracingConfig) -> SpanExporter:
    # The exporters read the endpoint, headers, timeout, compression and TLS variables
    # themselves; the imports stay here so that kingest without tracing loads no exporter.
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter(service_name=config.service_name)
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def configure_tracing(
    config: TracingConfig, environ: Mapping[str, str] | None = None
) -> TracingHandle:
    """Install the global tracer provider ``config`` describes (nothing when tracing is
    off) and return the handle that flushes it at exit."""
    if not config.enabled:
        log.info("tracing off (%s)", config.exporters_reason)
        return TracingHandle()
    import os  # noqa: PLC0415

    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(
        sampler=_make_sampler(config),
        resource=_make_resource(os.environ if environ is None else environ),
    )
    for name in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(_make_exporter(name, config)))
    trace.set_tracer_provider(provider)
    where = f" {config.protocol} to {redact_url(config.endpoint)}" if config.otlp else ""
    log.info(
        "tracing on: %s%s, sampler %s",
        ",".join(config.exporters),
        where,
        describe_tracing(config)["OTEL_TRACES_SAMPLER"],
    )
    return TracingHandle(provider)


def tracing_active() -> bool:
    """True once a real tracer provider is installed (the pipeline traces only then)."""
    return not isinstance(trace.get_tracer_provider(), (ProxyTracerProvider, NoOpTracerProvider))


# ======================================================================= W3C traceparent


def parse_traceparent(value: bytes | str) -> SpanContext | None:
    """The remote span context of a W3C ``traceparent`` value, or None when malformed."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    parts = text.strip().split("-")
    if len(parts) < 4:
        return None
    version, trace_hex, span_hex, flags_hex = parts[:4]
    if (
        len(version) != 2
        or version == "ff"
        or len(trace_hex) != 32
        or len(span_hex) != 16
        or len(flags_hex) != 2
        or (version == "00" and len(parts) != 4)
    ):
        return None
    try:
        int(version, 16)
        trace_id = int(trace_hex, 16)
        span_id = int(span_hex, 16)
        flags = int(flags_hex, 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 0x01))


class _Headers(Protocol):
    def headers(self) -> Any: ...
    def offset(self) -> int | None: ...


class TraceCollector:
    """What one open batch gathers for its spans: when it opened, the distinct
    ``traceparent`` values of its messages, and its messages that carry a sampled one.

    Only created while tracing is active (:func:`open_batch`); :meth:`scan` looks at the
    headers of every message, a message without headers costs one call.
    """

    __slots__ = ("opened_ns", "sampled", "traceparents")

    def __init__(self) -> None:
        self.opened_ns = time.time_ns()
        #: Distinct traceparent values in arrival order (a dict as an ordered set).
        self.traceparents: dict[bytes, None] = {}
        #: (offset, traceparent, when it was received) of messages sampled upstream.
        self.sampled: list[tuple[int, bytes, int]] = []

    def scan(self, records: Iterable[_Headers]) -> None:
        traceparents = self.traceparents
        received_ns = 0
        for record in records:
            headers = message_headers(record)
            if not headers:
                continue
            pairs = headers.items() if isinstance(headers, Mapping) else headers
            for key, value in pairs:
                if key != TRACEPARENT_HEADER or not value:
                    continue
                raw = value.encode() if isinstance(value, str) else value
                traceparents[raw] = None
                if _sampled_flag(raw):
                    if not received_ns:
                        received_ns = time.time_ns()
                    offset = record.offset()
                    self.sampled.append((-1 if offset is None else offset, raw, received_ns))
                break

    def links(self, limit: int) -> tuple[list[Link], int]:
        """Links to the distinct valid contexts, sampled ones first, at most ``limit``;
        and how many distinct values were left out (only those linked are parsed)."""
        sampled: list[bytes] = []
        others: list[bytes] = []
        for raw in self.traceparents:
            (sampled if _sampled_flag(raw) else others).append(raw)
        links: list[Link] = []
        considered = 0
        for raw in itertools.chain(sampled, others):
            if len(links) >= limit:
                break
            considered += 1
            context = parse_traceparent(raw)
            if context is not None:
                links.append(Link(context))
        return links, len(self.traceparents) - considered

    def pick_sampled(self, limit: int) -> list[tuple[int, bytes, int]]:
        """At most ``limit`` of the sampled messages, spread evenly over the batch."""
        sampled = self.sampled
        if len(sampled) <= limit:
            return sampled
        return [sampled[index * len(sampled) // limit] for index in range(limit)]


def _sampled_flag(raw: bytes) -> bool:
    """Whether a version-00 style traceparent has the sampled flag ("...-01"); cheap."""
    return len(raw) >= 55 and raw[54] in b"13579bdfBDF"


def open_batch() -> TraceCollector | None:
    """A collector for a batch being opened, or None when tracing is off."""
    return TraceCollector() if tracing_active() else None


# ============================================================================ batch spans


@dataclass(slots=True)
class BatchTrace:
    """Travels with a write batch: its span's context, and the open per-message spans
    (by offset) that the writer ends once the batch is durable."""

    span_context: SpanContext
    message_spans: dict[int, Span] = field(default_factory=dict)


_max_links: int | None = None


def _link_limit() -> int:
    global _max_links  # noqa: PLW0603 - read once, lazily (the SDK's own env variable)
    if _max_links is None:
        provider = trace.get_tracer_provider()
        limits = getattr(provider, "_span_limits", None)
        value = getattr(limits, "max_links", None)
        _max_links = value if isinstance(value, int) and value >= 0 else DEFAULT_MAX_LINKS
    return _max_links


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


def _mark_dead_lettered(span: Span, rejection: Rejection) -> None:
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
        span = _tracer.start_span(
            f"process {topic}",
            context=trace.set_span_in_context(NonRecordingSpan(parent)),
            kind=SpanKind.CONSUMER,
            attributes=own,
            links=[Link(batch_context, {"kingest.link": "batch"})],
            start_time=received_ns,
        )
        if rejection is not None:
            _mark_dead_lettered(span, rejection)
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
    links, dropped = collector.links(_link_limit())
    chosen = collector.pick_sampled(max_message_spans)
    attributes = _messaging_attributes(topic, partition, group)
    span = _tracer.start_span(
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


# =============================================================================== writers


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
        for statement in WRITE_PLAN
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
    with _tracer.start_as_current_span(
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
    with _tracer.start_as_current_span(
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
                    _mark_dead_lettered(span, rejection)
            span.end()
        batch.trace.message_spans.clear()


# ========================================================================== dead letters


@contextmanager
def dead_letter_span(
    topics: Sequence[str], message_count: int, group: str | None
) -> Iterator[Span]:
    """The PRODUCER span of one publication to the dead-letter topic(s); its context is
    what the dead letters' ``traceparent`` header carries."""
    distinct = list(dict.fromkeys(topics))
    attributes: dict[str, Any] = {
        MESSAGING_SYSTEM: "kafka",
        MESSAGING_OPERATION_TYPE: "send",
        MESSAGING_OPERATION_NAME: "send",
        MESSAGING_BATCH_COUNT: message_count,
    }
    if len(distinct) == 1:
        attributes[MESSAGING_DESTINATION_NAME] = distinct[0]
    if group:
        attributes["kingest.dead_letter.consumer_group"] = group
    name = f"send {distinct[0]}" if len(distinct) == 1 else "send"
    with _tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span


# ================================================================================ commits


class _Offset(Protocol):
    topic: str
    partition: int
    offset: int


class _LinkSource(Protocol):
    def commit_links(self, offsets: Iterable[tuple[tuple[str, int], int]]) -> list[SpanContext]: ...


def _commit_key(offsets: Iterable[_Offset]) -> tuple[tuple[str, int, int], ...]:
    return tuple(sorted((o.topic, o.partition, o.offset) for o in offsets))


class CommitSpans:
    """Spans of the consumer loop's offset commits (all on the loop's thread).

    A synchronous commit's span covers the call. An asynchronous commit's span starts
    with the request and ends when its result reaches the ``on_commit`` callback (or at
    :meth:`close`); at most :attr:`MAX_PENDING` wait for their result.
    """

    MAX_PENDING: Final = 64

    def __init__(self, group: str | None) -> None:
        self._group = group
        self._pending: dict[tuple[tuple[str, int, int], ...], Span] = {}

    def _start(
        self, offsets: Sequence[_Offset], links: _LinkSource | None, asynchronous: bool
    ) -> Span:
        topics = list(dict.fromkeys(o.topic for o in offsets))
        attributes: dict[str, Any] = {
            MESSAGING_SYSTEM: "kafka",
            MESSAGING_OPERATION_TYPE: "settle",
            MESSAGING_OPERATION_NAME: "commit",
            "kingest.commit.asynchronous": asynchronous,
            "kingest.commit.partitions": len(offsets),
            "kingest.commit.offsets": [f"{o.topic}/{o.partition}:{o.offset}" for o in offsets],
        }
        if len(topics) == 1:
            attributes[MESSAGING_DESTINATION_NAME] = topics[0]
        if self._group:
            attributes[MESSAGING_CONSUMER_GROUP] = self._group
        contexts = (
            links.commit_links(((o.topic, o.partition), o.offset) for o in offsets)
            if links is not None
            else []
        )
        return _tracer.start_span(
            f"commit {topics[0]}" if len(topics) == 1 else "commit",
            context=otel_context.Context(),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=[Link(c, {"kingest.link": "batch"}) for c in contexts[: _link_limit()]],
        )

    def started(self, offsets: Sequence[_Offset], links: _LinkSource | None) -> None:
        """An asynchronous commit of ``offsets`` was requested."""
        if not offsets or not tracing_active():
            return
        span = self._start(offsets, links, asynchronous=True)
        if not span.is_recording():
            return
        self._pending[_commit_key(offsets)] = span
        while len(self._pending) > self.MAX_PENDING:
            oldest = next(iter(self._pending))
            self._pending.pop(oldest).end()

    def finished(self, error: Any, partitions: Sequence[Any]) -> None:
        """The ``on_commit`` callback: end the matching asynchronous commit's span."""
        if not self._pending:
            return
        span = self._pending.pop(_commit_key(partitions), None)
        if span is None:
            return
        failure = error
        if failure is None:
            failure = next((p.error for p in partitions if p.error is not None), None)
        _end_commit(span, failure)

    @contextmanager
    def sync(self, offsets: Sequence[_Offset], links: _LinkSource | None) -> Iterator[None]:
        """Span of a synchronous commit of ``offsets`` (the block makes the call)."""
        if not offsets or not tracing_active():
            yield
            return
        span = self._start(offsets, links, asynchronous=False)
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=True):
                yield
        except BaseException as error:
            _end_commit(span, error)
            raise
        _end_commit(span, None)

    def close(self) -> None:
        """End the spans of asynchronous commits whose result never came."""
        pending, self._pending = self._pending, {}
        for span in pending.values():
            span.set_attribute("kingest.commit.result", "unknown")
            span.end()


def _end_commit(span: Span, error: Any) -> None:
    if error is not None:
        name = getattr(error, "name", None)
        kafka_name = name() if callable(name) else None
        args = getattr(error, "args", ())
        if kafka_name is None and args and callable(getattr(args[0], "name", None)):
            kafka_name = args[0].name()  # a KafkaException wrapping a KafkaError
        span.set_attribute(ERROR_TYPE, kafka_name or type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.set_attribute("kingest.commit.result", "failed")
    else:
        span.set_attribute("kingest.commit.result", "ok")
    span.end()
