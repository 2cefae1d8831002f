"""The consumer loop and the actors around it: the whole ingest pipeline of one process.

One thread (the caller of :meth:`Pipeline.run`, normally the main thread) owns the
confluent-kafka ``Consumer``: it polls batches, splits them by partition into each
partition's ordered mailbox, pauses partitions whose backlog is over its bound and
resumes them once it has halved, and commits the offsets the committer reports as
contiguously acknowledged (:class:`~kingest.pipeline.commits.LoopCommits` keeps what was
committed and confirmed). Rebalance callbacks run on this same thread (inside
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
import operator
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from actors import ActorSystem, Failure, OneForOneSupervisor, Pool
from actors.supervision import escalate_always
from kingest.config import Settings
from kingest.kafka import TopicPartitionKey, consumer_config
from kingest.pipeline.commits import LoopCommits, durable_offsets
from kingest.pipeline.committer import OffsetCommitter
from kingest.pipeline.fetching import FetchWatch
from kingest.pipeline.memory import memory_budget, partition_unacked_bounds
from kingest.pipeline.messages import Assigned, Released, WriteBatch
from kingest.pipeline.partition import PartitionActor, records_size
from kingest.pipeline.polling import by_partition, next_messages
from kingest.pipeline.resources import (
    close_consumer,
    close_within,
    open_dead_letter_publisher,
    open_pool,
)
from kingest.pipeline.threads import cpu_seconds_by_role, describe_cpu
from kingest.pipeline.unacked import Unacknowledged, oldest_times, pending_messages
from kingest.pipeline.writer import PreparedStatements, SchemaNotReadyError, WriterActor
from kingest.store import write_plan
from kingest.telemetry import (
    PartitionState,
    PipelineMetrics,
    PipelineState,
    PipelineStats,
    catalog,
)

__all__ = ["CLOSE_AFTER_DEADLINE_S", "Pipeline", "RunOutcome"]

log = logging.getLogger(__name__)

#: While the process holds KINGEST_IN_FLIGHT_BYTES of work not yet durable, the loop
#: takes no messages and waits this long before it looks again.
IN_FLIGHT_WAIT_S = 0.005
#: How long the loop may take no messages because of the in-flight bound before it
#: pauses the partitions instead and polls on (rebalances are served only while it
#: polls). Pausing makes the client drop what it prefetched for a partition, which it
#: fetches again on resume: kept for writes that stall, not for writers that are busy.
IN_FLIGHT_PAUSE_S = 1.0

#: Once the drain deadline has passed, how long closing the consumer may still take
#: (leaving the group is one request). librdkafka's close waits for every offset commit
#: request still unanswered, each up to socket.timeout.ms (60 s by default), and cannot
#: be told not to; past this the run ends without waiting for it
#: (:func:`~kingest.pipeline.resources.close_within`).
CLOSE_AFTER_DEADLINE_S = 2.0


class RunOutcome(enum.IntEnum):
    """How :meth:`Pipeline.run` ended; the values are the process exit codes."""

    DRAINED = 0  # stopped on request, everything received was written and committed
    FAILED = 1  # an actor failed (e.g. schema missing) or Kafka reported a fatal error
    DRAIN_TIMEOUT = 3  # stopped, but in-flight work was abandoned at the deadline


_message_error = operator.methodcaller("error")


class Pipeline:
    """Kafka -> partition actors -> writer pool -> PostgreSQL, with contiguous commits."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
    ) -> None:
        self.settings = settings
        #: The tables and statements of the configured catalog, derived once.
        self.plan = write_plan(settings.catalog)
        self.stats = PipelineStats()
        # Series of known label values start at 0, so that rates and alerts see them.
        self.stats.count(catalog.COMMITS, {("ok",): 0, ("failed",): 0})
        self.stats.count(catalog.REBALANCES, {(kind,): 0 for kind in ("assign", "revoke", "lost")})
        self.metrics = PipelineMetrics(self.stats, self)
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
        self._committer: OffsetCommitter | None = None
        self._writers: Pool[WriteBatch] | None = None
        self._commits = LoopCommits(
            self._partitions,
            stats=self.stats,
            group_id=settings.kafka.group_id,
            interval_s=settings.kafka.commit_interval_ms / 1000,
        )
        # Observed from other threads (metrics, health): written by the loop thread only.
        self._phase = "starting"
        self._heartbeat = time.monotonic()
        self._fatal: str | None = None
        #: Per partition, the polls consumed and not yet known durable (the
        #: unacknowledged age, and the unacknowledged bound of backpressure).
        self._unacked: dict[TopicPartitionKey, Unacknowledged] = {}
        self._unacked_bounds = partition_unacked_bounds(settings)
        #: Bytes of the whole process's unacknowledged work at which the loop stops
        #: taking messages (0: no such bound), and since when it has held off.
        self._in_flight_limit = settings.pipeline.in_flight_bytes
        self._held_since: float | None = None
        #: The topic of every message, when only one is subscribed (grouping reads
        #: partitions only).
        topics = settings.kafka.topics
        self._only_topic = topics[0] if len(topics) == 1 else None
        self._fetching = FetchWatch(
            stall_s=settings.http.max_fetch_stall_s,
            auto_offset_reset=settings.kafka.auto_offset_reset,
        )

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

    # ------------------------------------------------------------------ observation

    def assigned(self) -> list[TopicPartitionKey]:
        """The partitions this process owns now (any thread)."""
        return list(self._partitions.copy())

    def state(self) -> PipelineState:
        """A snapshot for metrics and health checks (any thread; never calls Kafka)."""
        partitions = self._partitions.copy()
        paused = frozenset(self._paused)
        confirmed = self._commits.confirmed()
        unacked = self._unacked.copy()
        since = oldest_times(unacked)
        fetched_at = self._fetching.fetched_at.copy()
        fetch_backlog = self._fetching.backlog
        committer, writers = self._committer, self._writers
        phase = self._phase
        dead: list[str] = []
        if phase == "running":
            actors: list[Any] = [committer, writers, *partitions.values()]
            dead = [a.name for a in actors if a is not None and not a.alive and not a.stopping]
        failure = self._fatal
        if self._failure is not None:
            error = self._failure.error
            failure = f"actor {self._failure.actor_name} failed: {type(error).__name__}: {error}"
        return PipelineState(
            partitions=tuple(
                PartitionState(
                    tp=tp,
                    mailbox_depth=len(actor.mailbox),
                    paused=tp in paused,
                    committed=confirmed.get(tp),
                    unacked_since=since.get(tp),
                    unacked_messages=pending_messages(unacked.get(tp)),
                    fetched_at=fetched_at.get(tp),
                    fetch_backlog=fetch_backlog.get(tp, 0),
                )
                for tp, actor in partitions.items()
            ),
            writer_queue_depth=len(writers.mailbox) if writers is not None else 0,
            batches_in_flight=committer.unacked_batches() if committer is not None else 0,
            joined=self._generation > 0,
            phase=phase,
            loop_idle_s=max(0.0, time.monotonic() - self._heartbeat),
            failure=failure,
            dead_actors=tuple(dead),
            dead_letter_fallback=self.stats.dead_letter_fallback,
            dead_letter_fallbacks=sum(
                self.stats.series(catalog.DEAD_LETTER_PUBLISH_FAILURES).values()
            ),
        )

    # ------------------------------------------------------------------ run

    def run(self) -> RunOutcome:
        """Consume until :meth:`request_stop` (or a failure); drain, commit, return."""
        settings = self.settings
        pipeline = settings.pipeline
        db_pool = open_pool(settings)
        prepared = PreparedStatements(settings.database.prepared_statements)
        publisher = open_dead_letter_publisher(settings)
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
                retry_budget=pipeline.retry_budget,
                abandon=self._abandon,
                consumer_group=settings.kafka.group_id,
                dead_letter_table=settings.dead_letters.to_table,
                use_copy=settings.database.copy,
                prepared_statements=prepared,
                dead_letter_publisher=publisher,
                supervisor=self._supervisor,
                metrics=self.metrics,
            ),
            pipeline.writers,
            capacity=pipeline.writer_queue_batches,
            sizeof=lambda batch: batch.nbytes,
        )
        self._system.spawn(writers)
        config = consumer_config(settings)
        config["on_commit"] = self._commits.on_commit
        consumer = self._consumer_factory(config)
        outcome = RunOutcome.FAILED
        try:
            consumer.subscribe(
                list(settings.kafka.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self._heartbeat = time.monotonic()
            self._phase = "running"
            self._poll_until_stopped(consumer)
            outcome = self._shutdown(consumer)
        finally:
            self._phase = "stopped"
            self._commits.close()
            self._abandon.set()
            self._system.stop(timeout=5.0)
            if outcome is RunOutcome.DRAIN_TIMEOUT:
                close_within(consumer, CLOSE_AFTER_DEADLINE_S)
            else:
                close_consumer(consumer)
            db_pool.close()
            if publisher is not None:
                publisher.close()
        if self._failure is not None:
            return RunOutcome.FAILED
        return outcome

    def _poll_until_stopped(self, consumer: Consumer) -> None:
        batch_size = self.settings.kafka.poll_batch_size
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            if self._holding_off():
                self._stop.wait(IN_FLIGHT_WAIT_S)
            else:
                messages = next_messages(consumer, batch_size)
                if messages:
                    self._dispatch(messages)
            if self._partitions:
                self._apply_backpressure(consumer)
                self._commit_progress(consumer)
                self._fetching.check(consumer, self._partitions, self._paused)

    def _dispatch(self, messages: list[Message]) -> None:
        if any(map(_message_error, messages)):  # rare: librdkafka reports errors inline
            for message in messages:
                error = message.error()
                if error is not None:
                    self._on_consume_error(error)
            messages = [message for message in messages if message.error() is None]
        groups = by_partition(messages, self._only_topic)
        consumed: dict[tuple[str, ...], int] = {}
        group_id = self.settings.kafka.group_id
        now = time.monotonic()
        for tp, group in groups.items():
            actor = self._partitions.get(tp)
            if actor is None:
                # Not ours (any more): never committed by us, so it will be redelivered.
                log.warning(
                    "dropping %d messages of unassigned partition %s",
                    len(group),
                    tp,
                    extra={"topic": tp[0], "partition": tp[1], "offset": group[0].offset()},
                )
                continue
            size = records_size(group)
            actor.tell(group, force=True, size=size)
            consumed[(tp[0], str(tp[1]), group_id)] = len(group)
            unacked = self._unacked.get(tp)
            if unacked is None:
                unacked = self._unacked[tp] = Unacknowledged()
            unacked.add(group[-1].offset() or 0, now, len(group), size)
            self._fetching.fetched_at[tp] = now
        if consumed:
            self.stats.count(catalog.MESSAGES_CONSUMED, consumed)
            if self.stats.first_consumed_at is None:
                self.stats.first_consumed_at = time.monotonic()

    def _on_consume_error(self, error: KafkaError) -> None:
        self.stats.add(consume_errors=1)
        if error.fatal():
            self._fatal = f"fatal Kafka error: {error.str()}"
            raise KafkaException(error)
        log.warning("kafka consume error: %s", error)

    # ------------------------------------------------------------------ backpressure

    def _in_flight_bytes(self) -> int:
        """Bytes of every partition's work consumed and not known durable (as
        :func:`records_size` counts them); what became durable is forgotten first
        whenever the total is over half the in-flight bound."""
        total = sum(pending.nbytes for pending in self._unacked.values())
        if 2 * total > self._in_flight_limit:
            self._forget_acknowledged()
            total = sum(pending.nbytes for pending in self._unacked.values())
        return total

    def _holding_off(self) -> bool:
        """Whether the loop takes no messages now: the process holds its in-flight bound
        (``KINGEST_IN_FLIGHT_BYTES``), for less than :data:`IN_FLIGHT_PAUSE_S` so far.

        Not polling lets the client keep what it prefetched (its queue is bounded on its
        own) where pausing would make it drop and fetch it again. Past the grace
        :meth:`_apply_backpressure` pauses the partitions and the loop polls on.
        """
        if not self._in_flight_limit or self._in_flight_bytes() < self._in_flight_limit:
            self._held_since = None
            return False
        if self._held_since is None:
            self._held_since = time.monotonic()
        return not self._held_too_long()

    def _held_too_long(self) -> bool:
        """Whether the loop has held off for the whole grace, :data:`IN_FLIGHT_PAUSE_S`."""
        return (
            self._held_since is not None
            and time.monotonic() - self._held_since >= IN_FLIGHT_PAUSE_S
        )

    def _apply_backpressure(self, consumer: Consumer) -> None:
        """Pause a partition whose mailbox, or whose work consumed and not yet durable
        (mailbox, open batch, writers' queue, writers, retries), is over its bound;
        resume it once every one of them is at half its bound or below."""
        pipeline = self.settings.pipeline
        max_messages, max_bytes = pipeline.partition_queue_messages, pipeline.partition_queue_bytes
        max_unacked, max_unacked_bytes = self._unacked_bounds
        unacked = self._unacked
        if any(
            2 * pending.messages > max_unacked or 2 * pending.nbytes > max_unacked_bytes
            for pending in unacked.values()
        ):
            # Near a bound: what is durable now decides, not the last commit interval's view.
            self._forget_acknowledged()
        to_pause: list[TopicPartition] = []
        to_resume: list[TopicPartition] = []
        # The process-wide bound: every partition is paused once the loop has held off
        # for the grace period, and none resumes before the total is down to half.
        held_too_long = self._held_too_long()
        may_resume = (
            not self._paused
            or not self._in_flight_limit
            or 2 * self._in_flight_bytes() <= self._in_flight_limit
        )
        for tp, actor in self._partitions.items():
            queued_bytes = actor.mailbox.nbytes
            pending = unacked.get(tp)
            if pending is None:  # nothing dispatched to this partition yet
                backlog = -1 - actor.received_offset
                unacked_messages = unacked_bytes = 0
            else:
                backlog = pending.dispatched - actor.received_offset
                unacked_messages, unacked_bytes = pending.messages, pending.nbytes
            if tp in self._paused:
                if (
                    may_resume
                    and backlog <= max_messages // 2
                    and queued_bytes <= max_bytes // 2
                    and unacked_messages <= max_unacked // 2
                    and unacked_bytes <= max_unacked_bytes // 2
                ):
                    self._paused.discard(tp)
                    to_resume.append(TopicPartition(tp[0], tp[1]))
            elif (
                held_too_long
                or backlog >= max_messages
                or queued_bytes >= max_bytes
                or unacked_messages >= max_unacked
                or unacked_bytes >= max_unacked_bytes
            ):
                self._paused.add(tp)
                to_pause.append(TopicPartition(tp[0], tp[1]))
        if to_pause:
            consumer.pause(to_pause)
            self.stats.add(pauses=len(to_pause))
            log.debug("paused %s", [(t.topic, t.partition) for t in to_pause])
        if to_resume:
            consumer.resume(to_resume)
            now = time.monotonic()
            for t in to_resume:
                self._fetching.fetched_at[(t.topic, t.partition)] = now
            log.debug("resumed %s", [(t.topic, t.partition) for t in to_resume])

    # ------------------------------------------------------------------ commits

    def _commit_progress(self, consumer: Consumer) -> None:
        """Once per commit interval: commit what became durable, and forget the
        consumed-at times of those messages (the unacknowledged age)."""
        assert self._committer is not None
        if self._commits.progress(consumer, self._committer, time.monotonic()):
            self._forget_acknowledged()

    def _forget_acknowledged(self) -> None:
        """Drop the consumed-at times of messages now durable (the unacknowledged age)."""
        assert self._committer is not None
        for tp, offset in durable_offsets(self._committer, self._partitions).items():
            unacked = self._unacked.get(tp)
            if unacked is not None:
                unacked.forget_below(offset)

    # ------------------------------------------------------------------ rebalances

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._committer is not None
        assert self._writers is not None
        self._generation += 1
        generation = self._generation
        tps = tuple((p.topic, p.partition) for p in partitions)
        self._committer.tell(Assigned(tps, generation))
        now = time.monotonic()
        for tp in tps:
            self._fetching.fetched_at[tp] = now
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
                consumer_group=self.settings.kafka.group_id,
                trace_message_spans=pipeline.trace_message_spans,
                stats=self.stats,
                plan=self.plan,
            )
            actor.start()
            self._partitions[tp] = actor
        self._resume_assigned(consumer, partitions)
        self.stats.count(catalog.REBALANCES, {("assign",): 1})
        log.info("assigned %d partitions (generation %d): %s", len(tps), generation, list(tps))
        budget = memory_budget(self.settings, max(1, len(self._partitions)))
        log.info(
            "memory bound for %d partitions: %.0f MiB (mean message of %d bytes; docs/memory.md)",
            budget.partitions,
            budget.total_mib,
            budget.message_bytes,
        )

    def _resume_assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Clear the consumer's pause flag of newly assigned partitions.

        librdkafka keeps a partition's pause flag across a rebalance (eager and
        incremental alike): a partition paused by backpressure, revoked and assigned
        back to this consumer would never be fetched again, while kingest, which forgot
        the partition on release, would never resume it. Resuming before the assignment
        is applied (the client applies it when this callback returns) clears the flag of
        a partition the consumer still knows and does nothing to one it does not.
        """
        # A newly assigned partition is never in kingest's pause record (released
        # partitions leave it), so every one of them is resumed.
        if partitions:
            consumer.resume(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.stats.count(catalog.REBALANCES, {("revoke",): 1})
        deadline = time.monotonic() + self.settings.pipeline.drain_timeout_s
        complete = self._release(consumer, tps, drain=True, deadline=deadline)
        log.info("revoked %d partitions (drained: %s)", len(tps), complete)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.stats.count(catalog.REBALANCES, {("lost",): 1})
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
            complete = self._commits.final(consumer, self._committer, owned, deadline) and complete
        by_generation: dict[int, list[TopicPartitionKey]] = {}
        for actor in actors:
            by_generation.setdefault(actor.generation, []).append(actor.tp)
            del self._partitions[actor.tp]
            self._paused.discard(actor.tp)
            self._unacked.pop(actor.tp, None)
            self._fetching.release(actor.tp)
        self._commits.release(owned)
        for generation, released in by_generation.items():
            self._committer.tell(Released(tuple(released), generation))
        return complete

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self, consumer: Consumer) -> RunOutcome:
        self._phase = "stopping"
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
            snapshot.get("dead_letters", 0),
            busy or 0.0,
            written / busy if busy else 0.0,
        )
        cpu = cpu_seconds_by_role(loop_thread=threading.current_thread().name)
        log.info("CPU seconds by thread: %s", describe_cpu(cpu), extra={"cpu_seconds": cpu})
        if self._failure is not None:
            return RunOutcome.FAILED
        return RunOutcome.DRAINED if complete else RunOutcome.DRAIN_TIMEOUT


def _is_unexpected(error: BaseException) -> bool:
    """False for a condition the service recognises and explains in one line (the schema
    or a grant is missing); true for anything else, a bug that keeps its traceback."""
    return not isinstance(error, SchemaNotReadyError)
