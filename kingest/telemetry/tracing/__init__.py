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

The modules, one per kind of span (their call sites use ``tracing.xxx`` through this
front):

* :mod:`~kingest.telemetry.tracing.conventions`: the semantic-convention attribute names;
* :mod:`~kingest.telemetry.tracing.setup`: the tracer provider, sampler, exporters;
* :mod:`~kingest.telemetry.tracing.traceparent`: W3C ``traceparent`` headers collected
  per batch;
* :mod:`~kingest.telemetry.tracing.batches`: batch and message spans;
* :mod:`~kingest.telemetry.tracing.writes`: writer transaction and bisection spans;
* :mod:`~kingest.telemetry.tracing.dead_letters`: the dead-letter publication span;
* :mod:`~kingest.telemetry.tracing.commits`: offset commit spans.
"""

from __future__ import annotations

from kingest.telemetry.tracing.batches import BatchTrace, batch_span
from kingest.telemetry.tracing.commits import CommitSpans
from kingest.telemetry.tracing.conventions import DEFAULT_MAX_LINKS
from kingest.telemetry.tracing.dead_letters import dead_letter_span
from kingest.telemetry.tracing.setup import TracingHandle, configure_tracing, tracing_active
from kingest.telemetry.tracing.traceparent import TraceCollector, open_batch, parse_traceparent
from kingest.telemetry.tracing.writes import (
    WriteSpan,
    bisect_span,
    db_write_span,
    end_message_spans,
    record_connection,
    record_retry,
    record_write_result,
    transaction_links,
)

__all__ = [
    "DEFAULT_MAX_LINKS",
    "BatchTrace",
    "CommitSpans",
    "TraceCollector",
    "TracingHandle",
    "WriteSpan",
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
