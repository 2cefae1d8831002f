"""Assignment strategies: two pipelines share a topic's partitions, one leaves, the other
takes over, and nothing is lost or doubled (invariants 1, 2, 6 of docs/design.md).

``roundrobin`` (kingest's default, an EAGER protocol: every rebalance revokes every
partition of every member and assigns them all again) runs on the session's broker
(Tansu). ``cooperative-sticky`` (the COOPERATIVE protocol: the callbacks get only the
partitions that move, the rest keep being consumed) runs on librdkafka's mock cluster,
because each cooperative join takes about 18 s on Tansu (docs/design.md); on the mock cluster
a cooperative rebalance took about 5 s here. During it the mock cluster fails the retained
partitions' commits (REBALANCE_IN_PROGRESS, then ILLEGAL_GENERATION) for those seconds;
the pipeline retries them at the next interval, which the tests show loses nothing.

The pipelines run in-process so that the tests can record the rebalance callbacks each
one receives and the acknowledgements its offset committer applies.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from kingest.dev import (
    MockKafkaCluster,
    SyntheticStream,
    committed_total,
    create_topic,
    produce_records,
)
from kingest.kafka import TopicPartitionKey
from kingest.pipeline.commits import CommitSource
from kingest.pipeline.committer import OffsetCommitter
from kingest.pipeline.consumer import Pipeline, RunOutcome
from kingest.pipeline.messages import Ack, CommitterMessage
from kingest.store.migrate import apply_migrations
from tests.integration.faulty_stream import (
    PARTITIONS,
    FaultyStreamProducer,
    RecordProperty,
    assert_committed_are_durable,
    check_exactly_once,
    report,
)
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    assert_committed_are_stored,
    kingest_env,
    stored_event_ids,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: (assignment strategy, broker): cooperative-sticky on the mock cluster, see the docstring.
STRATEGIES = [("roundrobin", "tansu"), ("cooperative-sticky", "mock")]


@dataclass
class Broker:
    bootstrap: str
    make_topic: Callable[[], str]


@pytest.fixture(params=STRATEGIES, ids=[strategy for strategy, _ in STRATEGIES])
def strategy(request: pytest.FixtureRequest) -> tuple[str, Broker]:
    """The assignment strategy under test and the broker it runs on."""
    name, where = request.param
    if where == "tansu":
        topic_factory = request.getfixturevalue("topic_factory")
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        return name, Broker(bootstrap, lambda: str(topic_factory(PARTITIONS)))
    bootstrap = request.getfixturevalue("mock_cluster").bootstrap_servers

    def make_mock_topic() -> str:
        topic = f"kt-{request.node.originalname}-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, PARTITIONS)
        return topic

    return name, Broker(bootstrap, make_mock_topic)


# ---------------------------------------------------------------------------- recording


@dataclass
class Callback:
    kind: str  # "assign", "revoke" or "lost"
    partitions: frozenset[TopicPartitionKey]
    #: What the pipeline owned when the callback started.
    owned_before: frozenset[TopicPartitionKey]
    #: The callback came from closing the consumer, after the pipeline released everything.
    closing: bool
    #: Offsets the pipeline committed to the broker while handling the callback.
    committed: list[TopicPartition] = field(default_factory=list)


@dataclass
class CallbackLog:
    calls: list[Callback] = field(default_factory=list)

    def summary(self) -> list[str]:
        """Each callback as kind:partitions(owned before), e.g. revoke:[3, 4](owned [0-5])."""
        return [
            f"{c.kind}:{sorted(p for _, p in c.partitions)}"
            f"(owned {sorted(p for _, p in c.owned_before)})"
            for c in self.calls
        ]

    def of(self, kind: str) -> list[Callback]:
        """The callbacks of ``kind`` while running (not those of closing the consumer)."""
        return [call for call in self.calls if call.kind == kind and not call.closing]


def record_callbacks(pipeline: Pipeline) -> CallbackLog:
    """Wrap the pipeline's rebalance callbacks (before it runs) to record what they get."""
    log = CallbackLog()
    commits: list[TopicPartition] = []
    loop_commits = pipeline._commits
    final = loop_commits.final

    def recording_final(
        consumer: Consumer,
        committer: CommitSource,
        tps: Iterable[TopicPartitionKey],
        deadline: float,
    ) -> bool:
        tps = list(tps)
        commits.extend(loop_commits.unconfirmed(committer, tps))
        return final(consumer, committer, tps, deadline)

    loop_commits.final = recording_final  # type: ignore[method-assign]
    for kind in ("assign", "revoke", "lost"):
        original = getattr(pipeline, f"_on_{kind}")

        def recording(
            consumer: Consumer,
            partitions: list[TopicPartition],
            *,
            kind: str = kind,
            original: Callable[[Consumer, list[TopicPartition]], None] = original,
        ) -> None:
            call = Callback(
                kind,
                frozenset((p.topic, p.partition) for p in partitions),
                owned(pipeline),
                pipeline._stop.is_set(),
            )
            log.calls.append(call)
            before = len(commits)
            original(consumer, partitions)
            call.committed = commits[before:]

        setattr(pipeline, f"_on_{kind}", recording)
    return log


def owned(pipeline: Pipeline) -> frozenset[TopicPartitionKey]:
    """The partitions the pipeline currently has actors for."""
    return frozenset(dict(pipeline._partitions))


def generations(pipeline: Pipeline) -> dict[TopicPartitionKey, int]:
    return {tp: actor.generation for tp, actor in dict(pipeline._partitions).items()}


# ---------------------------------------------------------------------------- tests


def test_two_members_share_then_one_takes_over(
    strategy: tuple[str, Broker], database_url: str, record_property: RecordProperty
) -> None:
    name, broker = strategy
    topic = broker.make_topic()
    apply_migrations(database_url)
    group = f"share-{name}"
    env = kingest_env(
        broker.bootstrap, database_url, topic, group, KINGEST_KAFKA_ASSIGNMENT_STRATEGY=name
    )
    all_tps = frozenset((topic, p) for p in range(PARTITIONS))
    producer = FaultyStreamProducer(
        broker.bootstrap, topic, seed=61, minimum=40_000, rate=3_000, poison_share=0.01
    )
    a, b = InProcessKingest(env), InProcessKingest(env)
    a_log, b_log = record_callbacks(a.pipeline), record_callbacks(b.pipeline)
    with a:
        wait_for(lambda: owned(a.pipeline) == all_tps, timeout=60, what="A owns every partition")
        wait_for(lambda: a.pipeline.stats.get("messages_written") > 0, timeout=60, what="A writes")
        a_alone = generations(a.pipeline)
        with b:
            wait_for(
                lambda: (
                    bool(owned(b.pipeline)) and owned(a.pipeline) | owned(b.pipeline) == all_tps
                ),
                timeout=90,
                what="A and B sharing the partitions",
            )
            wait_for(lambda: not owned(a.pipeline) & owned(b.pipeline), timeout=30, what="split")
            a_shared = generations(a.pipeline)
            wait_for(
                lambda: b.pipeline.stats.get("messages_written") > 0, timeout=60, what="B writes"
            )
            assert b.stop() is RunOutcome.DRAINED
        wait_for(lambda: owned(a.pipeline) == all_tps, timeout=60, what="A takes everything")
        a_after = generations(a.pipeline)
        stream = producer.finish()
        wait_for(
            lambda: all_committed(broker.bootstrap, group, topic, stream.end_offsets, PARTITIONS),
            timeout=90,
            what="every offset committed",
        )
        assert a.stop() is RunOutcome.DRAINED

    assert_committed_are_durable(database_url, broker.bootstrap, group, topic, stream)
    result = check_exactly_once(database_url, stream)
    print(f"\n[{name}] A: {a_log.summary()}\n[{name}] B: {b_log.summary()}")
    assert not a_log.of("lost")
    assert not b_log.of("lost")
    kept = frozenset(a_shared)
    moved = all_tps - kept
    assert kept
    assert moved
    if name == "cooperative-sticky":
        # INCREMENTAL lists: B's join revoked only what moved to B; A kept consuming the
        # rest under the same assignment (same generation), and B's leave assigned A only
        # B's partitions.
        assert all(call.partitions <= moved for call in a_log.of("revoke"))
        assert any(call.partitions == moved for call in a_log.of("revoke"))
        assert {tp: a_alone[tp] for tp in kept} == a_shared
        assert {tp: a_after[tp] for tp in kept} == a_shared
        assign_after_b = [call for call in a_log.of("assign") if call.partitions]
        assert assign_after_b[-1].partitions == moved
        assert assign_after_b[-1].owned_before == kept
    else:
        # EAGER: every revoke takes all the member owns, every assign gives all it gets.
        for call in a_log.of("revoke"):
            assert call.partitions == call.owned_before
        for call in a_log.of("assign"):
            assert not call.owned_before
    report(
        record_property,
        f"rebalance {name}",
        events_checked=result.checked,
        lost=result.lost,
        duplicated=result.duplicated,
        a_callbacks=[f"{c.kind}:{len(c.partitions)}" for c in a_log.calls],
        b_callbacks=[f"{c.kind}:{len(c.partitions)}" for c in b_log.calls],
    )


class LateAckRecorder:
    """Records acknowledgements that reach an offset committer for an assignment it no
    longer tracks (a write that finished after its partition was revoked)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.late: list[Ack] = []
        self.applied = 0
        original = OffsetCommitter.receive
        lock = threading.Lock()

        def receive(committer: OffsetCommitter, message: CommitterMessage) -> Any:
            if isinstance(message, Ack):
                entry = committer._trackers.get(message.tp)
                with lock:
                    if entry is None or entry[0] != message.generation:
                        self.late.append(message)
                    else:
                        self.applied += 1
            return original(committer, message)

        monkeypatch.setattr(OffsetCommitter, "receive", receive)


def test_late_acknowledgements_of_a_revoked_assignment_are_ignored(
    strategy: tuple[str, Broker],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    record_property: RecordProperty,
) -> None:
    # PostgreSQL holds the writers back (a lock the test takes on a table), so a revoke's
    # drain deadline passes with batches still in flight; they finish after the partitions
    # were revoked (and, eagerly, assigned again under a new generation), and their
    # acknowledgements must move no offset.
    name, broker = strategy
    topic = broker.make_topic()
    apply_migrations(database_url)
    group = f"late-{name}"
    env = kingest_env(
        broker.bootstrap,
        database_url,
        topic,
        group,
        KINGEST_KAFKA_ASSIGNMENT_STRATEGY=name,
        KINGEST_DRAIN_TIMEOUT_S="1",
    )
    recorder = LateAckRecorder(monkeypatch)
    producer = FaultyStreamProducer(
        broker.bootstrap, topic, seed=71, minimum=20_000, rate=4_000, poison_share=0.01
    )
    a, b = InProcessKingest(env), InProcessKingest(env)
    a_log = record_callbacks(a.pipeline)
    with a:
        wait_for(lambda: a.pipeline.stats.get("messages_written") > 0, timeout=60, what="A writes")
        with psycopg.connect(database_url) as blocker:
            blocker.execute("LOCK TABLE kingest.inferences IN ACCESS EXCLUSIVE MODE")
            consumed = a.pipeline.stats.get("messages_consumed")
            wait_for(
                lambda: a.pipeline.stats.get("messages_consumed") > consumed + 1_000,
                timeout=30,
                what="A consuming while its writes are held back",
            )
            with b:
                wait_for(lambda: bool(a_log.of("revoke")), timeout=60, what="a revoke on A")
                wait_for(lambda: bool(owned(b.pipeline)), timeout=60, what="B assigned")
                blocker.rollback()  # the held-back writes finish now, after the revoke
                stream = producer.finish()
                wait_for(
                    lambda: all_committed(
                        broker.bootstrap, group, topic, stream.end_offsets, PARTITIONS
                    ),
                    timeout=90,
                    what="every offset committed",
                )
                assert b.stop() is RunOutcome.DRAINED
        assert a.stop() is RunOutcome.DRAINED
    assert recorder.late, "no write finished after its revoke: the test proved nothing"
    assert_committed_are_durable(database_url, broker.bootstrap, group, topic, stream)
    result = check_exactly_once(database_url, stream)
    total = committed_total(broker.bootstrap, group, topic, PARTITIONS)
    assert total == stream.delivered
    report(
        record_property,
        f"late acknowledgements {name}",
        late_acks_ignored=len(recorder.late),
        acks_applied=recorder.applied,
        events_checked=result.checked,
        lost=result.lost,
        duplicated=result.duplicated,
    )


#: Kafka API key of Heartbeat requests.
HEARTBEAT_API = 12


def test_a_lost_assignment_commits_nothing_and_is_recovered(
    mock_cluster: MockKafkaCluster,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    record_property: RecordProperty,
) -> None:
    # The coordinator answers a heartbeat with UNKNOWN_MEMBER_ID (as after a session
    # timeout): the member's assignment is lost, another member may already own the
    # partitions, so kingest must commit nothing for them, stop their actors without
    # draining, ignore the acknowledgements of their writes still in flight, and rejoin.
    bootstrap = mock_cluster.bootstrap_servers
    topic = f"kt-lost-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, PARTITIONS)
    apply_migrations(database_url)
    group = "lost"
    env = kingest_env(bootstrap, database_url, topic, group)
    recorder = LateAckRecorder(monkeypatch)
    producer = FaultyStreamProducer(
        bootstrap, topic, seed=81, minimum=30_000, rate=4_000, poison_share=0.01
    )
    all_tps = frozenset((topic, p) for p in range(PARTITIONS))
    kingest = InProcessKingest(env)
    callbacks = record_callbacks(kingest.pipeline)
    with kingest:
        stats = kingest.pipeline.stats
        wait_for(lambda: stats.get("messages_written") > 0, timeout=60, what="writes")
        lost_generation = max(generations(kingest.pipeline).values())
        mock_cluster.push_request_errors(HEARTBEAT_API, KafkaError.UNKNOWN_MEMBER_ID)
        wait_for(lambda: bool(callbacks.of("lost")), timeout=30, what="the assignment lost")
        wait_for(
            lambda: (
                owned(kingest.pipeline) == all_tps
                and min(generations(kingest.pipeline).values()) > lost_generation
            ),
            timeout=60,
            what="every partition assigned again under a new generation",
        )
        stream = producer.finish()
        wait_for(
            lambda: all_committed(bootstrap, group, topic, stream.end_offsets, PARTITIONS),
            timeout=90,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED
    print(f"\n[lost] {callbacks.summary()}")
    (lost,) = callbacks.of("lost")
    assert lost.partitions == lost.owned_before == all_tps
    assert lost.committed == [], "committed offsets for a lost assignment"
    assert not callbacks.of("revoke"), "a lost assignment was handled as a revoke"
    assert_committed_are_durable(database_url, bootstrap, group, topic, stream)
    result = check_exactly_once(database_url, stream)
    report(
        record_property,
        "lost assignment",
        late_acks_ignored=len(recorder.late),
        events_checked=result.checked,
        lost=result.lost,
        duplicated=result.duplicated,
        callbacks=[f"{c.kind}:{len(c.partitions)}" for c in callbacks.calls],
    )


#: Events of the paused-partition test: enough that every partition is paused long before
#: its share is consumed under the small bounds the test sets.
PAUSED_EVENTS = 12_000


def test_a_partition_paused_when_it_moves_is_consumed_when_it_comes_back(
    strategy: tuple[str, Broker], database_url: str, record_property: RecordProperty
) -> None:
    # librdkafka keeps a partition's pause flag across a rebalance: a partition paused by
    # backpressure, taken away and handed back to the same consumer is not fetched until
    # someone resumes it. kingest forgets its own pause record when it releases the
    # partition, so it must resume every partition it is assigned.
    name, broker = strategy
    topic = broker.make_topic()
    apply_migrations(database_url)
    group = f"paused-{name}"
    env = kingest_env(
        broker.bootstrap,
        database_url,
        topic,
        group,
        KINGEST_KAFKA_ASSIGNMENT_STRATEGY=name,
        KINGEST_DRAIN_TIMEOUT_S="1",
        # Writers blocked by the test's lock give up a statement after 2 s and retry, so
        # a member can leave while the lock is held.
        KINGEST_DATABASE_STATEMENT_TIMEOUT_MS="2000",
        KINGEST_KAFKA_POLL_BATCH_SIZE="100",
        KINGEST_BATCH_SIZE="100",
        KINGEST_WRITER_QUEUE_BATCHES="1",
        KINGEST_WRITERS="2",
        KINGEST_PARTITION_QUEUE_MESSAGES="200",
    )
    all_tps = frozenset((topic, p) for p in range(PARTITIONS))
    records = SyntheticStream(seed=91).take(PAUSED_EVENTS)
    produced = produce_records(
        broker.bootstrap, topic, records, count=PAUSED_EVENTS, collect_ids=True
    )
    assert produced.delivered == PAUSED_EVENTS
    assert produced.event_ids is not None
    a, b = InProcessKingest(env), InProcessKingest(env)
    a_log = record_callbacks(a.pipeline)
    with psycopg.connect(database_url) as blocker, a:
        # Every batch holds an inference: with the table locked no write completes, the
        # queues fill and backpressure pauses every partition.
        blocker.execute("LOCK TABLE kingest.inferences IN ACCESS EXCLUSIVE MODE")
        wait_for(
            lambda: owned(a.pipeline) == all_tps and a.pipeline.state().paused_count == PARTITIONS,
            timeout=60,
            what="A owning and having paused every partition",
        )
        with b:
            wait_for(lambda: bool(owned(b.pipeline)), timeout=90, what="B assigned")
            moved = owned(b.pipeline)
            assigns = len(a_log.of("assign"))
            b.stop()  # leaves with its writes held back: its drain deadline passes
        wait_for(
            lambda: len(a_log.of("assign")) > assigns and owned(a.pipeline) == all_tps,
            timeout=90,
            what="A assigned every partition again after B left",
        )
        blocker.rollback()
        # Bounded: a partition that stays paused in the consumer never gets there.
        wait_for(
            lambda: all_committed(broker.bootstrap, group, topic, produced.end_offsets, PARTITIONS),
            timeout=90,
            what=f"every offset committed (A: {a_log.summary()})",
        )
        assert a.stop() is RunOutcome.DRAINED
    assert_committed_are_stored(database_url, broker.bootstrap, group, topic, PARTITIONS)
    stored = stored_event_ids(database_url)
    assert set(stored) == produced.event_ids
    assert max(stored.values()) == 1
    report(
        record_property,
        f"paused partition comes back {name}",
        moved=sorted(p for _, p in moved),
        events=len(stored),
        a_callbacks=a_log.summary(),
    )
