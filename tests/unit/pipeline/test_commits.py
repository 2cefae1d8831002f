"""The consumer loop's offset commits (:class:`LoopCommits`), without a broker.

A fake consumer records the commits it is asked for and answers ``committed()`` with
what its coordinator holds; a fake committer reports durable offsets per partition and
generation, as the :class:`OffsetCommitter` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from opentelemetry.trace import SpanContext

from kingest.kafka import TopicPartitionKey
from kingest.pipeline.commits import LoopCommits
from kingest.telemetry import PipelineStats, catalog

TOPIC = "events"
P0: TopicPartitionKey = (TOPIC, 0)
P1: TopicPartitionKey = (TOPIC, 1)
P2: TopicPartitionKey = (TOPIC, 2)
INTERVAL_S = 5.0


@dataclass
class Partition:
    generation: int


@dataclass
class FakeCommitter:
    """Durable offsets as the committer reports them: ``{tp: (generation, offset)}``."""

    durable: dict[TopicPartitionKey, tuple[int, int]] = field(default_factory=dict)

    def committable(self) -> dict[TopicPartitionKey, tuple[int, int]]:
        return dict(self.durable)

    def commit_links(self, offsets: Iterable[tuple[TopicPartitionKey, int]]) -> list[SpanContext]:
        return []


@dataclass
class FakeConsumer:
    """Records commit requests; its coordinator stores them unless told to refuse."""

    commits: list[dict[TopicPartitionKey, int]] = field(default_factory=list)
    held: dict[TopicPartitionKey, int] = field(default_factory=dict)
    refuse: set[TopicPartitionKey] = field(default_factory=set)
    read_backs: int = 0

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous, "a synchronous commit cannot be bounded by a deadline"
        sent = {(p.topic, p.partition): p.offset for p in offsets}
        self.commits.append(sent)
        self.held.update((tp, offset) for tp, offset in sent.items() if tp not in self.refuse)

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.read_backs += 1
        return [
            TopicPartition(p.topic, p.partition, self.held.get((p.topic, p.partition), -1001))
            for p in partitions
        ]


@dataclass
class Result:
    """A partition of an ``on_commit`` result (``TopicPartition.error`` is read-only)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


def on_commit_result(*results: Result) -> list[TopicPartition]:
    return cast(list[TopicPartition], list(results))


class Loop:
    """A LoopCommits with the fakes around it, and a clock past each commit interval."""

    def __init__(self, owned: dict[TopicPartitionKey, Partition]) -> None:
        self.owned = owned
        self.stats = PipelineStats()
        self.commits = LoopCommits(owned, stats=self.stats, group_id="g", interval_s=INTERVAL_S)
        self.committer = FakeCommitter()
        self.fake = FakeConsumer()
        self.consumer = cast(Consumer, self.fake)
        self.now = 1000.0

    def progress(self) -> bool:
        self.now += INTERVAL_S
        return self.commits.progress(self.consumer, self.committer, self.now)

    def final(self, tps: Iterable[TopicPartitionKey], deadline_s: float = 10.0) -> bool:
        deadline = time.monotonic() + deadline_s
        return self.commits.final(self.consumer, self.committer, tps, deadline)

    def counted(self) -> dict[tuple[str, ...], int]:
        return self.stats.series(catalog.COMMITS)


def test_only_offsets_of_the_current_generation_are_committed() -> None:
    loop = Loop({P0: Partition(generation=2), P1: Partition(generation=1)})
    loop.committer.durable = {
        P0: (1, 40),  # acknowledged under the earlier assignment of P0
        P1: (1, 7),
        P2: (1, 9),  # not owned
    }
    assert loop.progress()
    assert loop.fake.commits == [{P1: 7}]
    assert loop.commits.unconfirmed(loop.committer, [P0, P1, P2]) == [TopicPartition(TOPIC, 1, 7)]

    loop.committer.durable[P0] = (2, 12)
    assert loop.progress()
    assert loop.fake.commits[-1] == {P0: 12}


def test_commits_wait_for_the_interval() -> None:
    loop = Loop({P0: Partition(1)})
    loop.committer.durable = {P0: (1, 5)}
    assert loop.commits.progress(loop.consumer, loop.committer, loop.now)
    loop.committer.durable = {P0: (1, 6)}
    assert not loop.commits.progress(loop.consumer, loop.committer, loop.now + INTERVAL_S / 2)
    assert loop.fake.commits == [{P0: 5}]
    assert loop.commits.progress(loop.consumer, loop.committer, loop.now + INTERVAL_S)
    assert loop.fake.commits == [{P0: 5}, {P0: 6}]


def test_nothing_is_committed_twice() -> None:
    loop = Loop({P0: Partition(1), P1: Partition(1)})
    loop.committer.durable = {P0: (1, 10), P1: (1, 3)}
    loop.progress()
    loop.progress()  # nothing new: nothing sent, whether or not the broker answered
    loop.commits.on_commit(None, on_commit_result(Result(TOPIC, 0, 10), Result(TOPIC, 1, 3)))
    loop.progress()
    loop.committer.durable[P1] = (1, 8)
    loop.progress()
    assert loop.fake.commits == [{P0: 10, P1: 3}, {P1: 8}]
    assert loop.commits.committed() == {P0: 10, P1: 8}
    assert loop.counted() == {("ok",): 1}


def test_a_rejected_commit_is_sent_again_at_the_next_interval() -> None:
    loop = Loop({P0: Partition(1), P1: Partition(1)})
    loop.committer.durable = {P0: (1, 10), P1: (1, 3)}
    loop.progress()
    error = KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
    loop.commits.on_commit(error, on_commit_result(Result(TOPIC, 0, 10), Result(TOPIC, 1, 3)))
    assert loop.commits.confirmed() == {}
    assert loop.counted() == {("failed",): 1}
    loop.progress()
    assert loop.fake.commits == [{P0: 10, P1: 3}, {P0: 10, P1: 3}]


def test_a_partition_rejected_alone_is_the_only_one_sent_again() -> None:
    loop = Loop({P0: Partition(1), P1: Partition(1)})
    loop.committer.durable = {P0: (1, 10), P1: (1, 3)}
    loop.progress()
    refused = KafkaError(KafkaError.OFFSET_METADATA_TOO_LARGE)
    loop.commits.on_commit(
        None, on_commit_result(Result(TOPIC, 0, 10), Result(TOPIC, 1, 3, refused))
    )
    assert loop.counted() == {("failed",): 1}
    loop.progress()
    assert loop.fake.commits == [{P0: 10, P1: 3}, {P1: 3}]


def test_a_late_rejection_of_an_older_offset_keeps_the_newer_one() -> None:
    loop = Loop({P0: Partition(1)})
    loop.committer.durable = {P0: (1, 10)}
    loop.progress()
    loop.committer.durable = {P0: (1, 20)}
    loop.progress()
    error = KafkaError(KafkaError.REQUEST_TIMED_OUT)
    loop.commits.on_commit(error, on_commit_result(Result(TOPIC, 0, 10)))
    loop.progress()
    assert loop.fake.commits == [{P0: 10}, {P0: 20}]


def test_the_broker_confirms_only_owned_partitions() -> None:
    loop = Loop({P0: Partition(1)})
    loop.commits.on_commit(None, on_commit_result(Result(TOPIC, 0, 10), Result(TOPIC, 1, 4)))
    assert loop.commits.confirmed() == {P0: 10}
    loop.commits.release([P0])
    assert loop.commits.confirmed() == {}


def test_the_final_commit_includes_offsets_in_flight_and_reads_them_back() -> None:
    loop = Loop({P0: Partition(1), P1: Partition(1)})
    loop.committer.durable = {P0: (1, 10), P1: (1, 3)}
    loop.progress()
    loop.commits.on_commit(None, on_commit_result(Result(TOPIC, 1, 3)))  # P0's not answered
    loop.committer.durable[P1] = (1, 5)
    assert loop.final([P0, P1])
    assert loop.fake.commits[-1] == {P0: 10, P1: 5}
    assert loop.fake.read_backs == 1
    assert loop.commits.confirmed() == {P0: 10, P1: 5}
    assert loop.counted() == {("ok",): 2}
    # Everything confirmed: a second final commit sends nothing.
    assert loop.final([P0, P1])
    assert len(loop.fake.commits) == 2


def test_the_final_commit_fails_when_the_coordinator_holds_less() -> None:
    loop = Loop({P0: Partition(1), P1: Partition(1)})
    loop.committer.durable = {P0: (1, 10), P1: (1, 3)}
    loop.fake.refuse = {P0}
    loop.fake.held = {P0: 4}
    assert not loop.final([P0, P1])
    assert loop.fake.commits == [{P0: 10, P1: 3}]
    assert loop.commits.confirmed() == {}
    assert loop.commits.committed() == {}
    assert loop.counted() == {("failed",): 1}


def test_the_final_commit_fails_when_the_deadline_has_passed() -> None:
    loop = Loop({P0: Partition(1)})
    loop.committer.durable = {P0: (1, 10)}
    assert not loop.final([P0], deadline_s=-1.0)
    assert loop.fake.read_backs == 0
    assert loop.commits.confirmed() == {}


def test_the_final_commit_covers_only_the_partitions_asked_for() -> None:
    loop = Loop({P0: Partition(1), P1: Partition(1)})
    loop.committer.durable = {P0: (1, 10), P1: (1, 3)}
    assert loop.final([P1])
    assert loop.fake.commits == [{P1: 3}]


@pytest.mark.parametrize("generation", [1, 3])
def test_the_final_commit_skips_an_earlier_generation(generation: int) -> None:
    loop = Loop({P0: Partition(2)})
    loop.committer.durable = {P0: (generation, 10)}
    assert loop.final([P0])
    assert loop.fake.commits == []
