"""Kafka metadata a producer controls but PostgreSQL or confluent-kafka cannot take as
is: Kafka timestamps outside the years 1-9999 (nanoseconds, negative, INT64 max/min)
and header names that are not UTF-8. Through the real pipeline on a real broker and
PostgreSQL, with the dead letters in the table and on a topic: every message ends
stored or dead-lettered once, and the stream goes on (later messages stored, offsets
committed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from kingest.deadletters.publisher import DeadLetter, decode_message, encode_headers
from kingest.deadletters.replay import ReplayPlan, replay
from kingest.deadletters.stored import (
    DeadLetterFilter,
    StoredDeadLetter,
    list_dead_letters,
    with_table_state,
)
from kingest.dev import SyntheticRecord, SyntheticStream, create_topic
from kingest.pipeline.consumer import RunOutcome
from kingest.schema.codec import decode_event, encode_event
from kingest.store.event_ids import derive_event_id
from kingest.store.migrate import apply_migrations
from kingest.store.rows import Rejection
from kingest.telemetry import catalog
from tests.integration.raw_headers import produce_raw
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    kingest_env,
    stored_event_ids,
    stored_offsets,
    wait_for,
)
from tests.tracing_support import recording

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Kafka timestamps (epoch ms) a producer can set, and whether PostgreSQL and Python can
#: both hold them (years 1-9999).
TIMESTAMPS = {
    "nanoseconds": (time.time_ns(), False),
    "negative": (-5, True),
    "before-year-1": (-(10**14), False),
    "int64-max": (2**63 - 1, False),
    "int64-min": (-(2**63), False),
}
BAD_HEADERS = [(b"\xff\xfeoctets", b"x"), (b"correlation-id", b"from-header")]
LATER = 20


class Sent:
    """What the test produced, read back from the delivery reports and watermarks."""

    def __init__(self) -> None:
        self.valid: dict[int, str] = {}  # offset -> event id it must be stored under
        self.poison: dict[int, tuple[bytes, int | None, bool]] = {}  # value, raw ts, bad headers
        self.errors: list[str] = []
        self.bad_headers: list[int] = []  # offsets of messages with a non-UTF-8 header name


def _send(
    producer: Producer, topic: str, value: bytes, timestamp: int, sent: Sent, *, valid: str | None
) -> None:
    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            sent.errors.append(str(error))
            return
        offset = message.offset()
        assert offset is not None
        if valid is not None:
            sent.valid[offset] = valid
        else:
            sent.poison[offset] = (value, timestamp, False)

    producer.produce(topic, value=value, partition=0, timestamp=timestamp, on_delivery=delivered)
    assert producer.flush(30) == 0


def _high_watermark(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(high)
    finally:
        consumer.close()


def produce_hostile(bootstrap: str, topic: str, case: str) -> Sent:
    """One partition, in order: for ``case`` "timestamps", per hostile timestamp a valid
    event and an undecodable value; for "headers", with a header name that is not
    UTF-8, a valid event, a valid event without event_id and an undecodable value;
    then ``LATER`` ordinary events."""
    records = iter(SyntheticStream(seed=23).take(len(TIMESTAMPS) + 2 + LATER))
    producer = Producer({"bootstrap.servers": bootstrap})
    sent = Sent()
    for name, (timestamp, _) in TIMESTAMPS.items() if case == "timestamps" else ():
        record = next(records)
        _send(producer, topic, record.value, timestamp, sent, valid=record.event_id)
        _send(producer, topic, b"\xff\x00hostile " + name.encode(), timestamp, sent, valid=None)
    assert not sent.errors, sent.errors

    if case == "headers":
        _produce_bad_headers(bootstrap, topic, sent, records)
    for record in records:
        _send(producer, topic, record.value, int(time.time() * 1000), sent, valid=record.event_id)
    assert not sent.errors, sent.errors
    return sent


def _produce_bad_headers(
    bootstrap: str, topic: str, sent: Sent, records: Iterator[SyntheticRecord]
) -> None:
    record = next(records)
    offset = _high_watermark(bootstrap, topic)
    produce_raw(bootstrap, topic, 0, record.value, BAD_HEADERS)
    sent.valid[offset] = record.event_id
    anonymous = decode_event(next(records).value)
    anonymous.event_id = ""
    produce_raw(bootstrap, topic, 0, encode_event(anonymous), BAD_HEADERS)
    sent.valid[offset + 1] = derive_event_id(topic, 0, offset + 1)
    poison = b"\xff\x00hostile headers"
    produce_raw(bootstrap, topic, 0, poison, BAD_HEADERS)
    sent.poison[offset + 2] = (poison, None, True)
    assert _high_watermark(bootstrap, topic) == offset + 3
    sent.bad_headers = [offset, offset + 1, offset + 2]


def read_dead_letter_topic(
    bootstrap: str, topic: str, expected: int
) -> list[tuple[DeadLetter, tuple[int, int]]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    found: list[tuple[DeadLetter, tuple[int, int]]] = []
    try:

        def read_some() -> bool:
            for message in consumer.consume(100, timeout=0.5):
                if message.error() is None:
                    letter = decode_message(message.key(), message.value(), message.headers())
                    found.append((letter, message.timestamp()))
            return len(found) >= expected

        wait_for(read_some, timeout=60, interval=0, what=f"{expected} dead letters on {topic}")
    finally:
        consumer.close()
    return found


def _select(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture
def traced() -> Iterator[None]:
    """Tracing on: the partition actor reads every message's headers for trace links."""
    with recording():
        yield


@pytest.mark.parametrize("store", ["table", "topic"])
@pytest.mark.parametrize("case", ["timestamps", "headers"])
def test_hostile_timestamps_and_header_names_neither_stop_nor_lose_anything(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    traced: None,
    caplog: pytest.LogCaptureFixture,
    case: str,
    store: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="kingest.pipeline.partition")
    topic = topic_factory(1)
    create_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    apply_migrations(database_url)
    sent = produce_hostile(kafka_bootstrap, topic, case)
    end = len(sent.valid) + len(sent.poison)
    group = f"hostile-{case}-{store}"
    env = kingest_env(kafka_bootstrap, database_url, topic, group, KINGEST_DEAD_LETTER_STORE=store)

    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topic, {0: end}, 1),
            timeout=120,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED
        metrics = kingest.pipeline.metrics.render().decode()
        unreadable = kingest.pipeline.stats.series(catalog.UNREADABLE_HEADERS)

    # Every message whose headers could not be read is counted and logged with its
    # coordinates, the valid events among them too (they leave no dead letter).
    assert unreadable == ({(topic, "0"): len(sent.bad_headers)} if sent.bad_headers else {})
    served = {
        (labels["messaging_destination_name"], labels["messaging_destination_partition_id"]): value
        for family in text_string_to_metric_families(metrics)
        for name, labels, value, *_ in family.samples
        if name == "kingest_unreadable_headers_total"
    }
    assert served == ({(topic, "0"): len(sent.bad_headers)} if sent.bad_headers else {})
    warnings = [r for r in caplog.records if "Kafka headers could not be read" in r.getMessage()]
    assert sorted(o for r in warnings for o in r.offsets) == sent.bad_headers
    assert all((r.topic, r.partition) == (topic, 0) for r in warnings)

    # Every valid event stored once, the later ones included; nothing else.
    stored = stored_event_ids(database_url)
    assert set(stored) == set(sent.valid.values())
    assert max(stored.values()) == 1
    in_table = set(sent.poison) if store == "table" else set()
    assert stored_offsets(database_url) == {0: set(sent.valid) | in_table}

    if store == "table":
        assert_dead_letter_rows(database_url, sent)
        # `kingest dlq list` reads them back (the JSON of each one included).
        with psycopg.connect(database_url) as conn:
            listed = list_dead_letters(conn, DeadLetterFilter())
        assert sorted(d.rejection.offset for d in listed) == sorted(sent.poison)
        for dead_letter in listed:
            assert dead_letter.as_json(with_content=True)["offset"] == dead_letter.rejection.offset
    else:
        assert _select(database_url, "SELECT count(*) FROM kingest.dead_letters") == [(0,)]
        letters = read_dead_letter_topic(kafka_bootstrap, f"{topic}.dlq", len(sent.poison))
        assert sorted(letter.rejection.offset for letter, _ in letters) == sorted(sent.poison)
        for letter, (_, published_ms) in letters:
            rejection = letter.rejection
            expected_value, raw, bad_headers = sent.poison[rejection.offset]
            assert rejection.value == expected_value
            if bad_headers:
                assert rejection.headers == ()
                assert "Kafka headers unreadable" in rejection.error_message
                continue
            # The raw value travels in kingest.dlq.source.timestamp; the message itself
            # keeps it only when it is a time a broker and PostgreSQL can hold.
            assert rejection.kafka_timestamp_ms == raw
            sane = next(ok for ts, ok in TIMESTAMPS.values() if ts == raw)
            if sane:
                assert published_ms == raw
            else:
                assert abs(published_ms - time.time() * 1000) < 600_000

        # `kingest dlq replay --from topic` records each page of them in the table first
        # (replay() itself reads too few of them on Tansu, whose high watermark lags after
        # multi-message produce requests), storing the absurd timestamps as NULL.
        page = [StoredDeadLetter.from_topic(letter) for letter, _ in letters]
        with psycopg.connect(database_url, autocommit=True) as conn:
            known = with_table_state(conn, page, record=True)
        assert sorted(d.rejection.offset for d in known if d.id is not None) == sorted(sent.poison)
        assert_dead_letter_rows(database_url, sent)


def assert_dead_letter_rows(url: str, sent: Sent) -> None:
    """One row per undecodable message; its Kafka timestamp when storable, else NULL."""
    rows = _select(
        url,
        "SELECT kafka_offset, message_value, kafka_timestamp, header_keys, error_message"
        " FROM kingest.dead_letters ORDER BY kafka_offset",
    )
    assert [row[0] for row in rows] == sorted(sent.poison)
    for offset, value, stored_at, header_keys, message in rows:
        expected_value, raw, bad_headers = sent.poison[offset]
        assert bytes(value) == expected_value
        if bad_headers:
            assert header_keys == []
            assert "Kafka headers unreadable" in message
            assert "\\xff\\xfeoctets" in message
        else:
            assert raw is not None
            sane = next(ok for ts, ok in TIMESTAMPS.values() if ts == raw)
            assert stored_at == (EPOCH + timedelta(milliseconds=raw) if sane else None)


def test_a_dead_letter_topic_message_with_undecodable_headers_is_not_a_dead_letter(
    kafka_bootstrap: str, database_url: str, topic_factory: Callable[[int], str]
) -> None:
    """`kingest dlq replay --from topic` reads past it (counted as not a dead letter)."""
    dlq_topic = topic_factory(1)
    apply_migrations(database_url)
    letter = DeadLetter(
        Rejection(
            topic="events",
            partition=0,
            offset=3,
            key=None,
            value=b"\xff\x00",
            headers=(),
            kafka_timestamp_ms=2**63 - 1,
            error_stage="decode",
            error_class="invalid_protobuf",
            error_message="bad",
        ),
        "g",
        1,
        datetime.now(UTC),
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(dlq_topic, value=b"\xff\x00", headers=encode_headers(letter), partition=0)
    assert producer.flush(30) == 0
    produce_raw(
        kafka_bootstrap,
        dlq_topic,
        0,
        b"\xff\x00",
        [*BAD_HEADERS, (b"kingest.dlq.source.topic", b"events")],
    )
    assert _high_watermark(kafka_bootstrap, dlq_topic) == 2

    plan = ReplayPlan(source="topic", destination="pipeline", dead_letter_topics=(dlq_topic,))
    summary = replay(
        plan, database_url=database_url, kafka_config={"bootstrap.servers": kafka_bootstrap}
    )
    assert (summary.replayed, summary.not_dead_letters, summary.still_failing) == (1, 1, 1)
    assert _select(
        database_url, "SELECT kafka_offset, kafka_timestamp FROM kingest.dead_letters"
    ) == [(3, None)]
