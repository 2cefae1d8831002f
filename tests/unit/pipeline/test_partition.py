"""The partition actor flushes its batch by message count, by estimated bytes, and on
linger; every batch is registered with the committer before the writers see it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from actors import Actor, ActorSystem, Pool
from kingest.dev.synth import SyntheticStream
from kingest.pipeline.committer import OffsetCommitter
from kingest.pipeline.messages import WriteBatch
from kingest.pipeline.partition import PartitionActor
from kingest.pipeline.threads import thread_role
from kingest.telemetry import PipelineStats, catalog
from tests.fakes import FakeRecord
from tests.unit.store.test_rows_metadata import UndecodableHeadersRecord


class Collector(Actor[WriteBatch]):
    def __init__(self, index: int, batches: list[WriteBatch], seen: threading.Event) -> None:
        super().__init__(f"collector-{index}")
        self._batches = batches
        self._seen = seen

    def receive(self, message: WriteBatch) -> Any:
        self._batches.append(message)
        self._seen.set()


#: A partition actor, the batches its writers collected, and set once one is.
Collected = tuple[PartitionActor, list[WriteBatch], threading.Event]


@contextmanager
def partition_actor(
    **limits: Any,
) -> Iterator[tuple[PartitionActor, list[WriteBatch], threading.Event]]:
    """A partition actor (not started) whose writers collect the batches it hands over;
    the writers are drained on the way out."""
    batches: list[WriteBatch] = []
    seen = threading.Event()
    with ActorSystem("partition-test") as system:
        committer = system.spawn(OffsetCommitter())
        writers: Pool[WriteBatch] = system.spawn(
            Pool("writers", lambda i: Collector(i, batches, seen), 1, capacity=100)
        )
        actor = PartitionActor(
            ("events", 0),
            1,
            writers=writers,
            committer=committer,
            max_bytes=1 << 30,
            **limits,
        )
        yield actor, batches, seen
        writers.stop(drain=True, timeout=10)


def run_partition(values: list[bytes], **limits: Any) -> list[WriteBatch]:
    with partition_actor(**limits) as (actor, batches, _):
        actor.start()
        records = [FakeRecord(v, offset=i, partition=0) for i, v in enumerate(values)]
        for start in range(0, len(records), 10):
            actor.tell(records[start : start + 10])
        actor.stop(drain=True, timeout=10)
        assert actor.join(10)
    return batches


def event_values(count: int) -> list[bytes]:
    return [r.value for r in SyntheticStream(seed=2).take(count)]


def test_a_partition_actors_thread_counts_as_a_partitions_cpu() -> None:
    with partition_actor(batch_size=10, batch_bytes=1 << 20, batch_linger_s=60) as (actor, *_):
        assert thread_role(actor.name, loop_thread="MainThread") == "partitions"


def test_batches_close_at_the_message_count() -> None:
    batches = run_partition(
        event_values(100), batch_size=40, batch_bytes=1 << 30, batch_linger_s=60
    )
    assert [b.message_count for b in batches] == [40, 40, 20]
    assert [b.first_offset for b in batches] == [0, 40, 80]


def test_batches_close_at_the_byte_bound_before_the_count() -> None:
    values = event_values(100)
    batches = run_partition(values, batch_size=1000, batch_bytes=65_536, batch_linger_s=60)
    assert len(batches) > 1
    assert sum(b.message_count for b in batches) == 100
    # A batch closes on the first poll's worth (10 messages) that takes it past the bound.
    for batch in batches[:-1]:
        assert batch.rows.nbytes >= 65_536
        assert batch.message_count <= 65_536 // 700 + 10


def test_messages_whose_headers_cannot_be_read_are_counted_once_per_poll() -> None:
    stats = PipelineStats()
    actor = PartitionActor(
        ("events", 0),
        1,
        writers=None,  # type: ignore[arg-type]  # nothing is flushed: the batch stays open
        committer=None,  # type: ignore[arg-type]
        batch_size=1000,
        batch_bytes=1 << 30,
        batch_linger_s=60,
        max_bytes=1 << 30,
        stats=stats,
    )
    values = event_values(5)
    records: list[FakeRecord] = [
        UndecodableHeadersRecord(v, offset=i, partition=0)
        if i in {1, 3}
        else FakeRecord(v, offset=i, partition=0)
        for i, v in enumerate(values)
    ]
    actor.receive(records)
    actor.receive(records)  # found once: a later read sees the replaced headers
    assert stats.series(catalog.UNREADABLE_HEADERS) == {("events", "0"): 2}
    assert actor.received_offset == 4


def test_the_linger_counts_from_when_the_batch_opened() -> None:
    # A stream whose polls keep coming (never idle for a linger) is still flushed once
    # its batch is a linger old. The actor is not started: receive() and the timeout hook
    # are called here, as its thread calls them.
    records = [FakeRecord(v, offset=i, partition=0) for i, v in enumerate(event_values(20))]
    with partition_actor(batch_size=1000, batch_bytes=1 << 30, batch_linger_s=60) as (
        actor,
        batches,
        seen,
    ):
        assert actor.next_receive_timeout() == 60  # nothing open: the linger, as ever
        actor.receive(records[:10])
        assert 59 < (actor.next_receive_timeout() or 0) <= 60
        actor._opened_at -= 30  # half the linger has passed since the batch opened
        actor.receive(records[10:])  # another poll does not start the linger again
        assert 29 < (actor.next_receive_timeout() or 0) <= 30
        actor._opened_at -= 30
        assert actor.next_receive_timeout() == 0.0
        actor.on_receive_timeout()  # what the loop runs when that wait finds nothing
        assert seen.wait(10)
        assert actor.next_receive_timeout() == 60
    assert [(b.first_offset, b.message_count) for b in batches] == [(0, 20)]
