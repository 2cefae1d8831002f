"""Replaying dead letters: bringing them back once what rejected them is fixed.

``kingest dlq replay`` takes the dead letters a :class:`ReplayPlan` selects from the
table or from dead-letter topics, and replays them to one of two destinations:

* ``source``: produce the original key, value and headers back to the source topic and
  partition, plus a ``kingest.replay.of: topic/partition/offset`` header naming the
  original message and a ``kingest.replay.digest`` header binding those coordinates to
  the key and value, for the running pipeline to store. The copy lands at a new offset;
  :class:`kingest.store.rows.RowBatch` gives an event without ``event_id`` the key
  derived from the header's ORIGINAL coordinates when the digest matches, so any number
  of replays map to the one row the original would have been.
* ``pipeline``: decode, validate, map and :func:`~kingest.store.write.write_batch`
  directly, in batches, with the dead letter's own (original) coordinates, bisecting a
  batch PostgreSQL rejects as the writers do. Facts are written ``ON CONFLICT DO
  NOTHING``, so replaying twice stores once.

Every replay is recorded on the dead letter's row (``sql/0004_dead_letter_replays.sql``:
``replayed_at``, ``replay_count``, ``last_replay_outcome``). A dead letter whose last
replay succeeded is skipped unless ``again``; one that failed again keeps its row, with
``attempts + 1`` and the new error, and stays pending. Dead letters read from the topic
are first added to the table when they are not in it yet (a no-op for those that are),
so that the table is the one ledger of what was replayed.

Writing the facts and recording the outcome are two transactions: a crash between them
leaves the dead letter pending and a later replay finds its rows already stored (counted
as duplicates), so nothing is stored twice.

A replay goes at most ``rate`` dead letters per second (:class:`RateLimiter`) and in
pages of ``batch_size``; a dry run changes nothing and only tells what would be
replayed. :class:`ReplaySummary` says what happened.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs
import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from psycopg import sql

from kingest.deadletters.inspect import ReplayRecord
from kingest.deadletters.publisher import (
    NotADeadLetterError,
    confirming_producer,
    decode_message,
)
from kingest.deadletters.stored import (
    DeadLetterFilter,
    DlqError,
    DlqInputError,
    StoredDeadLetter,
    count_dead_letters,
    pending_pages,
    with_table_state,
)
from kingest.store import (
    REPLAY_DIGEST_HEADER,
    REPLAY_OF_HEADER,
    ErrorKind,
    Rejection,
    RowBatch,
    WritePlan,
    classify_db_error,
    first_line,
    is_schema_error,
    message_headers,
    replay_digest,
    sqlstate_of,
    storable_text,
    verified_replay_of,
    write_batch,
)

__all__ = [
    "RateLimiter",
    "ReplayPlan",
    "ReplaySummary",
    "count_to_replay",
    "replay",
    "replay_headers",
]

SOURCES: Final = ("table", "topic")
DESTINATIONS: Final = ("source", "pipeline")


def replay_headers(rejection: Rejection) -> list[tuple[str, bytes | None]]:
    """The headers of a replayed message: the original ones plus ``kingest.replay.of``
    naming the dead letter's coordinates and ``kingest.replay.digest`` binding them to
    its key and value.

    A dead letter of a message that was itself a replay already names the original
    message: when its replay headers check out (as the pipeline judged them,
    :func:`kingest.store.event_ids.verified_replay_of`) they are kept as they are, so every
    generation maps to the first one. Replay headers that do not check out (forwarded
    from another message, a digest alone, malformed) are dropped: the pipeline keyed
    that message by its own coordinates, so its replay names those.
    """
    r = rejection
    if verified_replay_of(r.headers, r.key, r.value) is not None:
        return list(r.headers)
    replay = (REPLAY_OF_HEADER, REPLAY_DIGEST_HEADER)
    kept = [(key, value) for key, value in r.headers if key not in replay]
    original = (r.topic, r.partition, r.offset)
    marker = f"{r.topic}/{r.partition}/{r.offset}".encode()
    digest = replay_digest(original, r.key, r.value).encode()
    return [*kept, (REPLAY_OF_HEADER, marker), (REPLAY_DIGEST_HEADER, digest)]


class RateLimiter:
    """At most ``rate`` items per second on an absolute schedule (no drift): item ``i``
    waits until ``start + i / rate``. ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and not rate > 0:
            raise DlqInputError(f"--rate must be positive, not {rate}")
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._count = 0

    def wait(self) -> None:
        """Block until the next item may go."""
        if not self._interval:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + self._count * self._interval
        while now < due:
            self._sleep(due - now)
            now = self._clock()
        self._count += 1


@attrs.frozen
class ReplayPlan:
    """What ``kingest dlq replay`` does: from where, to where, which dead letters, how fast."""

    source: str = "table"
    destination: str = "source"
    selection: DeadLetterFilter = attrs.Factory(DeadLetterFilter)
    again: bool = False
    dry_run: bool = False
    rate: float | None = None
    batch_size: int = 500
    dead_letter_topics: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.source not in SOURCES:
            raise DlqInputError(f"--from must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.destination not in DESTINATIONS:
            raise DlqInputError(
                f"--to must be one of {', '.join(DESTINATIONS)}, not {self.destination!r}"
            )
        if self.source == "topic" and not self.dead_letter_topics:
            raise DlqInputError("--from topic needs at least one dead-letter topic")
        if self.batch_size < 1:
            raise DlqInputError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.rate is not None and not self.rate > 0:
            raise DlqInputError(f"--rate must be positive, not {self.rate}")


@attrs.define
class ReplaySummary:
    """What a replay did. ``replayed``: dead letters handed to the destination (or, in a
    dry run, that would be); ``stored``/``duplicates``/``still_failing``: outcomes of a
    pipeline replay; ``produced``/``failed_deliveries``: of a replay to the source topic;
    ``skipped``: already replayed successfully (replay them with ``again``);
    ``not_dead_letters``/``repeated``: topic messages without kingest's headers, and
    copies of a dead letter already read (the topic is at-least-once)."""

    replayed: int = 0
    stored: int = 0
    duplicates: int = 0
    still_failing: int = 0
    produced: int = 0
    failed_deliveries: int = 0
    skipped: int = 0
    not_dead_letters: int = 0
    repeated: int = 0
    errors: list[str] = attrs.Factory(list)


# --- marking the table's rows -----------------------------------------------------------

_MARK_REPLAYED: Final = sql.SQL(
    "UPDATE kingest.dead_letters SET replayed_at = now(), replay_count = replay_count + 1, "
    "last_replay_outcome = %s WHERE id = ANY(%s)"
)
_MARK_FAILED: Final = sql.SQL(
    "UPDATE kingest.dead_letters SET replayed_at = now(), replay_count = replay_count + 1, "
    "last_replay_outcome = 'failed', attempts = attempts + 1, error_stage = %s, "
    "error_class = %s, error_message = %s, sqlstate = %s, "
    "event_id = coalesce(%s, event_id), event_type = coalesce(%s, event_type) WHERE id = %s"
)


def _mark(conn: psycopg.Connection[Any], ids: Iterable[int | None], outcome: str) -> None:
    known = [id_ for id_ in ids if id_ is not None]
    if known:
        conn.execute(_MARK_REPLAYED, (outcome, known))


def _mark_failed(
    conn: psycopg.Connection[Any], failures: Sequence[tuple[int | None, Rejection]]
) -> None:
    params = [
        (
            r.error_stage,
            storable_text(r.error_class),
            storable_text(r.error_message),
            r.sqlstate,
            storable_text(r.event_id),
            storable_text(r.event_type),
            id_,
        )
        for id_, r in failures
        if id_ is not None
    ]
    if params:
        with conn.cursor() as cursor:
            cursor.executemany(_MARK_FAILED, params)


# --- reading a dead-letter topic -------------------------------------------------------


def _read_topics(
    config: Mapping[str, Any],
    topics: Sequence[str],
    summary: ReplaySummary,
    *,
    stall_timeout_s: float = 30.0,
) -> Iterator[StoredDeadLetter]:
    """Every dead letter on ``topics`` from the beginning up to the end as of the start,
    once per source coordinates; manual assignment, no group, nothing committed.

    The end is each partition's high watermark when reading starts. (Tansu 0.6 reports
    it too low after produce requests carrying several messages: there, reading stops
    early.)
    """
    consumer = Consumer(
        {
            **config,
            "group.id": f"kingest-dlq-replay-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        ends = _assign_from_beginning(consumer, topics)
        seen: set[tuple[str, int, int]] = set()
        last_progress = time.monotonic()
        while ends:
            messages = consumer.consume(500, timeout=0.5)
            if messages:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_timeout_s:
                raise DlqError(
                    f"no message from the dead-letter topic for {stall_timeout_s:.0f} s "
                    f"before its end ({len(ends)} partitions not read to the end)"
                )
            for message in messages:
                dead_letter = _dead_letter_of(message, ends, summary)
                if dead_letter is None:
                    continue
                r = dead_letter.rejection
                coordinates = (r.topic, r.partition, r.offset)
                if coordinates in seen:
                    summary.repeated += 1
                    continue
                seen.add(coordinates)
                yield dead_letter
            _forget_finished(consumer, ends)
    finally:
        consumer.close()


def _assign_from_beginning(consumer: Consumer, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """Assign every non-empty partition at its low watermark; return what is left to
    read per partition (high watermark as of now, counted down as messages arrive)."""
    ends: dict[tuple[str, int], int] = {}
    assignment = []
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise DlqInputError(f"dead-letter topic {topic!r} does not exist")
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )
            if high > low:
                ends[(topic, partition)] = high
                assignment.append(TopicPartition(topic, partition, low))
    consumer.assign(assignment)
    return ends


def _forget_finished(consumer: Consumer, ends: dict[tuple[str, int], int]) -> None:
    """Drop the partitions whose position reached their end (offset gaps included)."""
    positions = consumer.position([TopicPartition(t, p) for t, p in ends])
    for position in positions:
        if position.offset >= ends[(position.topic, position.partition)]:
            del ends[(position.topic, position.partition)]


def _dead_letter_of(
    message: Message, ends: dict[tuple[str, int], int], summary: ReplaySummary
) -> StoredDeadLetter | None:
    """The dead letter in ``message`` (None when past the end or not a dead letter)."""
    error = message.error()
    if error is not None:
        if error.code() == KafkaError._PARTITION_EOF:
            return None
        raise KafkaException(error)
    end = ends.get((message.topic() or "", message.partition() or 0))
    if end is None or (message.offset() or 0) >= end:
        return None
    try:
        return StoredDeadLetter.from_topic(
            decode_message(message.key(), message.value(), message_headers(message))
        )
    except NotADeadLetterError:
        summary.not_dead_letters += 1
        return None


def _topic_pages(
    conn: psycopg.Connection[Any],
    plan: ReplayPlan,
    kafka_config: Mapping[str, Any],
    summary: ReplaySummary,
) -> Iterator[list[StoredDeadLetter]]:
    """Pending dead letters from the dead-letter topics, page by page, as the table
    knows them (recorded there first unless this is a dry run)."""
    remaining = plan.selection.limit
    page: list[StoredDeadLetter] = []

    def settle(chunk: list[StoredDeadLetter]) -> list[StoredDeadLetter]:
        nonlocal remaining
        known = with_table_state(conn, chunk, record=not plan.dry_run)
        pending = [d for d in known if plan.again or d.pending]
        summary.skipped += len(known) - len(pending)
        if remaining is not None:
            pending = pending[:remaining]
            remaining -= len(pending)
        return pending

    for dead_letter in _read_topics(kafka_config, plan.dead_letter_topics, summary):
        if not plan.selection.matches(dead_letter):
            continue
        page.append(dead_letter)
        if len(page) >= plan.batch_size:
            settled = settle(page)
            page = []
            if settled:
                yield settled
            if remaining == 0:
                return
    if page:
        settled = settle(page)
        if settled:
            yield settled


# --- destinations ----------------------------------------------------------------------


class _PipelineDestination:
    """Decode, validate, map and write each page in one transaction, like a writer."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        consumer_group: str | None,
        summary: ReplaySummary,
        plan: WritePlan | None,
    ) -> None:
        self._conn = conn
        self._group = consumer_group
        self._summary = summary
        self._plan = plan

    def replay(self, page: Sequence[StoredDeadLetter], limiter: RateLimiter) -> None:
        batch = RowBatch(plan=self._plan)
        for dead_letter in page:
            limiter.wait()
            batch.add_records([ReplayRecord(dead_letter.rejection)])
        failures = [*batch.rejections, *self._write_isolating(batch)]
        ids = {d.coordinates: d.id for d in page}
        failed = {f"{r.topic}:{r.partition}:{r.offset}": r for r in failures}
        with self._conn.transaction():
            _mark(self._conn, [d.id for d in page if d.coordinates not in failed], "stored")
            _mark_failed(self._conn, [(ids.get(key), r) for key, r in failed.items()])
        self._summary.replayed += len(page)
        self._summary.still_failing += len(failed)

    def _write_isolating(self, batch: RowBatch) -> list[Rejection]:
        """Write the rows; bisect on a permanent error down to the rows PostgreSQL
        rejects, and return those as write-stage rejections."""
        if not batch.event_count:
            return []
        try:
            result = write_batch(
                self._conn, batch, consumer_group=self._group, store_dead_letters=False
            )
        except Exception as error:
            if is_schema_error(error) or classify_db_error(error) is not ErrorKind.PERMANENT:
                raise
            if batch.event_count == 1:
                rejected = batch.as_rejected(
                    error_class=type(error).__name__,
                    error_message=first_line(error),
                    sqlstate=sqlstate_of(error),
                )
                return [r for r in rejected.rejections if r.error_stage == "write"]
            first, second = batch.halves()
            return [*self._write_isolating(first), *self._write_isolating(second)]
        self._summary.stored += sum(result.inserted.values())
        self._summary.duplicates += result.duplicates
        return []

    def close(self) -> None:
        """Nothing to release: the connection belongs to the caller."""


class _SourceDestination:
    """Produce each dead letter back to its source topic and partition; mark the ones
    the broker confirmed."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        kafka_config: Mapping[str, Any],
        summary: ReplaySummary,
        *,
        delivery_timeout_s: float = 60.0,
    ) -> None:
        self._conn = conn
        self._summary = summary
        self._timeout_s = delivery_timeout_s
        self._producer = confirming_producer(kafka_config, delivery_timeout_s)

    def replay(self, page: Sequence[StoredDeadLetter], limiter: RateLimiter) -> None:
        confirmed: list[int | None] = []
        failed: list[str] = []

        def on_delivery(dead_letter: StoredDeadLetter) -> Callable[[Any, Message], None]:
            def callback(error: KafkaError | None, _message: Message) -> None:
                if error is None:
                    confirmed.append(dead_letter.id)
                else:
                    failed.append(f"{dead_letter.coordinates}: {error.str()}")

            return callback

        for dead_letter in page:
            limiter.wait()
            self._produce(dead_letter, on_delivery(dead_letter))
        remaining = self._producer.flush(self._timeout_s + 5)
        if remaining:
            failed.append(f"{remaining} messages without a delivery report in time")
        with self._conn.transaction():
            _mark(self._conn, confirmed, "produced")
        self._summary.replayed += len(page)
        self._summary.produced += len(confirmed)
        self._summary.failed_deliveries += len(page) - len(confirmed)
        self._summary.errors.extend(failed[: max(0, 10 - len(self._summary.errors))])

    def _produce(
        self, dead_letter: StoredDeadLetter, callback: Callable[[Any, Message], None]
    ) -> None:
        r = dead_letter.rejection
        options: dict[str, Any] = {
            "key": r.key,
            "value": r.value,
            "headers": replay_headers(r),
            "on_delivery": callback,
        }
        if r.partition >= 0:
            options["partition"] = r.partition  # keeps the key's order on its partition
        while True:
            try:
                self._producer.produce(r.topic, **options)
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve delivery reports
                continue
            self._producer.poll(0)
            return

    def close(self) -> None:
        self._producer.flush(self._timeout_s)


def replay(
    plan: ReplayPlan,
    *,
    database_url: str,
    kafka_config: Mapping[str, Any],
    consumer_group: str | None = None,
    progress: Callable[[int], None] | None = None,
    announce: Callable[[StoredDeadLetter], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    write_plan: WritePlan | None = None,
) -> ReplaySummary:
    """Replay the dead letters ``plan`` selects; return what happened.

    ``progress(n)`` is called after each page with the number of dead letters replayed;
    ``announce(dead_letter)`` for each one a dry run would replay (a dry run changes
    nothing: no message, no row, no bookkeeping). ``kafka_config`` holds the client
    settings (bootstrap servers, security) for producing to the source topics and
    reading dead-letter topics; ``consumer_group`` is recorded on write-stage failures.
    ``write_plan`` is the catalog's (the built-in catalog's by default) for a replay to
    the pipeline.
    """
    summary = ReplaySummary()
    limiter = RateLimiter(plan.rate, clock=clock, sleep=sleep)
    with psycopg.connect(database_url, autocommit=True) as conn:
        if plan.source == "table":
            pages = pending_pages(conn, plan.selection, again=plan.again, page_size=plan.batch_size)
            if not plan.again:
                summary.skipped = count_dead_letters(conn, plan.selection, pending=False)
        else:
            pages = _topic_pages(conn, plan, kafka_config, summary)
        destination: _PipelineDestination | _SourceDestination | None = None
        try:
            for page in pages:
                if plan.dry_run:
                    for dead_letter in page:
                        if announce is not None:
                            announce(dead_letter)
                    summary.replayed += len(page)
                else:
                    if destination is None:  # opened once there is something to replay
                        destination = (
                            _PipelineDestination(conn, consumer_group, summary, write_plan)
                            if plan.destination == "pipeline"
                            else _SourceDestination(conn, kafka_config, summary)
                        )
                    destination.replay(page, limiter)
                if progress is not None:
                    progress(len(page))
        finally:
            if destination is not None:
                destination.close()
    return summary


def count_to_replay(database_url: str, plan: ReplayPlan) -> int | None:
    """How many dead letters a table replay will take (None for a topic: unknown)."""
    if plan.source != "table":
        return None
    with psycopg.connect(database_url, autocommit=True) as conn:
        count = count_dead_letters(conn, plan.selection, pending=None if plan.again else True)
    return count if plan.selection.limit is None else min(count, plan.selection.limit)
