"""The dead-letter topic's message layout, its reading back, and its configuration."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from kingest.config.loading import load_settings
from kingest.config.settings import ConfigError
from kingest.deadletters.publisher import (
    ATTEMPTS,
    CORRELATION_ID,
    ERROR_CLASS,
    HEADERS,
    SOURCE_OFFSET,
    SOURCE_TOPIC,
    SQLSTATE,
    TRACEPARENT,
    DeadLetter,
    DeadLetterPublisher,
    DeadLetterPublishError,
    NotADeadLetterError,
    dead_letter_topic,
    decode_message,
    encode_headers,
    is_permanent_publish_error,
)
from kingest.store.rows import Rejection

BASE_ENV = {
    "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "localhost:9092",
    "KINGEST_TOPICS": "events",
    "KINGEST_GROUP_ID": "g",
    "KINGEST_DATABASE_URL": "postgresql://localhost/db",
}
PRODUCER_TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
KINGEST_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def rejection(**changes: object) -> Rejection:
    fields: dict[str, object] = {
        "topic": "events",
        "partition": 3,
        "offset": 41,
        "key": b"k",
        "value": b"\x00\xffnot protobuf",
        "headers": (("traceparent", PRODUCER_TRACEPARENT), ("empty", None), ("x", b"1")),
        "kafka_timestamp_ms": 1_700_000_000_123,
        "error_stage": "write",
        "error_class": "character_not_in_repertoire",
        "error_message": 'invalid byte sequence for encoding "UTF8": 0x00',
        "sqlstate": "22021",
        "event_id": "e-1",
        "event_type": "metric_logged",
        "correlation_id": "corr-1",
    }
    fields.update(changes)
    return Rejection(**fields)  # type: ignore[arg-type]


def dead_letter(**changes: object) -> DeadLetter:
    at = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
    return DeadLetter(rejection(**changes), consumer_group="g", attempts=2, dead_lettered_at=at)


def test_original_headers_come_first_and_unchanged_then_kingests_block() -> None:
    headers = encode_headers(dead_letter(), KINGEST_TRACEPARENT)
    assert headers[:3] == [("traceparent", PRODUCER_TRACEPARENT), ("empty", None), ("x", b"1")]
    assert headers[3] == (SOURCE_TOPIC, b"events")
    ours = dict(headers[3:])
    assert ours[SOURCE_OFFSET] == b"41"
    assert ours[ERROR_CLASS] == b"character_not_in_repertoire"
    assert ours[SQLSTATE] == b"22021"
    assert ours[ATTEMPTS] == b"2"
    assert ours[CORRELATION_ID] == b"corr-1"
    assert headers[-1] == (TRACEPARENT, KINGEST_TRACEPARENT.encode())


@pytest.mark.parametrize("traceparent", [None, KINGEST_TRACEPARENT])
def test_a_dead_letter_reads_back_exactly(traceparent: str | None) -> None:
    original = dead_letter()
    headers = encode_headers(original, traceparent)
    assert decode_message(b"k", original.rejection.value, headers) == original


def test_absent_optional_facts_stay_absent() -> None:
    original = dead_letter(
        sqlstate=None,
        event_id=None,
        event_type=None,
        correlation_id=None,
        kafka_timestamp_ms=None,
        headers=(),
        key=None,
        value=None,
        error_stage="decode",
    )
    headers = encode_headers(original)
    assert SQLSTATE not in dict(headers)
    assert decode_message(None, None, headers) == original


def test_original_headers_named_like_kingests_read_back_as_original_headers() -> None:
    # A producer's own headers may carry kingest's names (or the message may be a dead
    # letter of a dead letter): kingest's block is the last one, and the original
    # headers, the forged ones and all after them, come back unchanged.
    original = dead_letter(
        headers=(
            ("before", b"1"),
            (SOURCE_TOPIC, b"forged"),
            (SQLSTATE, b"forged"),
            ("after", b"2"),
            (SOURCE_TOPIC, None),
        ),
        sqlstate=None,
    )
    assert decode_message(b"k", original.rejection.value, encode_headers(original)) == original


def test_dict_headers_and_text_values_are_accepted() -> None:
    headers = dict(encode_headers(dead_letter(headers=())))
    as_text = {k: v.decode() for k, v in headers.items() if v is not None}
    assert decode_message(b"k", b"v", as_text).rejection.offset == 41


def test_a_message_without_kingests_headers_is_not_a_dead_letter() -> None:
    with pytest.raises(NotADeadLetterError, match=SOURCE_TOPIC):
        decode_message(b"k", b"v", [("x", b"1")])
    with pytest.raises(NotADeadLetterError, match="malformed"):
        decode_message(b"k", b"v", [(SOURCE_TOPIC, b"t"), ("kingest.dlq.source.partition", b"x")])


def test_the_topic_template_names_a_topic_per_source() -> None:
    assert dead_letter_topic("{topic}.dlq", "events") == "events.dlq"
    assert dead_letter_topic("all-dead-letters", "events") == "all-dead-letters"


def test_dead_letter_settings_default_to_the_table() -> None:
    settings = load_settings(BASE_ENV)
    assert settings.dead_letters.store == "table"
    assert settings.dead_letters.to_table
    assert not settings.dead_letters.to_topic


def test_bad_dead_letter_settings_are_all_listed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            BASE_ENV | {"KINGEST_DEAD_LETTER_STORE": "s3", "KINGEST_DEAD_LETTER_TOPIC": "a b"}
        )
    text = str(caught.value)
    assert "KINGEST_DEAD_LETTER_STORE: must be one of table, topic, both" in text
    assert "KINGEST_DEAD_LETTER_TOPIC: 'a b' is not a valid topic name" in text


def test_a_dead_letter_topic_that_is_consumed_would_loop() -> None:
    env = BASE_ENV | {
        "KINGEST_TOPICS": "events,events.dlq",
        "KINGEST_DEAD_LETTER_STORE": "both",
    }
    with pytest.raises(ConfigError, match="dead-letter topic of events is a consumed topic"):
        load_settings(env)


def test_unconfirmed_dead_letters_are_reported_for_retry() -> None:
    # A broker that never answers: nothing is confirmed, all are handed back.
    publisher = DeadLetterPublisher(
        {"bootstrap.servers": "127.0.0.1:1"},
        topic_template="{topic}.dlq",
        consumer_group="g",
        delivery_timeout_s=0.5,
    )
    batch = [rejection(offset=1), rejection(offset=2)]
    with pytest.raises(DeadLetterPublishError, match="2 of 2 dead letters") as caught:
        publisher.publish(batch)
    assert caught.value.unconfirmed == batch
    publisher.close(timeout_s=0.1)


def test_the_dead_letters_page_documents_every_dead_letter_header() -> None:
    page = (Path(__file__).parents[3] / "docs" / "dead-letters.md").read_text()
    for name, meaning in HEADERS.items():
        assert f"| `{name}` | {meaning} |" in page, name


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, True),
        (KafkaError.INVALID_RECORD, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, True),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, True),
        (KafkaError.POLICY_VIOLATION, True),
        (KafkaError._MSG_TIMED_OUT, False),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, False),
        (KafkaError._UNKNOWN_TOPIC, False),
        (KafkaError.NOT_ENOUGH_REPLICAS, False),
        (KafkaError._TRANSPORT, False),
    ],
)
def test_publish_errors_that_can_never_succeed_are_told_apart(code: int, permanent: bool) -> None:
    assert is_permanent_publish_error(KafkaError(code)) is permanent


def test_a_fatal_producer_error_is_permanent() -> None:
    assert is_permanent_publish_error(KafkaError(KafkaError._FATAL, fatal=True))
