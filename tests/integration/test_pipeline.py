"""The pipeline end to end, in-process, on a real broker and a real PostgreSQL."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

import psycopg
import pytest
from confluent_kafka import Producer

from kingest.dev.producer import produce_records
from kingest.dev.synth import SyntheticStream
from kingest.pipeline.consumer import RunOutcome
from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import Event, InferenceCompleted, InferenceStatus
from kingest.schema.validate import EventValidator, payload_of
from kingest.store.migrate import apply_migrations
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    assert_committed_are_stored,
    committed_offsets,
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


def test_a_row_postgresql_rejects_is_dead_lettered_and_its_neighbours_stored(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PostgreSQL text cannot hold a NUL character. The validator refuses it itself, so it
    # is blinded here to test the writer's defence: it bisects the batch, dead-letters
    # that one event with its SQLSTATE and stores the rest.
    monkeypatch.setattr(EventValidator, "validate", lambda _s, event, *_, **__: payload_of(event))
    topic = topic_factory(1)
    apply_migrations(database_url)
    good = SyntheticStream(seed=5, wire_format_share=0.0).take(999)
    bad_event = Event(
        event_id=str(uuid.uuid4()),
        correlation_id="flow-nul",
        source="serving/gateway",
        inference_completed=InferenceCompleted(
            model_name="bad\x00model", status=InferenceStatus.INFERENCE_STATUS_OK
        ),
    )
    bad_event.occurred_at.GetCurrentTime()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for index, record in enumerate(good):
        if index == 500:
            producer.produce(topic, key=b"bad", value=encode_event(bad_event), partition=0)
        producer.produce(topic, key=record.key, value=record.value, partition=0)
    assert producer.flush(30) == 0
    env = kingest_env(kafka_bootstrap, database_url, topic, "bisect")
    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, "bisect", topic, {0: 1000}, 1),
            timeout=60,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED
    assert set(stored_event_ids(database_url)) == {r.event_id for r in good}
    where = "error_stage = 'write' AND sqlstate = '22021' AND kafka_offset = 500"
    assert count_rows(database_url, "dead_letters", where) == 1
    assert count_rows(database_url, "dead_letters") == 1
    assert kingest.pipeline.stats.get("write_rejections") == 1


def test_a_missing_table_stops_the_pipeline_without_committing_past_it(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(2)
    apply_migrations(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE kingest.inferences")
    records = SyntheticStream(seed=6).take(2_000)
    report = produce_records(kafka_bootstrap, topic, records, count=len(records))
    assert report.delivered == 2_000
    env = kingest_env(kafka_bootstrap, database_url, topic, "schema-gone")
    kingest = InProcessKingest(env)
    with kingest:
        wait_for(lambda: kingest.outcome is not None, timeout=60, what="the pipeline to stop")
    assert kingest.outcome is RunOutcome.FAILED
    # Nothing was stored, so nothing may have been committed.
    committed = committed_offsets(kafka_bootstrap, "schema-gone", topic, 2)
    assert all(offset < 0 for offset in committed.values())
