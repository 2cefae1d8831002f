"""The pipeline end to end, in-process, on a real broker and a real PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from kingest.pipeline.pipeline import RunOutcome
from kingest.producer import produce_records
from kingest.store.migrate import apply_migrations
from kingest.synth import SyntheticStream
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    assert_committed_are_stored,
    count_rows,
    kingest_env,
    stored_event_ids,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 8


def produce_poison(bootstrap: str, topic: str, count: int, seed: int = 7) -> dict[int, int]:
    """Produce undecodable values; returns how many went to each partition."""
    rng = random.Random(seed)
    per_partition: dict[int, int] = {}
    producer = Producer({"bootstrap.servers": bootstrap})
    for index in range(count):
        partition = index % PARTITIONS
        value = rng.randbytes(rng.randint(1, 64)) if index % 3 else b""
        producer.produce(topic, value=value, key=b"poison", partition=partition)
        per_partition[partition] = per_partition.get(partition, 0) + 1
    assert producer.flush(30) == 0
    return per_partition


def test_100k_mixed_events_land_exactly_once(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    records = SyntheticStream(seed=1).take(100_000)
    report = produce_records(kafka_bootstrap, topic, records, count=len(records))
    assert report.delivered == 100_000
    poison = produce_poison(kafka_bootstrap, topic, 40)
    end_offsets = {p: report.end_offsets.get(p, 0) + poison.get(p, 0) for p in range(PARTITIONS)}
    env = kingest_env(kafka_bootstrap, database_url, topic, "exactly-once")

    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, "exactly-once", topic, end_offsets, PARTITIONS),
            timeout=120,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED

    stored = stored_event_ids(database_url)
    assert set(stored) == {r.event_id for r in records}
    assert max(stored.values()) == 1
    assert count_rows(database_url, "dead_letters") == 40
    assert count_rows(database_url, "dead_letters", "error_stage IN ('decode', 'validate')") == 40
    assert_committed_are_stored(database_url, kafka_bootstrap, "exactly-once", topic, PARTITIONS)
    stats = kingest.pipeline.stats.snapshot()
    assert stats["messages_consumed"] == 100_040


def test_the_same_events_produced_twice_are_stored_once(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(PARTITIONS)
    apply_migrations(database_url)
    records = SyntheticStream(seed=2).take(20_000)
    first = produce_records(kafka_bootstrap, topic, records, count=len(records))
    second = produce_records(kafka_bootstrap, topic, records, count=len(records))
    assert first.delivered == second.delivered == 20_000
    end_offsets = second.end_offsets  # the second copies sit behind the first ones
    env = kingest_env(kafka_bootstrap, database_url, topic, "twice")
    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, "twice", topic, end_offsets, PARTITIONS),
            timeout=90,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED
    stored = stored_event_ids(database_url)
    assert len(stored) == 20_000
    assert max(stored.values()) == 1
    assert kingest.pipeline.stats.get("duplicates") == 20_000
