"""What the pipeline's actors show of their work: one telemetry object per actor.

An actor says what happened (``transaction_committed``, ``retrying``,
``batches_acknowledged``...) to its :class:`WriterTelemetry` or
:class:`PartitionTelemetry`, which turns it into the three sinks behind it: the counters
of :class:`~kingest.telemetry.PipelineStats` (keyed by the metric catalog), the
histograms of :class:`~kingest.telemetry.PipelineMetrics`, and the spans of
:mod:`kingest.telemetry.tracing`. The actors' code then reads as the data path, and what
one event records is written in one place. Logs stay in the actors: they tell the
operator what the actor decided, under the actor's logger.

The objects live here, above :mod:`kingest.telemetry`, because they speak of the
pipeline's own messages (:class:`~kingest.pipeline.messages.WriteBatch`); telemetry
never imports the pipeline. Each belongs to one actor and is used on its thread only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs
from opentelemetry.trace import Link

from kingest.kafka import TopicPartitionKey
from kingest.pipeline.messages import WriteBatch
from kingest.store import sqlstate_of
from kingest.telemetry import catalog, tracing

if TYPE_CHECKING:
    from kingest.deadletters import DeadLetterPublishError, PublishFailure
    from kingest.store import KafkaRecord, Rejection, RowBatch, WriteResult
    from kingest.telemetry import PipelineMetrics, PipelineStats

__all__ = ["PartitionTelemetry", "WriterTelemetry", "retry_reason"]


def retry_reason(error: Exception) -> str:
    """The reason label of a retried database error: its SQLSTATE class, else its type
    (a connection failure has no SQLSTATE: OperationalError, PoolTimeout...)."""
    sqlstate = sqlstate_of(error)
    return sqlstate[:2] if sqlstate else type(error).__name__


class WriterTelemetry:
    """The counters, histograms and spans of one writer actor.

    A writer message (a group of batches written together) goes: :meth:`batches_taken`,
    then one :meth:`transaction` per attempt at writing rows (with :meth:`connected`,
    :meth:`retrying` and :meth:`transaction_committed` inside; :meth:`bisecting` around
    the halves of a rejected group), then :meth:`batches_durable` and
    :meth:`batches_acknowledged` (or :meth:`batches_abandoned` at the drain deadline).
    """

    def __init__(
        self,
        stats: PipelineStats,
        metrics: PipelineMetrics | None = None,
        *,
        dead_letter_table: bool = True,
    ) -> None:
        self._stats = stats
        self._metrics = metrics
        self._dead_letter_table = dead_letter_table
        #: Links from the current group's transaction spans to its other batches.
        self._links: list[Link] = []
        #: The transaction span open on this writer, if any: connections and retries are
        #: recorded on it (storing unpublished dead letters has none).
        self._write_span: tracing.WriteSpan | None = None

    # ------------------------------------------------------------------ one group of batches

    def batches_taken(self, batches: Sequence[WriteBatch]) -> None:
        """The writer took ``batches`` to write together in one transaction."""
        self._links = tracing.transaction_links(batches)

    def batches_durable(
        self, batches: Sequence[WriteBatch], rejections: Sequence[Rejection]
    ) -> None:
        """``batches`` are committed, with their dead letters (``rejections`` written
        by this writer): their messages' spans end."""
        tracing.end_message_spans(batches, rejections)

    def batches_acknowledged(self, batches: Sequence[WriteBatch]) -> None:
        """The writer is done with ``batches``: written, and acknowledged to the offset
        committer unless it had stopped (they are then redelivered, harmlessly)."""
        self._stats.last_written_at = time.monotonic()
        if self._metrics is not None:
            self._metrics.record_batches(batches)
        self._stats.increment(
            (catalog.BATCHES_WRITTEN, len(batches)),
            (catalog.MESSAGES_WRITTEN, sum(b.message_count for b in batches)),
            (catalog.TRANSACTIONS, 1),
        )

    def batches_abandoned(self, batches: Sequence[WriteBatch]) -> None:
        """``batches`` were given up at the drain deadline (they are redelivered)."""
        self._stats.increment((catalog.BATCHES_ABANDONED, len(batches)))
        tracing.end_message_spans(batches, abandoned=True)

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self, rows: RowBatch) -> Iterator[tracing.WriteSpan]:
        """The span of one transaction writing ``rows`` (with its retries), current for
        the block; the block marks it failed (:meth:`~tracing.WriteSpan.fail`)."""
        with tracing.db_write_span(rows, self._links, dead_letters=self._dead_letter_table) as span:
            self._write_span = span
            try:
                yield span
            finally:
                self._write_span = None

    @contextmanager
    def bisecting(self, rows: RowBatch) -> Iterator[None]:
        """The writes of the two halves of ``rows``, which PostgreSQL rejected."""
        with tracing.bisect_span(rows):
            yield

    def connected(self, conn: Any) -> None:
        """The current transaction runs on ``conn`` (its span names the database)."""
        if self._write_span is not None:
            tracing.record_connection(conn)

    def retrying(self, error: Exception, delay_s: float, attempt: int) -> None:
        """A transient database ``error``; attempt ``attempt`` follows in ``delay_s``."""
        self._stats.count(catalog.RETRIES, {("write", retry_reason(error)): 1})
        if self._write_span is not None:
            tracing.record_retry(error, delay_s, attempt)

    def prepared_statements_lost(self, error: Exception) -> None:
        """A pooler lost a prepared statement: the write is retried at once, without."""
        self._stats.count(catalog.RETRIES, {("write", retry_reason(error)): 1})

    def transaction_committed(self, result: WriteResult, rows: RowBatch, elapsed_s: float) -> None:
        """``rows`` were committed in ``elapsed_s``: events by type and outcome, dead
        letters by reason, the duration, and the counts on the transaction's span."""
        processed: dict[tuple[str, ...], int] = {}
        for kind, (stored, duplicates) in result.outcomes_by_type().items():
            if stored:
                processed[(kind, "stored")] = stored
            if duplicates:
                processed[(kind, "duplicate")] = duplicates
        reasons: dict[tuple[str, ...], int] = {}
        for rejection in rows.rejections if rows.rejection_count else ():
            outcome = (rejection.event_type or "unknown", "dead_lettered")
            processed[outcome] = processed.get(outcome, 0) + 1
            reason = (rejection.error_stage, rejection.error_class)
            reasons[reason] = reasons.get(reason, 0) + 1
        self._stats.count(catalog.EVENTS_PROCESSED, processed)
        if reasons:
            self._stats.count(catalog.DEAD_LETTERS, reasons)
        if self._metrics is not None:
            self._metrics.record_transaction(elapsed_s)
        tracing.record_write_result(result)

    # ------------------------------------------------------------------ dead-letter topic

    def publish_retrying(self, error: DeadLetterPublishError) -> None:
        """The dead-letter topic failed transiently; the publication is retried."""
        self._stats.count(catalog.RETRIES, {("dead_letter_publish", error.reason): 1})

    def dead_letters_published(self, count: int) -> None:
        """The dead-letter topic confirmed ``count`` dead letters."""
        self._stats.increment((catalog.DEAD_LETTERS_PUBLISHED, count))

    def dead_letters_kept(self, failures: Sequence[PublishFailure]) -> None:
        """Dead letters the topic did not take are kept in the table: counted by reason,
        and the latest one shown by ``/readyz``."""
        reasons: dict[tuple[str, ...], int] = {}
        for failure in failures:
            reasons[(failure.reason,)] = reasons.get((failure.reason,), 0) + 1
        self._stats.count(catalog.DEAD_LETTER_PUBLISH_FAILURES, reasons)
        last = failures[-1].rejection
        self._stats.dead_letter_fallback = (
            time.monotonic(),
            f"{last.topic}:{last.partition}:{last.offset} {failures[-1].detail}",
        )


class PartitionTelemetry:
    """The counters and spans of one partition actor.

    While tracing is on, each batch gathers its messages' trace contexts from
    :meth:`batch_opened` on (:meth:`received`), and :meth:`handing_over` is the batch's
    span, current while the batch is handed to the committer and the writers.
    """

    def __init__(
        self,
        tp: TopicPartitionKey,
        stats: PipelineStats | None = None,
        *,
        consumer_group: str | None = None,
        max_message_spans: int = 16,
    ) -> None:
        self._tp = tp
        self._stats = stats
        self._consumer_group = consumer_group
        self._max_message_spans = max_message_spans
        #: Trace contexts of the open batch's messages (None while tracing is off).
        self._traces: tracing.TraceCollector | None = None

    def batch_opened(self) -> None:
        """A batch opens with the next messages."""
        self._traces = tracing.open_batch()

    def received(self, records: Sequence[KafkaRecord]) -> None:
        """``records`` join the open batch."""
        if self._traces is not None:
            self._traces.scan(records)

    def unreadable_headers(self, count: int) -> None:
        """``count`` messages of one poll had headers that could not be read."""
        if self._stats is not None:
            topic, partition = self._tp
            self._stats.count(catalog.UNREADABLE_HEADERS, {(topic, str(partition)): count})

    @contextmanager
    def handing_over(self, batch: WriteBatch, last_offset: int) -> Iterator[WriteBatch]:
        """The open batch, closed as ``batch`` (offsets up to ``last_offset``), is handed
        over in the block: yields the batch to send, carrying its trace while tracing."""
        traces, self._traces = self._traces, None
        if traces is None:
            yield batch
            return
        with tracing.batch_span(
            self._tp,
            group=self._consumer_group,
            first_offset=batch.first_offset,
            last_offset=last_offset,
            message_count=batch.message_count,
            rows=batch.rows,
            collector=traces,
            max_message_spans=self._max_message_spans,
        ) as batch_trace:
            yield attrs.evolve(batch, trace=batch_trace)
