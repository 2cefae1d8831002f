"""The consumer loop and the actors around it: the whole ingest pipeline of one process.

One thread (the caller of :meth:`Pipeline.run`, normally the main thread) owns the
confluent-kafka ``Consumer``: it polls batches, splits them by partition into each
partition's ordered mailbox, pauses partitions whose backlog is over its bound and
resumes them once it has halved, and commits the offsets the committer reports as
contiguously acknowledged. Rebalance callbacks run on this same thread (inside
``consume``), so assignment state needs no lock.

Shutdown and revoke share one procedure, :meth:`Pipeline._release`: stop the partition
actors with drain (everything received is still written), wait until the committer has
seen every batch acknowledged, commit synchronously, then forget the partitions. All of
it runs against one deadline; what does not finish in time is abandoned uncommitted and
will be redelivered (idempotent writes make that harmless). A *lost* assignment commits
nothing: another member may already own the partitions.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from psycopg_pool import ConnectionPool

from actors import ActorSystem, Failure, OneForOneSupervisor, Pool
from actors.supervision import escalate_always
from kingest.config import Settings
from kingest.deadletter import DeadLetterPublisher
from kingest.pipeline.committer import OffsetCommitter
from kingest.pipeline.kafka import client_config, consumer_config
from kingest.pipeline.memory import memory_budget
from kingest.pipeline.messages import Assigned, Released, TopicPartitionKey, WriteBatch
from kingest.pipeline.partition import PartitionActor
from kingest.pipeline.stats import PipelineStats
from kingest.pipeline.writer import SchemaNotReadyError, WriterActor

__all__ = ["Pipeline", "RunOutcome"]

log = logging.getLogger(__name__)

#: How long one poll waits for messages; bounds the latency of pause/resume and commits.
POLL_TIMEOUT_S = 0.1


class RunOutcome(enum.IntEnum):
    """How :meth:`Pipeline.run` ended; the values are the process exit codes."""

    DRAINED = 0  # stopped on request, everything received was written and committed
    FAILED = 1  # an actor failed (e.g. schema missing) or Kafka reported a fatal error
    DRAIN_TIMEOUT = 3  # stopped, but in-flight work was abandoned at the deadline


class Pipeline:
    """Kafka -> partition actors -> writer pool -> PostgreSQL, with contiguous commits."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
    ) -> None:
        self.settings = settings
        self.stats = PipelineStats()
        self._consumer_factory = consumer_factory
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._failure: Failure | None = None
        self._system = ActorSystem("kingest", on_failure=self._on_actor_failure)
        # A pipeline actor that raises has hit a bug or a fatal condition (schema missing).
        # Restarting it would drop the batch it held and stall its partition's commits
        # forever, so every failure escalates and the process stops: starting again from
        # the committed offsets is always safe.
        self._supervisor = OneForOneSupervisor(
            escalate_always,
            on_escalate=self._on_actor_failure,
            traceback_for=_is_unexpected,
        )
        self._generation = 0
        self._partitions: dict[TopicPartitionKey, PartitionActor] = {}
        self._paused: set[TopicPartitionKey] = set()
        self._dispatched: dict[TopicPartitionKey, int] = {}
        self._committed: dict[TopicPartitionKey, int] = {}
        self._last_commit = 0.0
        self._committer: OffsetCommitter | None = None
        self._writers: Pool[WriteBatch] | None = None

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Ask :meth:`run` to drain and return (safe from signal handlers and threads)."""
        self._stop.set()

    def abandon_in_flight(self) -> None:
        """Give up waiting for in-flight writes (a second signal): nothing more is committed."""
        self._abandon.set()
        self._stop.set()

    def _on_actor_failure(self, failure: Failure) -> None:
        if self._failure is None:
            self._failure = failure
            log.error(
                "actor %s failed: %s: %s",
                failure.actor_name,
                type(failure.error).__name__,
                failure.error,
                exc_info=failure.error if _is_unexpected(failure.error) else None,
            )
        self._stop.set()

    # ------------------------------------------------------------------ run

    def run(self) -> RunOutcome:
        """Consume until :meth:`request_stop` (or a failure); drain, commit, return."""
        settings = self.settings
        pipeline = settings.pipeline
        db_pool = _open_pool(settings)
        publisher = _open_dead_letter_publisher(settings)
        committer = self._committer = OffsetCommitter(supervisor=self._supervisor)
        self._system.spawn(committer)
        writers = self._writers = Pool(
            "writers",
            lambda index: WriterActor(
                index,
                pool=db_pool,
                ack=committer.tell,
                stats=self.stats,
                batch_size=pipeline.batch_size,
                retry_initial_s=pipeline.retry_initial_s,
                retry_max_s=pipeline.retry_max_s,
                abandon=self._abandon,
                consumer_group=settings.kafka.group_id,
                dead_letter_table=settings.dead_letters.to_table,
                dead_letter_publisher=publisher,
                supervisor=self._supervisor,
            ),
            pipeline.writers,
            capacity=pipeline.writer_queue_batches,
            sizeof=lambda batch: batch.nbytes,
        )
        self._system.spawn(writers)
        config = consumer_config(settings)
        config["on_commit"] = self._on_commit
        consumer = self._consumer_factory(config)
        outcome = RunOutcome.FAILED
        try:
            consumer.subscribe(
                list(settings.kafka.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self._poll_until_stopped(consumer)
            outcome = self._shutdown(consumer)
        finally:
            self._abandon.set()
            self._system.stop(timeout=5.0)
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as error:
                log.warning("closing the consumer failed: %s", error)
            db_pool.close()
            if publisher is not None:
                publisher.close()
        if self._failure is not None:
            return RunOutcome.FAILED
        return outcome

    def _poll_until_stopped(self, consumer: Consumer) -> None:
        batch_size = self.settings.kafka.poll_batch_size
        while not self._stop.is_set():
            messages = consumer.consume(batch_size, POLL_TIMEOUT_S)
            if messages:
                self._dispatch(messages)
            if self._partitions:
                self._apply_backpressure(consumer)
                self._commit_progress(consumer)

    def _dispatch(self, messages: Sequence[Message]) -> None:
        groups: dict[TopicPartitionKey, list[Message]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_consume_error(error)
                continue
            tp: TopicPartitionKey = (message.topic(), message.partition())  # type: ignore[assignment]
            group = groups.get(tp)
            if group is None:
                groups[tp] = [message]
            else:
                group.append(message)
        consumed = 0
        for tp, group in groups.items():
            actor = self._partitions.get(tp)
            if actor is None:
                # Not ours (any more): never committed by us, so it will be redelivered.
                log.warning("dropping %d messages of unassigned partition %s", len(group), tp)
                continue
            actor.tell(group, force=True)
            self._dispatched[tp] = group[-1].offset() or 0
            consumed += len(group)
        if consumed:
            self.stats.add(messages_consumed=consumed)
            if self.stats.first_consumed_at is None:
                self.stats.first_consumed_at = time.monotonic()

    def _on_consume_error(self, error: KafkaError) -> None:
        self.stats.add(consume_errors=1)
        if error.fatal():
            raise KafkaException(error)
        log.warning("kafka consume error: %s", error)

    # ------------------------------------------------------------------ backpressure

    def _apply_backpressure(self, consumer: Consumer) -> None:
        pipeline = self.settings.pipeline
        max_messages, max_bytes = pipeline.partition_queue_messages, pipeline.partition_queue_bytes
        to_pause: list[TopicPartition] = []
        to_resume: list[TopicPartition] = []
        for tp, actor in self._partitions.items():
            backlog = self._dispatched.get(tp, -1) - actor.received_offset
            queued_bytes = actor.mailbox.nbytes
            if tp in self._paused:
                if backlog <= max_messages // 2 and queued_bytes <= max_bytes // 2:
                    self._paused.discard(tp)
                    to_resume.append(TopicPartition(tp[0], tp[1]))
            elif backlog >= max_messages or queued_bytes >= max_bytes:
                self._paused.add(tp)
                to_pause.append(TopicPartition(tp[0], tp[1]))
        if to_pause:
            consumer.pause(to_pause)
            self.stats.add(pauses=len(to_pause))
            log.debug("paused %s", [(t.topic, t.partition) for t in to_pause])
        if to_resume:
            consumer.resume(to_resume)
            log.debug("resumed %s", [(t.topic, t.partition) for t in to_resume])

    # ------------------------------------------------------------------ commits

    def _commit_progress(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now - self._last_commit < self.settings.kafka.commit_interval_ms / 1000:
            return
        self._last_commit = now
        offsets = self._committable(self._partitions)
        if offsets:
            for tp in offsets:
                self._committed[(tp.topic, tp.partition)] = tp.offset
            consumer.commit(offsets=offsets, asynchronous=True)

    def _committable(self, tps: Iterable[TopicPartitionKey]) -> list[TopicPartition]:
        """Committable offsets of ``tps`` (current generation only) not yet committed."""
        assert self._committer is not None
        wanted = set(tps)
        offsets = []
        for tp, (generation, offset) in self._committer.committable().items():
            actor = self._partitions.get(tp)
            if tp not in wanted or actor is None or actor.generation != generation:
                continue
            if self._committed.get(tp, -1) < offset:
                offsets.append(TopicPartition(tp[0], tp[1], offset))
        return offsets

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Runs on the loop thread inside consume(). A failed asynchronous commit is retried
        # by the next interval: forgetting it makes the offset committable again.
        failed = [p for p in partitions if p.error is not None] if error is None else partitions
        for p in failed:
            key = (p.topic, p.partition)
            if self._committed.get(key) == p.offset:
                del self._committed[key]
        if failed:
            log.warning("offset commit failed for %d partitions: %s", len(failed), error)
        else:
            self.stats.add(commits=1)

    def _commit_now(self, consumer: Consumer, tps: Iterable[TopicPartitionKey]) -> bool:
        offsets = self._committable(tps)
        if not offsets:
            return True
        try:
            results = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            log.warning("final offset commit failed: %s", error)
            return False
        ok = True
        for result in results or []:
            if result.error is not None:
                ok = False
                log.warning("final offset commit failed for %s: %s", result, result.error)
            else:
                self._committed[(result.topic, result.partition)] = result.offset
        self.stats.add(commits=1)
        return ok

    # ------------------------------------------------------------------ rebalances

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._committer is not None
        assert self._writers is not None
        self._generation += 1
        generation = self._generation
        tps = tuple((p.topic, p.partition) for p in partitions)
        self._committer.tell(Assigned(tps, generation))
        pipeline = self.settings.pipeline
        for tp in tps:
            actor = PartitionActor(
                tp,
                generation,
                writers=self._writers,
                committer=self._committer,
                batch_size=pipeline.batch_size,
                batch_bytes=pipeline.batch_bytes,
                batch_linger_s=pipeline.batch_linger_ms / 1000,
                max_bytes=pipeline.partition_queue_bytes,
                supervisor=self._supervisor,
            )
            actor.start()
            self._partitions[tp] = actor
        self.stats.add(rebalances=1)
        log.info("assigned %d partitions (generation %d): %s", len(tps), generation, list(tps))
        budget = memory_budget(self.settings, max(1, len(self._partitions)))
        log.info(
            "memory bound for %d partitions: %.0f MiB (mean message of %d bytes; docs/memory.md)",
            budget.partitions,
            budget.total_mib,
            budget.message_bytes,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        deadline = time.monotonic() + self.settings.pipeline.drain_timeout_s
        complete = self._release(consumer, tps, drain=True, deadline=deadline)
        log.info("revoked %d partitions (drained: %s)", len(tps), complete)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self._release(consumer, tps, drain=False, deadline=time.monotonic())
        log.warning("lost %d partitions; nothing committed for them", len(tps))

    def _release(
        self,
        consumer: Consumer,
        tps: Sequence[TopicPartitionKey],
        *,
        drain: bool,
        deadline: float,
    ) -> bool:
        """Stop the partitions' actors, (drain: wait and commit), then forget them."""
        assert self._committer is not None
        actors = [self._partitions[tp] for tp in tps if tp in self._partitions]
        for actor in actors:
            actor.stop(drain=drain, timeout=0)
        complete = all(actor.join(max(0.0, deadline - time.monotonic())) for actor in actors)
        owned = [actor.tp for actor in actors]
        if drain and owned:
            complete = self._committer.sync(max(0.0, deadline - time.monotonic())) and complete
            complete = self._committer.wait_drained(owned, deadline) and complete
            complete = self._commit_now(consumer, owned) and complete
        by_generation: dict[int, list[TopicPartitionKey]] = {}
        for actor in actors:
            by_generation.setdefault(actor.generation, []).append(actor.tp)
            del self._partitions[actor.tp]
            self._paused.discard(actor.tp)
            self._dispatched.pop(actor.tp, None)
        for generation, released in by_generation.items():
            self._committer.tell(Released(tuple(released), generation))
        return complete

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self, consumer: Consumer) -> RunOutcome:
        deadline = time.monotonic() + self.settings.pipeline.drain_timeout_s
        drain = self._failure is None and not self._abandon.is_set()
        complete = self._release(consumer, list(self._partitions), drain=drain, deadline=deadline)
        if not complete:
            log.warning("drain deadline passed; abandoning in-flight work (it will be redelivered)")
            self._abandon.set()
        assert self._writers is not None
        self._writers.stop(drain=True, timeout=max(0.0, deadline - time.monotonic()))
        snapshot = self.stats.snapshot()
        busy = self.stats.busy_seconds()
        written = snapshot.get("messages_written", 0)
        log.info(
            "stopped: %d messages consumed, %d written, %d dead-lettered; "
            "%.2fs from first message to last write (%.0f messages/s)",
            snapshot.get("messages_consumed", 0),
            written,
            snapshot.get("dead_lettered", 0),
            busy or 0.0,
            written / busy if busy else 0.0,
        )
        if self._failure is not None:
            return RunOutcome.FAILED
        return RunOutcome.DRAINED if complete else RunOutcome.DRAIN_TIMEOUT


def _is_unexpected(error: BaseException) -> bool:
    """False for a condition the service recognises and explains in one line (the schema
    or a grant is missing); true for anything else, a bug that keeps its traceback."""
    return not isinstance(error, SchemaNotReadyError)


def _open_dead_letter_publisher(settings: Settings) -> DeadLetterPublisher | None:
    """The dead-letter topic's producer, when dead letters go to a topic."""
    if not settings.dead_letters.to_topic:
        return None
    return DeadLetterPublisher(
        client_config(settings, "dead-letters"),
        topic_template=settings.dead_letters.topic,
        consumer_group=settings.kafka.group_id,
    )


def _open_pool(settings: Settings) -> ConnectionPool[Any]:
    """The writers' connection pool: one connection per writer, sessions configured."""
    database = settings.database

    def configure(conn: Any) -> None:
        conn.autocommit = True
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('application_name', %s, false)",
            (str(database.statement_timeout_ms), f"kingest:{settings.kafka.group_id}"[:63]),
        )
        conn.autocommit = False

    pool: ConnectionPool[Any] = ConnectionPool(
        database.url,
        min_size=settings.pipeline.writers,
        max_size=settings.pipeline.writers,
        kwargs={"connect_timeout": max(1, round(database.connect_timeout_s))},
        configure=configure,
        timeout=database.connect_timeout_s,
        # The pool reconnects a lost connection on its own schedule, doubling the delay
        # after each failure for up to reconnect_timeout (default 300 s): after a 20 s
        # PostgreSQL outage its next attempt came ~9 s after the server was back, after
        # longer ones minutes later. Giving up after the writers' longest backoff instead
        # makes the waiting writers start a fresh attempt (the pool grows on demand), so
        # reconnecting follows the writers' bounded backoff (invariant 5).
        reconnect_timeout=settings.pipeline.retry_max_s,
        name="kingest-writers",
        open=False,
    )
    pool.open(wait=True, timeout=database.connect_timeout_s)
    return pool
