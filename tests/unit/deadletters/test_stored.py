"""Pure logic of `kingest dlq`: times, references, filters, hex dumps, replay headers,
the rate limiter and today's verdict on a dead letter."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kingest.deadletters.inspect import ReplayRecord, hexdump, judge_now
from kingest.deadletters.publisher import DeadLetter
from kingest.deadletters.replay import RateLimiter, ReplayPlan, replay_headers
from kingest.deadletters.stored import (
    DeadLetterFilter,
    DlqInputError,
    StoredDeadLetter,
    parse_reference,
    parse_time,
)
from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import Event, InferenceCompleted, InferenceStatus
from kingest.store.event_ids import (
    REPLAY_DIGEST_HEADER,
    REPLAY_OF_HEADER,
    derive_event_id,
    replay_digest,
    verified_replay_of,
)
from kingest.store.rows import Rejection

NOW = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)


def rejection(**fields: object) -> Rejection:
    values: dict[str, object] = {
        "topic": "events",
        "partition": 1,
        "offset": 7,
        "key": b"k",
        "value": b"\x0a\x03abc",
        "headers": (("correlation-id", b"flow-9"),),
        "kafka_timestamp_ms": 1_764_300_000_000,
        "error_stage": "validate",
        "error_class": "invalid_uuid",
        "error_message": "event_id is not a UUID",
    }
    values.update(fields)
    return Rejection(**values)  # type: ignore[arg-type]


def dead_letter(**fields: object) -> StoredDeadLetter:
    return StoredDeadLetter(
        id=1,
        rejection=rejection(**fields),
        consumer_group="g",
        attempts=1,
        dead_lettered_at=NOW - timedelta(hours=1),
    )


# --- times and references ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T10:00:00Z", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27T12:00:00+02:00", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27T10:00:00", datetime(2026, 11, 27, 10, tzinfo=UTC)),  # naive is UTC
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
        ("2h", NOW - timedelta(hours=2)),
        ("30s", NOW - timedelta(seconds=30)),
        ("1h30m", NOW - timedelta(minutes=90)),
        (" 7d ", NOW - timedelta(days=7)),
        ("1w", NOW - timedelta(weeks=1)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text, now=NOW)
    assert parsed == expected
    assert parsed.tzinfo is not None


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "", "2026-13-01", "-2h", "5y"])
def test_a_bad_time_is_an_input_error_naming_it(text: str) -> None:
    with pytest.raises(DlqInputError, match="is not a time"):
        parse_time(text, now=NOW)


def test_parse_reference() -> None:
    assert parse_reference("42") == 42
    assert parse_reference("ml.events-1:3:1200") == ("ml.events-1", 3, 1200)
    for bad in ("x", "t:1", "t:a:1", "t:1:2:3", "-1"):
        with pytest.raises(DlqInputError, match="TOPIC:PARTITION:OFFSET"):
            parse_reference(bad)


# --- filters -----------------------------------------------------------------------------


def test_a_filter_in_python_agrees_with_its_criteria() -> None:
    letter = dead_letter(event_type="inference_completed")
    assert DeadLetterFilter().matches(letter)
    assert DeadLetterFilter(since=NOW - timedelta(hours=2), until=NOW).matches(letter)
    assert not DeadLetterFilter(since=NOW - timedelta(minutes=30)).matches(letter)
    assert not DeadLetterFilter(until=NOW - timedelta(hours=2)).matches(letter)
    assert DeadLetterFilter(error_classes=("x", "invalid_uuid")).matches(letter)
    assert not DeadLetterFilter(error_classes=("x",)).matches(letter)
    assert DeadLetterFilter(stage="validate", topic="events").matches(letter)
    assert not DeadLetterFilter(stage="decode").matches(letter)
    assert not DeadLetterFilter(topic="other").matches(letter)
    assert not DeadLetterFilter(event_type="metric_logged").matches(letter)


def test_the_sql_condition_has_one_parameter_per_criterion() -> None:
    condition, params = DeadLetterFilter(
        since=NOW, error_classes=("a", "b"), stage="write", topic="t"
    ).where()
    assert params == [NOW, ["a", "b"], "write", "t"]
    assert "error_class = ANY" in repr(condition)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stage": "decoding"}, "--stage must be one of decode, validate, write"),
        ({"limit": 0}, "--limit must be at least 1"),
        ({"since": NOW, "until": NOW}, "--since must be before --until"),
    ],
)
def test_bad_filters_are_input_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(DlqInputError, match=message):
        DeadLetterFilter(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source": "kafka"}, "--from must be one of table, topic"),
        ({"destination": "db"}, "--to must be one of source, pipeline"),
        ({"source": "topic"}, "needs at least one dead-letter topic"),
        ({"rate": 0.0}, "--rate must be positive"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
    ],
)
def test_bad_plans_are_input_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(DlqInputError, match=message):
        ReplayPlan(**fields)  # type: ignore[arg-type]


# --- inspecting ----------------------------------------------------------------------------


def test_hexdump_lines_show_offset_hex_and_printable_text() -> None:
    lines = hexdump(bytes(range(60, 80))).splitlines()
    assert lines == [
        "00000000  3c 3d 3e 3f 40 41 42 43 44 45 46 47 48 49 4a 4b  |<=>?@ABCDEFGHIJK|",
        "00000010  4c 4d 4e 4f                                      |LMNO|",
    ]
    assert hexdump(b"\x00\xff") == "00000000  00 ff" + " " * 42 + "  |..|"
    cut = hexdump(b"a" * 40, limit=16).splitlines()
    assert cut[-1] == "... 24 more bytes"
    assert len(cut) == 2
    assert hexdump(b"") == ""


def inference(event_id: str = "", model: str = "m") -> bytes:
    return encode_event(
        Event(
            event_id=event_id,
            occurred_at=Timestamp(seconds=int(datetime.now(UTC).timestamp()) - 60),
            source="unit/test",
            inference_completed=InferenceCompleted(
                model_name=model, status=InferenceStatus.INFERENCE_STATUS_OK
            ),
        )
    )


def test_the_verdict_of_a_valid_value_names_its_table_and_original_key() -> None:
    verdict = judge_now(dead_letter(value=inference()))
    assert verdict.rejection is None
    assert verdict.table == "inferences"
    assert verdict.event_id == derive_event_id("events", 1, 7)
    assert json.loads(verdict.event_json or "")["inference_completed"]["model_name"] == "m"


def test_the_verdict_of_an_invalid_event_renders_it_and_gives_todays_error() -> None:
    verdict = judge_now(dead_letter(value=inference(event_id="not-a-uuid")))
    assert verdict.rejection is not None
    assert (verdict.rejection.error_stage, verdict.rejection.error_class) == (
        "validate",
        "invalid_uuid",
    )
    assert json.loads(verdict.event_json or "")["event_id"] == "not-a-uuid"


def test_the_verdict_of_garbage_is_a_decode_failure_without_json() -> None:
    for value in (b"\xff\xfe garbage", None):
        verdict = judge_now(dead_letter(value=value))
        assert verdict.event_json is None
        assert verdict.rejection is not None
        assert verdict.rejection.error_stage == "decode"


def test_a_replay_record_reads_as_the_original_kafka_message() -> None:
    record = ReplayRecord(rejection())
    assert (record.topic(), record.partition(), record.offset()) == ("events", 1, 7)
    assert record.headers() == [("correlation-id", b"flow-9")]
    assert record.timestamp() == (1, 1_764_300_000_000)
    assert ReplayRecord(rejection(kafka_timestamp_ms=None)).timestamp() == (0, 0)


def test_a_topic_dead_letter_becomes_a_stored_one_without_id() -> None:
    letter = StoredDeadLetter.from_topic(DeadLetter(rejection(), "g", 3, NOW))
    assert (letter.id, letter.attempts, letter.pending) == (None, 3, True)
    assert letter.coordinates == "events:1:7"
    data = letter.as_json(with_content=True)
    assert data["value_base64"] == "CgNhYmM="
    assert data["headers"] == [{"key": "correlation-id", "value_base64": "Zmxvdy05"}]


# --- replaying ---------------------------------------------------------------------------


def digest_of(original: tuple[str, int, int], key: bytes = b"k") -> bytes:
    return replay_digest(original, key, b"\x0a\x03abc").encode()


def test_replay_headers_keep_the_originals_and_name_the_original_message() -> None:
    assert replay_headers(rejection()) == [
        ("correlation-id", b"flow-9"),
        (REPLAY_OF_HEADER, b"events/1/7"),
        (REPLAY_DIGEST_HEADER, digest_of(("events", 1, 7))),
    ]
    assert verified_replay_of(replay_headers(rejection()), b"k", b"\x0a\x03abc") == (
        "events",
        1,
        7,
    )


def test_a_dead_letter_of_a_replay_keeps_naming_the_first_original() -> None:
    headers = (
        ("a", b"1"),
        (REPLAY_OF_HEADER, b"events/0/3"),
        (REPLAY_DIGEST_HEADER, digest_of(("events", 0, 3))),
    )
    again = rejection(topic="events", partition=0, offset=500, headers=headers)
    assert replay_headers(again) == list(headers)


@pytest.mark.parametrize(
    "headers",
    [
        ((REPLAY_OF_HEADER, b"junk"), ("b", None)),
        ((REPLAY_OF_HEADER, b"events/0/3"), ("b", None)),  # no digest: not proven
        ((REPLAY_DIGEST_HEADER, digest_of(("events", 1, 7))), ("b", None)),  # digest alone
        # Forwarded from another message: the digest is of other content.
        (
            (REPLAY_OF_HEADER, b"events/0/3"),
            (REPLAY_DIGEST_HEADER, digest_of(("events", 0, 3), key=b"other")),
            ("b", None),
        ),
    ],
    ids=["malformed", "no-digest", "digest-alone", "forwarded"],
)
def test_replay_headers_that_do_not_check_out_are_replaced(
    headers: tuple[tuple[str, bytes | None], ...],
) -> None:
    # The pipeline keyed such a message by its own coordinates: its replay must too.
    again = rejection(headers=headers)
    assert replay_headers(again) == [
        ("b", None),
        (REPLAY_OF_HEADER, b"events/1/7"),
        (REPLAY_DIGEST_HEADER, digest_of(("events", 1, 7))),
    ]


class FakeClock:
    """Time that only moves when the limiter sleeps; records the items let through."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_rate_limiter_lets_at_most_rate_items_through_per_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep)
    passed_at = []
    for _ in range(10):
        limiter.wait()
        passed_at.append(clock.now - 100.0)
    # Item i goes at i / rate: never more than rate * t + 1 items by time t.
    assert passed_at == pytest.approx([i / 4 for i in range(10)])
    for count, moment in enumerate(passed_at, start=1):
        assert count <= 4 * moment + 1


def test_a_late_limiter_catches_up_without_sleeping_and_no_rate_never_sleeps() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    limiter.wait()
    clock.now += 1.0  # the work between items took a second: ten items are due
    for _ in range(10):
        limiter.wait()
    assert clock.sleeps == []
    limiter.wait()
    assert clock.sleeps == [pytest.approx(0.1)]
    unlimited = RateLimiter(None, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        unlimited.wait()
    assert len(clock.sleeps) == 1
