"""The whole poison corpus, interleaved with valid events across partitions, through the
real pipeline (in-process) on a real broker and PostgreSQL: each case ends as
documented (tests/poison_corpus.py, docs/poison-messages.md) and nothing blocks."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError, Message, Producer

from kingest.dev.demo import committed_offsets
from kingest.dev.synth import SyntheticStream
from kingest.pipeline.consumer import RunOutcome
from kingest.store.event_ids import derive_event_id
from kingest.store.migrate import apply_migrations
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    kingest_env,
    stored_event_ids,
    stored_offsets,
    wait_for,
)
from tests.poison_corpus import DUPLICATE_EVENT_ID, Outcome, PoisonCase, build_corpus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
VALID_EVENTS = 3_000
GROUP = "poison-corpus"


class OrderedProducer:
    """Produces to explicit partitions and records the offset each message got."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        self.offsets: dict[str, tuple[int, int]] = {}  # case name -> (partition, offset)
        self.end_offsets: dict[int, int] = {}
        self.errors: list[str] = []

    def send(
        self,
        partition: int,
        key: bytes,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] = (),
        name: str | None = None,
    ) -> None:
        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self.errors.append(str(error))
                return
            offset = message.offset()
            assert offset is not None
            self.end_offsets[partition] = max(self.end_offsets.get(partition, 0), offset + 1)
            if name is not None:
                self.offsets[name] = (partition, offset)

        self._producer.produce(
            self.topic,
            value=value,
            key=key,
            headers=list(headers) or None,
            partition=partition,
            on_delivery=delivered,
        )

    def flush(self) -> None:
        assert self._producer.flush(60) == 0
        assert not self.errors, self.errors

    def close(self) -> None:
        """Flush and let the client go (it would log reconnects once the broker stops)."""
        self.flush()
        del self._producer


def partition_of(case: PoisonCase) -> int:
    """Cases spread over the partitions; a group (the duplicate pair) shares one."""
    return zlib.crc32(case.key) % PARTITIONS


def select(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def test_every_poison_case_ends_as_documented_and_nothing_blocks(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    corpus = build_corpus()
    later = [case for case in corpus if case.expected.outcome is Outcome.DUPLICATE_IGNORED]
    first = [case for case in corpus if case not in later]
    valid = SyntheticStream(seed=41).take(VALID_EVENTS)
    producer = OrderedProducer(kafka_bootstrap, topic)

    # Phase 1: valid events round-robin over the partitions, a corpus case every few.
    stride = VALID_EVENTS // len(first)
    pending = iter(first)
    for index, record in enumerate(valid):
        producer.send(index % PARTITIONS, record.key, record.value, record.headers)
        if index % stride == stride // 2 and (case := next(pending, None)) is not None:
            producer.send(partition_of(case), case.key, case.value, case.headers, case.name)
    for case in pending:
        producer.send(partition_of(case), case.key, case.value, case.headers, case.name)
    producer.flush()
    assert set(producer.end_offsets) == set(range(PARTITIONS))
    env = kingest_env(kafka_bootstrap, database_url, topic, GROUP)

    with InProcessKingest(env) as kingest:
        ends = dict(producer.end_offsets)
        wait_for(
            lambda: all_committed(kafka_bootstrap, GROUP, topic, ends, PARTITIONS),
            timeout=120,
            what="every partition committed to its end (phase 1)",
        )
        # Phase 2: the second copy of an event id, once the first copy is stored.
        for case in later:
            producer.send(partition_of(case), case.key, case.value, case.headers, case.name)
        producer.close()
        ends = dict(producer.end_offsets)
        wait_for(
            lambda: all_committed(kafka_bootstrap, GROUP, topic, ends, PARTITIONS),
            timeout=120,
            what="every partition committed to its end (phase 2)",
        )
        assert kingest.stop() is RunOutcome.DRAINED
    stats = kingest.pipeline.stats.snapshot()

    # No partition blocked, and below each committed offset every message is stored as
    # a row or a dead letter (invariant 1 of docs/design.md), except the ignored duplicate:
    # its event is stored under the first copy's offset.
    committed = committed_offsets(kafka_bootstrap, GROUP, topic, PARTITIONS)
    assert committed == producer.end_offsets
    duplicates = {producer.offsets[case.name] for case in later}
    for partition, end in committed.items():
        unstored = set(range(end)) - stored_offsets(database_url).get(partition, set())
        assert {(partition, offset) for offset in unstored} == {
            (p, o) for p, o in duplicates if p == partition
        }

    for case in corpus:
        partition, offset = producer.offsets[case.name]
        _assert_case_outcome(database_url, topic, case, partition, offset)

    # Every valid event stored exactly once; no other rows than the stored cases.
    stored = stored_event_ids(database_url)
    stored_cases = {
        case.event_id or derive_event_id(topic, *producer.offsets[case.name])
        for case in corpus
        if case.expected.outcome is Outcome.STORED
    }
    assert set(stored) == {record.event_id for record in valid} | stored_cases
    assert max(stored.values()) == 1

    # Dead letters: one per dead-letter case, and only what validation cannot see
    # (a Kafka header) needed the writer to bisect a failed batch.
    dead_cases = [case for case in corpus if case.expected.outcome is Outcome.DEAD_LETTER]
    write_cases = [case for case in dead_cases if case.expected.stage == "write"]
    assert select(database_url, "SELECT count(*) FROM kingest.dead_letters") == [(len(dead_cases),)]
    assert select(
        database_url, "SELECT count(*) FROM kingest.dead_letters WHERE error_stage = 'write'"
    ) == [(len(write_cases),)]
    assert stats.get("write_rejections", 0) == len(write_cases)
    assert stats.get("duplicates", 0) >= len(later)


def _assert_case_outcome(
    url: str, topic: str, case: PoisonCase, partition: int, offset: int
) -> None:
    expected = case.expected
    if expected.outcome is Outcome.DEAD_LETTER:
        rows = select(
            url,
            "SELECT error_stage, error_class, sqlstate, message_key, message_value"
            " FROM kingest.dead_letters"
            " WHERE kafka_topic = %s AND kafka_partition = %s AND kafka_offset = %s",
            (topic, partition, offset),
        )
        assert rows == [
            (expected.stage, expected.error_class, expected.sqlstate, case.key, case.value)
        ], case.name
        return
    assert expected.table is not None
    event_id = case.event_id or derive_event_id(topic, partition, offset)
    rows = select(
        url,
        f"SELECT kafka_partition, kafka_offset FROM kingest.{expected.table} WHERE event_id = %s",
        (event_id,),
    )
    assert len(rows) == 1, case.name
    if expected.outcome is Outcome.STORED:
        assert rows == [(partition, offset)], case.name
    else:  # the duplicate: the row is the first copy's, at another offset
        assert event_id == DUPLICATE_EVENT_ID
        assert rows != [(partition, offset)], case.name
    if case.stored_column is not None:
        column, value = case.stored_column
        assert select(
            url,
            f"SELECT {column} FROM kingest.{expected.table} WHERE event_id = %s",
            (event_id,),
        ) == [(value,)], case.name
