"""DB-writer actors: a pool of them shares one bounded queue of write batches.

Each writer takes a batch from the shared queue, tops it up with whatever other batches
are already waiting (up to ``batch_size`` messages, without waiting for more), writes all
of them in ONE transaction through :func:`kingest.store.write.write_batch`, and then
acknowledges each constituent batch to the offset committer.

Failures are handled by class (see :mod:`kingest.store.errors`):

* outages (connection lost, PostgreSQL shutting down or starting, out of resources, a
  system error such as an I/O error on its own files, pool timeout;
  :func:`kingest.store.errors.is_outage`): retried with capped exponential
  backoff and equal jitter, forever, until it succeeds or the service abandons in-flight
  work at the drain deadline. Nothing is dead-lettered because of an outage;
* other transient errors (deadlock, serialization failure, lock or statement timeout, a
  trigger's RAISE, any SQLSTATE not recognised): retried the same way, but at most
  ``retry_budget`` times per write (``KINGEST_RETRY_BUDGET``); then the batch is bisected
  like one with a permanent error (a statement timeout of a huge batch succeeds on its
  halves), and a single row that still fails is dead-lettered as ``retries_exhausted``
  with its SQLSTATE;
* a prepared statement the session lost (26000) or a name it already holds (42P05): a
  connection pooler in transaction mode runs each transaction on any server session. The
  writers stop using prepared statements (:class:`PreparedStatements`, logged once) and
  retry at once, without counting it against the budget: the rows are not at fault;
* schema errors (SQLSTATE class 42: a missing table or column means the database was not
  migrated): raised, so the supervisor stops the service with a clear message;
* other permanent errors (data exceptions, integrity violations): the batch is bisected
  until the offending events are isolated; they are stored as dead letters with the
  SQLSTATE, and every other row of the batch is written.

Dead letters go into ``kingest.dead_letters`` in the same transaction as the rows (the
table store), and/or to the dead-letter topic after that transaction committed (the
topic store): a batch is acknowledged only once every one of its dead letters is
durable, confirmed by the broker or kept in the table. A dead letter the topic can never
take (too large, invalid, not authorized) goes to the table at once; other failed
publications are retried with backoff for the publish budget
(``KINGEST_DEAD_LETTER_PUBLISH_TIMEOUT_S``), then go to the table too. Either way the
table row records the error (``publish_error``), the failure is counted
(``kingest.dead_letter.publish_failures``), logged with the dead letter's coordinates
and reported by ``/readyz``: an unwritable dead-letter topic is an alert, not a stall.

Counters, histograms and spans are recorded through the writer's
:class:`~kingest.pipeline.observe.WriterTelemetry`; the log lines are the writer's own.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from psycopg import Connection
from psycopg_pool import ConnectionPool

from actors import Actor, ActorStopped, Supervisor
from kingest.deadletters import (
    DeadLetterPublisher,
    DeadLetterPublishError,
    PublishFailure,
)
from kingest.pipeline.messages import Ack, WriteBatch
from kingest.pipeline.observe import WriterTelemetry
from kingest.pipeline.threads import WRITER_THREAD_PREFIX
from kingest.store import (
    ErrorKind,
    Rejection,
    RowBatch,
    WriteResult,
    classify_db_error,
    first_line,
    is_outage,
    is_schema_error,
    sqlstate_of,
    store_unpublished_dead_letters,
    write_batch,
)
from kingest.telemetry import PipelineMetrics, PipelineStats

__all__ = [
    "RETRIES_EXHAUSTED",
    "AbandonedError",
    "Backoff",
    "PreparedStatements",
    "RetriesExhaustedError",
    "SchemaNotReadyError",
    "WriterActor",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class AbandonedError(Exception):
    """In-flight work was given up at the drain deadline; it will be redelivered."""


class SchemaNotReadyError(RuntimeError):
    """PostgreSQL rejected a statement as invalid SQL: the schema is missing or stale."""


class RetriesExhaustedError(Exception):
    """A transient error that is not an outage failed a write ``attempts`` times in a row.

    It wraps the last error (``__cause__``, so its SQLSTATE stays readable) and reads as
    that error's first line.
    """

    def __init__(self, error: Exception, attempts: int) -> None:
        super().__init__(first_line(error))
        self.attempts = attempts
        self.__cause__ = error


#: ``error_class`` of a row dead-lettered because its write exhausted the retry budget.
RETRIES_EXHAUSTED = "retries_exhausted"


class Backoff:
    """Capped exponential backoff with equal jitter: attempt ``n`` waits a uniform draw
    from ``[c/2, c]`` where ``c = min(max_s, initial_s * 2**n)``, so a delay is never
    shorter than half its ceiling (the AWS architecture blog's "equal jitter")."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._initial = initial_s
        self._max = max_s
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        # The exponent stops growing once the cap is reached: an outage waited out for
        # thousands of attempts must not overflow the float.
        exponent = min(self.attempts, 64)
        ceiling = min(self._max, self._initial * (2**exponent))
        self.attempts += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


#: invalid_sql_statement_name ("prepared statement ... does not exist") and
#: duplicate_prepared_statement: what a transaction-mode pooler does to prepared statements.
_PREPARED_STATEMENT_STATES = frozenset({"26000", "42P05"})


class PreparedStatements:
    """Whether the writers' connections prepare their statements on the server; shared by
    the writer pool.

    Behind a connection pooler in transaction mode (PgBouncer without prepared statement
    support) each transaction may run on another server session: a statement prepared in
    one is missing in the next (SQLSTATE 26000), or its name is taken there by another
    client's (42P05). Every batch would fail on it, whatever its rows, and 42P05 reads
    like a schema error. The first such error turns prepared statements off for good on
    every writer connection (psycopg's ``prepare_threshold = None``: it prepares nothing,
    ``prepare=True`` included, and executes statements unnamed) and says, once, what to set.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def apply(self, conn: Any) -> None:
        """Make ``conn`` prepare nothing once prepared statements are off."""
        if not self._enabled and conn.prepare_threshold is not None:
            conn.prepare_threshold = None

    def lost(self, error: Exception) -> bool:
        """True when ``error`` is a pooler's doing to a prepared statement: prepared
        statements are then off (the caller retries the write at once)."""
        sqlstate = sqlstate_of(error)
        if sqlstate not in _PREPARED_STATEMENT_STATES:
            return False
        with self._lock:
            first, self._enabled = self._enabled, False
        if first:
            log.error(
                "PostgreSQL lost or already holds a prepared statement of kingest's "
                "(%s: %s): a connection pooler in transaction mode (PgBouncer) runs each "
                "transaction on any server session. The writers no longer prepare "
                "statements; set KINGEST_DATABASE_PREPARED_STATEMENTS=false to start "
                "without them (or enable the pooler's prepared statement support, "
                "PgBouncer's max_prepared_statements)",
                sqlstate,
                first_line(error),
                extra={"sqlstate": sqlstate},
            )
        return True


#: SQLSTATE insufficient_privilege: the role lost a grant, the schema is there.
_INSUFFICIENT_PRIVILEGE = "42501"


def _schema_error_text(error: Exception) -> str:
    sqlstate = sqlstate_of(error)
    if sqlstate == _INSUFFICIENT_PRIVILEGE:
        hint = "the database role lacks a privilege (see docs/security.md for the grants)"
    else:
        hint = "is the schema migrated? run `kingest migrate`"
    return f"PostgreSQL rejected kingest's SQL ({sqlstate}: {first_line(error)}); {hint}"


class WriterActor(Actor[WriteBatch]):
    """One member of the writer pool; see the module docstring."""

    def __init__(
        self,
        index: int,
        *,
        pool: ConnectionPool[Any],
        ack: Callable[[Ack], None],
        stats: PipelineStats,
        batch_size: int,
        retry_initial_s: float,
        retry_max_s: float,
        abandon: threading.Event,
        retry_budget: int = 5,
        consumer_group: str | None = None,
        dead_letter_table: bool = True,
        use_copy: bool = True,
        dead_letter_publisher: DeadLetterPublisher | None = None,
        prepared_statements: PreparedStatements | None = None,
        supervisor: Supervisor | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        super().__init__(f"{WRITER_THREAD_PREFIX}{index}", supervisor=supervisor)
        self._pool = pool
        self._ack = ack
        #: Where this writer records its counters, histograms and spans.
        self._telemetry = WriterTelemetry(stats, metrics, dead_letter_table=dead_letter_table)
        self._batch_size = batch_size
        self._backoff = Backoff(retry_initial_s, retry_max_s)
        self._retry_budget = retry_budget
        self._abandon = abandon
        self._consumer_group = consumer_group
        self._dead_letter_table = dead_letter_table
        self._use_copy = use_copy
        self._publisher = dead_letter_publisher
        self._prepared = prepared_statements or PreparedStatements()
        #: Rejections of the current message whose transaction committed (topic store).
        self._written_rejections: list[Rejection] = []

    def receive(self, message: WriteBatch) -> Any:
        batches = [message, *self._take_waiting(self._batch_size - message.message_count)]
        if len(batches) == 1:
            rows = message.rows
        else:
            rows = RowBatch(plan=message.rows.plan)
            for batch in batches:
                rows.extend(batch.rows)
        self._written_rejections = []
        self._telemetry.batches_taken(batches)
        try:
            self._write_isolating_failures(rows)
            if self._publisher is not None and self._written_rejections:
                self._publish_retrying(self._publisher, self._written_rejections)
        except AbandonedError:
            self._telemetry.batches_abandoned(batches)
            return None
        self._telemetry.batches_durable(batches, self._written_rejections)
        try:
            for batch in batches:
                self._ack(Ack(batch.tp, batch.generation, batch.first_offset))
        except ActorStopped:
            # The committer stopped (the run ended at its drain deadline while this
            # transaction was committing): nothing more is committed in this run, the
            # offsets are redelivered and the idempotent write makes that harmless.
            log.info(
                "offset committer stopped; %d written batches left unacknowledged "
                "(redelivered on the next start)",
                len(batches),
            )
        self._telemetry.batches_acknowledged(batches)
        return None

    def _take_waiting(self, room: int) -> list[WriteBatch]:
        """Batches already queued behind this one, while they fit in ``room`` messages."""
        taken: list[WriteBatch] = []
        mailbox = self.mailbox
        while room > 0:
            try:
                envelope = mailbox.get_nowait()
            except queue.Empty:
                break
            taken.append(envelope.message)
            room -= envelope.message.message_count
        return taken

    # ------------------------------------------------------------------ failure handling

    def _write_isolating_failures(self, rows: RowBatch) -> None:
        """Write ``rows``; bisect on permanent errors and exhausted retry budgets so only
        offending events dead-letter."""
        with self._telemetry.transaction(rows) as span:
            error = self._write_retrying(rows)
            span.fail(error)
        if error is None:
            return
        if rows.event_count <= 1:
            if isinstance(error, RetriesExhaustedError):
                error_class = RETRIES_EXHAUSTED
                message = f"{first_line(error)} (still failing after {error.attempts} attempts)"
            else:
                error_class, message = type(error).__name__, first_line(error)
            rejected = rows.as_rejected(
                error_class=error_class, error_message=message, sqlstate=sqlstate_of(error)
            )
            dead = next((r for r in rejected.rejections if r.error_stage == "write"), None)
            log.warning(
                "event rejected by PostgreSQL; dead-lettering it",
                extra={
                    "sqlstate": sqlstate_of(error),
                    "error": str(error).strip(),
                    **(
                        {
                            "topic": dead.topic,
                            "partition": dead.partition,
                            "offset": dead.offset,
                            "correlation_id": dead.correlation_id,
                            "event_id": dead.event_id,
                        }
                        if dead is not None
                        else {}
                    ),
                },
            )
            with self._telemetry.transaction(rejected) as span:
                failure = self._write_retrying(rejected)
                span.fail(failure)
            if failure is not None:
                raise failure
            return
        if isinstance(error, RetriesExhaustedError):
            log.warning(
                "a batch of %d events failed %d times in a row; splitting it: %s",
                rows.event_count,
                error.attempts,
                error,
                extra={"sqlstate": sqlstate_of(error)},
            )
        first_half, second_half = rows.halves()
        with self._telemetry.bisecting(rows):
            self._write_isolating_failures(first_half)
            self._write_isolating_failures(second_half)

    def _write_retrying(self, rows: RowBatch) -> Exception | None:
        """Write in one transaction, retrying transient errors; return a permanent error,
        or a :class:`RetriesExhaustedError` once ``retry_budget`` attempts failed with a
        transient error that is not an outage (outages are retried forever)."""

        def write(conn: Connection[Any]) -> tuple[WriteResult, float]:
            started = time.perf_counter()
            result = write_batch(
                conn,
                rows,
                consumer_group=self._consumer_group,
                store_dead_letters=self._dead_letter_table,
                use_copy=self._use_copy,
            )
            return result, time.perf_counter() - started

        outcome = self._retrying(
            write,
            retry_log="transient database error, retrying in %.2fs (attempt %d): %s",
        )
        if isinstance(outcome, Exception):
            return outcome
        result, elapsed = outcome
        self._telemetry.transaction_committed(result, rows, elapsed)
        self._written_rejections.extend(rows.rejections)
        return None

    def _retrying(
        self,
        operation: Callable[[Connection[Any]], _T],
        *,
        retry_log: str,
    ) -> _T | Exception:
        """Run ``operation`` on a pooled connection until it succeeds, retrying transient
        errors with backoff; return its result, a permanent error, or a
        :class:`RetriesExhaustedError` once ``retry_budget`` attempts failed with a
        transient error that is not an outage (outages are retried forever).

        A lost prepared statement is retried at once (without them); a schema error
        raises :class:`SchemaNotReadyError`, the drain deadline :class:`AbandonedError`.
        ``retry_log`` formats the delay, attempt and error.
        """
        self._backoff.reset()
        failures = 0
        while True:
            if self._abandon.is_set():
                raise AbandonedError
            prepared = self._prepared.enabled
            try:
                with self._pool.connection() as conn:
                    self._prepared.apply(conn)
                    self._telemetry.connected(conn)
                    return operation(conn)
            except Exception as error:
                if prepared and self._prepared.lost(error):
                    self._telemetry.prepared_statements_lost(error)
                    continue
                if is_schema_error(error):
                    raise SchemaNotReadyError(_schema_error_text(error)) from error
                if classify_db_error(error) is ErrorKind.PERMANENT:
                    return error
                if not is_outage(error):
                    failures += 1
                    if failures >= self._retry_budget:
                        return RetriesExhaustedError(error, failures)
                delay = self._backoff.next_delay()
                self._telemetry.retrying(error, delay, self._backoff.attempts)
                log.warning(
                    retry_log,
                    delay,
                    self._backoff.attempts,
                    str(error).strip() or type(error).__name__,
                )
                if self._abandon.wait(delay):
                    raise AbandonedError from error

    def _publish_retrying(
        self, publisher: DeadLetterPublisher, rejections: list[Rejection]
    ) -> None:
        """Publish to the dead-letter topic; keep in the table what it does not take.

        Failures that can never succeed go to the table at once; the others are retried
        with backoff until ``publisher.budget_s`` has passed since the first attempt.
        """
        self._backoff.reset()
        deadline = time.monotonic() + publisher.budget_s
        pending = rejections
        unpublished: list[PublishFailure] = []
        while pending:
            if self._abandon.is_set():
                raise AbandonedError
            try:
                publisher.publish(pending)
                break
            except DeadLetterPublishError as error:
                spent = time.monotonic() >= deadline
                unpublished += [f for f in error.failures if f.permanent or spent]
                pending = [f.rejection for f in error.failures if not (f.permanent or spent)]
                if not pending:
                    break
                delay = min(self._backoff.next_delay(), max(0.0, deadline - time.monotonic()))
                self._telemetry.publish_retrying(error)
                log.warning(
                    "dead-letter topic unavailable, retrying in %.2fs (attempt %d): %s",
                    delay,
                    self._backoff.attempts,
                    error,
                )
                if self._abandon.wait(delay):
                    raise AbandonedError from error
        if unpublished:
            self._keep_unpublished(unpublished)
        self._telemetry.dead_letters_published(len(rejections) - len(unpublished))

    def _keep_unpublished(self, failures: list[PublishFailure]) -> None:
        """Store dead letters the topic did not take in the table, with their error;
        retried like a database write (an outage forever, other errors ``retry_budget``
        times, after which the writer fails rather than acknowledge them)."""
        for failure in failures:
            r = failure.rejection
            log.error(
                "dead letter not published to the dead-letter topic; kept in "
                "kingest.dead_letters: %s",
                failure.detail,
                extra={
                    "topic": r.topic,
                    "partition": r.partition,
                    "offset": r.offset,
                    "correlation_id": r.correlation_id,
                    "event_id": r.event_id,
                    "error_type": failure.reason,
                },
            )

        def keep(conn: Connection[Any]) -> None:
            store_unpublished_dead_letters(
                conn,
                [(f.rejection, f.detail) for f in failures],
                consumer_group=self._consumer_group,
            )

        error = self._retrying(
            keep,
            retry_log="transient database error keeping unpublished dead letters, retrying "
            "in %.2fs (attempt %d): %s",
        )
        if error is not None:
            raise error  # permanent, or RetriesExhaustedError (its cause the last error)
        self._telemetry.dead_letters_kept(failures)
