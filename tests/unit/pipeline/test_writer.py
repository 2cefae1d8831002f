"""The writers' backoff (capped exponential growth with equal jitter), and the writer
actor's failure handling on a fake database: acknowledgements, bisection, the retry
budget and dead letters the dead-letter topic refuses."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import attrs
import psycopg
import pytest

from kingest.deadletters import DeadLetterPublishError, PublishFailure
from kingest.pipeline import writer as writer_module
from kingest.pipeline.messages import Ack, WriteBatch
from kingest.pipeline.threads import thread_role
from kingest.pipeline.writer import RETRIES_EXHAUSTED, Backoff, WriterActor
from kingest.schema.v1.events_pb2 import MetricLogged
from kingest.store import Rejection, RowBatch, WriteResult
from kingest.telemetry import PipelineStats, catalog
from tests.fakes import FakeRecord
from tests.unit.store.test_rows import NOW, event, record


def test_delays_double_up_to_the_cap_with_equal_jitter() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(3))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for ceiling in ceilings:
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert 0.05 <= backoff.next_delay() <= 0.1


def test_an_outage_of_any_length_keeps_the_delay_at_the_cap() -> None:
    """A writer waits an outage out forever: thousands of attempts must not overflow."""
    backoff = Backoff(0.2, 10.0, random.Random(5))
    for _ in range(5_000):
        delay = backoff.next_delay()
    assert 5.0 <= delay <= 10.0
    assert backoff.attempts == 5_000


# --------------------------------------------------------------------- the writer actor
#
# The writer runs on its caller's thread (``receive`` called directly, never started),
# against a fake pool and a fake ``write_batch`` that stores rows in memory and raises
# for the event ids it is told to refuse: the failure handling is under test, not SQL.


def event_id(offset: int) -> str:
    return f"00000000-0000-4000-8000-{offset:012d}"


def write_batch_of(offsets: range, *, first_offset: int | None = None) -> WriteBatch:
    rows = RowBatch(now=NOW)
    rows.add_records(
        [
            record(
                event(
                    event_id=event_id(offset),
                    metric_logged=MetricLogged(run_id="run-1", key="loss", value=0.5, step=offset),
                ),
                offset=offset,
            )
            for offset in offsets
        ]
    )
    start = offsets[0] if first_offset is None else first_offset
    return WriteBatch(("events", 3), 1, start, len(offsets), rows)


class FakeConnection:
    """What the writer touches of a psycopg connection (the fake write does the rest)."""

    prepare_threshold: int | None = 5
    info = SimpleNamespace(host="db", port="5432", dbname="ml")


class FakePool:
    def __init__(self) -> None:
        self.connections = 0

    @contextmanager
    def connection(self) -> Iterator[FakeConnection]:
        self.connections += 1
        yield FakeConnection()


class FakeDatabase:
    """Stands in for :func:`kingest.store.write_batch`: a transaction either raises (one
    of its rows is refused) or stores all its rows and, when asked, its dead letters."""

    def __init__(self, refuse: dict[str, Exception] | None = None) -> None:
        self.refuse = refuse or {}
        self.stored: list[str] = []
        self.dead_letters: list[Rejection] = []
        self.unpublished: list[tuple[Rejection, str]] = []
        self.transactions = 0
        self.attempts = 0

    def write_batch(
        self,
        conn: Any,
        rows: RowBatch,
        *,
        consumer_group: str | None = None,
        store_dead_letters: bool = True,
        use_copy: bool = True,
    ) -> WriteResult:
        self.attempts += 1
        ids = [
            str(event_id)
            for table in rows.iter_tables()
            for event_id in rows.columns(table)[table.column_names.index("event_id")]
        ]
        for refused, error in self.refuse.items():
            if refused in ids:
                raise error
        self.transactions += 1
        self.stored += ids
        inserted = {table.name: len(rows.columns(table)[0]) for table in rows.iter_tables()}
        if store_dead_letters:
            self.dead_letters += rows.rejections
        return WriteResult(
            inserted=inserted,
            dead_lettered=rows.rejection_count if store_dead_letters else 0,
            duplicates=0,
            events_by_type=dict(rows.counts_by_type),
        )

    def store_unpublished(
        self,
        conn: Any,
        unpublished: Sequence[tuple[Rejection, str]],
        *,
        consumer_group: str | None = None,
    ) -> None:
        self.unpublished += unpublished


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> FakeDatabase:
    fake = FakeDatabase()
    monkeypatch.setattr(writer_module, "write_batch", fake.write_batch)
    monkeypatch.setattr(writer_module, "store_unpublished_dead_letters", fake.store_unpublished)
    return fake


def make_writer(
    acks: list[Ack],
    stats: PipelineStats,
    *,
    retry_budget: int = 5,
    publisher: Any = None,
) -> WriterActor:
    return WriterActor(
        0,
        pool=FakePool(),  # type: ignore[arg-type]
        ack=acks.append,
        stats=stats,
        batch_size=1_000,
        # No wait between attempts: the budget is under test, not the backoff.
        retry_initial_s=0.0,
        retry_max_s=0.0,
        abandon=threading.Event(),
        retry_budget=retry_budget,
        dead_letter_table=publisher is None,
        dead_letter_publisher=publisher,
    )


def test_a_writers_thread_counts_as_a_writers_cpu() -> None:
    writer = make_writer([], PipelineStats())
    assert thread_role(writer.name, loop_thread="MainThread") == "writers"


def test_a_write_that_succeeds_acknowledges_every_batch_of_the_transaction(
    database: FakeDatabase,
) -> None:
    acks: list[Ack] = []
    stats = PipelineStats()
    writer = make_writer(acks, stats)
    batches = [write_batch_of(range(start, start + 3)) for start in (0, 3, 6)]
    # The later batches wait in the writer's queue: it writes them with the first.
    writer.tell(batches[1])
    writer.tell(batches[2])

    writer.receive(batches[0])

    assert acks == [Ack(("events", 3), 1, first) for first in (0, 3, 6)]
    assert database.transactions == 1
    assert database.stored == [event_id(offset) for offset in range(9)]
    assert stats.get("batches_written") == 3
    assert stats.get("messages_written") == 9
    assert stats.get("transactions") == 1
    assert stats.get("rows_inserted") == 9
    assert stats.get("retries") == 0
    assert stats.last_written_at is not None


def test_a_permanent_error_bisects_to_the_offending_row_and_dead_letters_it(
    database: FakeDatabase,
) -> None:
    database.refuse[event_id(5)] = psycopg.errors.StringDataRightTruncation("value too long")
    acks: list[Ack] = []
    stats = PipelineStats()
    writer = make_writer(acks, stats)

    writer.receive(write_batch_of(range(8)))

    assert acks == [Ack(("events", 3), 1, 0)]
    assert sorted(database.stored) == [event_id(o) for o in range(8) if o != 5]
    (dead,) = database.dead_letters
    assert (dead.offset, dead.event_id) == (5, event_id(5))
    assert (dead.error_stage, dead.error_class) == ("write", "StringDataRightTruncation")
    assert dead.sqlstate == "22001"
    assert stats.get("write_rejections") == 1
    assert stats.series(catalog.DEAD_LETTERS) == {("write", "StringDataRightTruncation"): 1}
    assert stats.get("retries") == 0  # a permanent error is not retried


def test_a_row_that_exhausts_the_retry_budget_is_dead_lettered_as_retries_exhausted(
    database: FakeDatabase,
) -> None:
    database.refuse[event_id(2)] = psycopg.errors.RaiseException("rejected by a trigger")
    acks: list[Ack] = []
    stats = PipelineStats()
    writer = make_writer(acks, stats, retry_budget=2)

    writer.receive(write_batch_of(range(4)))

    assert acks == [Ack(("events", 3), 1, 0)]
    assert sorted(database.stored) == [event_id(o) for o in (0, 1, 3)]
    (dead,) = database.dead_letters
    assert dead.offset == 2
    assert (dead.error_stage, dead.error_class) == ("write", RETRIES_EXHAUSTED)
    assert dead.sqlstate == "P0001"
    assert dead.error_message == "rejected by a trigger (still failing after 2 attempts)"
    # Each failing write (4 rows, then [2, 3], then [2]) is retried once before its
    # second failure spends the budget.
    assert stats.series(catalog.RETRIES) == {("write", "P0"): 3}


class RefusingPublisher:
    """A dead-letter topic that refuses every dead letter for good (too large)."""

    budget_s = 30.0

    def __init__(self) -> None:
        self.published: list[list[Rejection]] = []

    def publish(self, rejections: Sequence[Rejection]) -> None:
        self.published.append(list(rejections))
        failures = [
            PublishFailure(r, "MSG_SIZE_TOO_LARGE", "MSG_SIZE_TOO_LARGE: too large", True)
            for r in rejections
        ]
        raise DeadLetterPublishError("dead-letter topic refused", failures, "MSG_SIZE_TOO_LARGE")


def test_a_dead_letter_the_topic_refuses_for_good_is_kept_in_the_table(
    database: FakeDatabase,
) -> None:
    acks: list[Ack] = []
    stats = PipelineStats()
    publisher = RefusingPublisher()
    writer = make_writer(acks, stats, publisher=publisher)
    batch = write_batch_of(range(3))
    batch.rows.add_records([FakeRecord(b"\xff not protobuf", offset=3)])
    batch = attrs.evolve(batch, message_count=4)
    (undecodable,) = batch.rows.rejections

    writer.receive(batch)

    assert len(publisher.published) == 1  # a permanent failure is not retried
    assert database.dead_letters == []  # the topic store: not written with the rows
    assert database.unpublished == [(undecodable, "MSG_SIZE_TOO_LARGE: too large")]
    assert acks == [Ack(("events", 3), 1, 0)]
    assert stats.series(catalog.DEAD_LETTER_PUBLISH_FAILURES) == {("MSG_SIZE_TOO_LARGE",): 1}
    assert stats.get("dead_letters_published") == 0
    assert stats.dead_letter_fallback is not None
    assert stats.dead_letter_fallback[1] == "events:3:3 MSG_SIZE_TOO_LARGE: too large"
