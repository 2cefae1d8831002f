"""Dead letters on a topic: published with their context, acknowledged once confirmed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer

from kingest.config.settings import load_settings
from kingest.deadletters.publisher import DeadLetter, decode_message
from kingest.dev.producer import produce_records
from kingest.dev.services import create_topic
from kingest.dev.synth import SyntheticStream
from kingest.pipeline.consumer import RunOutcome
from kingest.runtime.service import StartupError, check_kafka
from kingest.store.migrate import apply_migrations
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    count_rows,
    kingest_env,
    stored_event_ids,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
POISON = 6


def produce_poison(bootstrap: str, topic: str) -> dict[int, int]:
    producer = Producer({"bootstrap.servers": bootstrap})
    for index in range(POISON):
        producer.produce(
            topic,
            key=f"poison-{index}".encode(),
            value=b"\xff\x00garbage" + bytes([index]),
            partition=index % PARTITIONS,
            headers=[("correlation-id", f"corr-{index}".encode()), ("origin", None)],
        )
    assert producer.flush(30) == 0
    return dict.fromkeys(range(PARTITIONS), POISON // PARTITIONS)


def read_dead_letters(bootstrap: str, topic: str, expected: int) -> list[DeadLetter]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    found: list[DeadLetter] = []
    try:

        def read_some() -> bool:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    found.append(decode_message(message.key(), message.value(), message.headers()))
            return len(found) >= expected

        wait_for(read_some, timeout=60, interval=0, what=f"{expected} dead letters on {topic}")
    finally:
        consumer.close()
    return found


@pytest.mark.parametrize("store", ["topic", "both"])
def test_poison_goes_to_the_dead_letter_topic_with_its_context(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str], store: str
) -> None:
    topic = topic_factory(PARTITIONS)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    apply_migrations(database_url)
    records = SyntheticStream(seed=5).take(2_000)
    report = produce_records(kafka_bootstrap, topic, records, count=len(records))
    poison = produce_poison(kafka_bootstrap, topic)
    end_offsets = {p: report.end_offsets.get(p, 0) + poison[p] for p in range(PARTITIONS)}
    group = f"dlq-topic-{store}"
    env = kingest_env(kafka_bootstrap, database_url, topic, group, KINGEST_DEAD_LETTER_STORE=store)

    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, end_offsets, PARTITIONS),
            timeout=120,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED

    assert set(stored_event_ids(database_url)) == {r.event_id for r in records}
    assert count_rows(database_url, "dead_letters") == (POISON if store == "both" else 0)
    assert kingest.pipeline.stats.get("dead_letters_published") == POISON
    letters = read_dead_letters(kafka_bootstrap, f"{topic}.dlq", POISON)
    assert len(letters) == POISON
    by_key = {letter.rejection.key: letter for letter in letters}
    for index in range(POISON):
        letter = by_key[f"poison-{index}".encode()]
        rejection = letter.rejection
        assert rejection.topic == topic
        assert rejection.partition == index % PARTITIONS
        assert rejection.value == b"\xff\x00garbage" + bytes([index])
        assert rejection.headers == (
            ("correlation-id", f"corr-{index}".encode()),
            ("origin", None),
        )
        assert rejection.error_stage == "decode"
        assert rejection.error_class
        assert rejection.correlation_id == f"corr-{index}"
        assert letter.consumer_group == group
        assert letter.attempts == 1
    coordinates = {(r.rejection.partition, r.rejection.offset) for r in letters}
    assert len(coordinates) == POISON


def test_a_missing_dead_letter_topic_stops_the_start(
    kafka_bootstrap: str, topic_factory: Callable[[int], str]
) -> None:
    topic = topic_factory(1)
    env = kingest_env(
        kafka_bootstrap, "postgresql://localhost/x", topic, "g", KINGEST_DEAD_LETTER_STORE="topic"
    )
    with pytest.raises(StartupError, match=rf"topics not found .*: {topic}\.dlq"):
        check_kafka(load_settings(env))
