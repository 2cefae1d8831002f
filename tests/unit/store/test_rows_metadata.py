"""Kafka timestamps PostgreSQL or Python cannot hold, and headers confluent-kafka cannot
decode: the storable timestamp, the safe header accessor, and what rows, dead letters,
``kingest dlq`` and the latency metric make of them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from kingest.deadletters.stored import StoredDeadLetter
from kingest.pipeline.partition import _timestamp_ms
from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import InferenceCompleted, InferenceStatus
from kingest.store.event_ids import derive_event_id
from kingest.store.headers import UnreadableHeaders, message_headers, unreadable_headers
from kingest.store.rows import (
    MAX_STORABLE_TIMESTAMP_MS,
    MIN_STORABLE_TIMESTAMP_MS,
    Rejection,
    RowBatch,
    storable_timestamp_ms,
)
from kingest.store.tables import TABLES_BY_EVENT_TYPE
from kingest.store.write import dead_letter_params
from tests.fakes import FakeRecord
from tests.unit.store.test_rows import NOW, event

NANOSECONDS = 1_796_531_500_597_133_601
NOW_DT = datetime(2026, 11, 28, tzinfo=UTC)
INFERENCES = TABLES_BY_EVENT_TYPE["inference_completed"]


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (None, None),
        (0, 0),
        (-5, -5),
        (-1, None),  # Kafka's "no timestamp", as a CreateTime of -1
        (1_749_999_000_500, 1_749_999_000_500),
        (MIN_STORABLE_TIMESTAMP_MS, MIN_STORABLE_TIMESTAMP_MS),
        (MAX_STORABLE_TIMESTAMP_MS, MAX_STORABLE_TIMESTAMP_MS),
        (MIN_STORABLE_TIMESTAMP_MS - 1, None),
        (MAX_STORABLE_TIMESTAMP_MS + 1, None),
        (NANOSECONDS, None),
        (-(10**14), None),
        (2**63 - 1, None),
        (-(2**63), None),
    ],
)
def test_a_kafka_timestamp_is_stored_only_within_the_years_1_to_9999(
    raw: int | None, stored: int | None
) -> None:
    assert storable_timestamp_ms(raw) == stored


def rejection(timestamp_ms: int | None) -> Rejection:
    return Rejection(
        topic="events",
        partition=0,
        offset=1,
        key=None,
        value=b"\xff",
        headers=(),
        kafka_timestamp_ms=timestamp_ms,
        error_stage="decode",
        error_class="invalid_protobuf",
        error_message="bad",
    )


@pytest.mark.parametrize("raw", [NANOSECONDS, 2**63 - 1, -(2**63), -(10**14)])
def test_a_dead_letter_stores_an_absurd_kafka_timestamp_as_null_and_shows_none(raw: int) -> None:
    assert dead_letter_params(rejection(raw), "g")[7] is None
    letter = StoredDeadLetter(
        id=1, rejection=rejection(raw), consumer_group="g", attempts=1, dead_lettered_at=NOW_DT
    )
    assert letter.as_json()["kafka_timestamp"] is None


def test_the_extreme_storable_timestamps_read_back_as_datetimes() -> None:
    for raw, shown in (
        (MIN_STORABLE_TIMESTAMP_MS, "0001-01-01T00:00:00+00:00"),
        (MAX_STORABLE_TIMESTAMP_MS, "9999-12-31T23:59:59.999000+00:00"),
        (-5, "1969-12-31T23:59:59.995000+00:00"),
    ):
        assert dead_letter_params(rejection(raw), "g")[7] == raw
        letter = StoredDeadLetter(
            id=1, rejection=rejection(raw), consumer_group="g", attempts=1, dead_lettered_at=NOW_DT
        )
        assert letter.as_json()["kafka_timestamp"] == shown


def test_the_latency_ignores_negative_and_future_kafka_timestamps() -> None:
    now_ms = int(time.time() * 1000)
    assert _timestamp_ms(FakeRecord(b"", timestamp=(1, now_ms - 1000))) == now_ms - 1000
    assert _timestamp_ms(FakeRecord(b"", timestamp=(1, now_ms + 5_000))) == now_ms + 5_000
    for value in (-1, -(2**63), NANOSECONDS, 2**63 - 1, now_ms + 86_400_000):
        assert _timestamp_ms(FakeRecord(b"", timestamp=(1, value))) is None
    assert _timestamp_ms(FakeRecord(b"", timestamp=(0, 0))) is None


# --- headers -----------------------------------------------------------------------------


class _BrokenList(list[tuple[str, bytes | None]]):
    """What confluent-kafka's second headers() call returns: a list nobody may touch."""

    def __iter__(self) -> Any:
        raise AssertionError("the broken header list was read")

    def __len__(self) -> int:
        raise AssertionError("the broken header list was read")


class UndecodableHeadersRecord(FakeRecord):
    """A message with a header name that is not UTF-8, as confluent-kafka 2.16 serves it:
    headers() fails once with a SystemError from the UnicodeDecodeError, then returns a
    broken list until set_headers() replaces it."""

    def __init__(self, value: bytes | None, **kwargs: Any) -> None:
        super().__init__(value, **kwargs)
        self.failed = False
        self.replaced: Any = None

    def headers(self) -> Any:
        if self.replaced is not None:
            return self.replaced
        if self.failed:
            return _BrokenList()
        self.failed = True
        try:
            b"\xff\xfename".decode()
        except UnicodeDecodeError as error:
            raise SystemError(
                "<method 'headers'> returned a result with an exception set"
            ) from error
        raise AssertionError("unreachable")

    def set_headers(self, headers: Any) -> None:
        self.replaced = headers


def test_undecodable_headers_read_as_none_with_the_reason_and_are_replaced() -> None:
    record = UndecodableHeadersRecord(b"\xff")
    headers = message_headers(record)
    assert isinstance(headers, UnreadableHeaders)
    assert list(headers) == []
    assert "header name b'\\xff\\xfename' is not UTF-8" in headers.reason
    assert record.replaced is headers
    assert message_headers(record) is headers  # later reads never see the broken list


@pytest.mark.parametrize(
    "bad",
    [set(), {0}, {4}, {1, 2}, {0, 1, 2, 3, 4}, {0, 3}],
    ids=["none", "first", "last", "adjacent", "all", "apart"],
)
def test_a_poll_finds_exactly_its_messages_with_undecodable_headers(bad: set[int]) -> None:
    records: list[FakeRecord] = [
        UndecodableHeadersRecord(b"\xff", offset=100 + i)
        if i in bad
        else FakeRecord(b"\xff", offset=100 + i, headers=[("h", b"v")])
        for i in range(5)
    ]
    found = unreadable_headers(records)
    assert [position for position, _ in found] == sorted(bad)
    for position, headers in found:
        assert getattr(records[position], "replaced", None) is headers
        assert message_headers(records[position]) is headers
    assert unreadable_headers(records) == []  # each is found once


def inference(**fields: Any) -> bytes:
    payload = InferenceCompleted(
        request_id="r-1",
        model_name="m",
        model_version="1",
        environment="prod",
        latency_ms=3.5,
        status=InferenceStatus.INFERENCE_STATUS_OK,
    )
    return encode_event(event(inference_completed=payload, **fields))


def test_a_valid_event_with_undecodable_headers_is_stored() -> None:
    rows = RowBatch(now=NOW)
    rows.add_records(
        [
            UndecodableHeadersRecord(inference(), offset=4),
            UndecodableHeadersRecord(inference(event_id="", correlation_id=""), offset=5),
        ]
    )
    assert rows.rejection_count == 0
    first, second = rows.rows(INFERENCES)
    assert (first["event_id"], first["correlation_id"]) == (event().event_id, "flow-1")
    derived = derive_event_id("events", 3, 5)
    assert (second["event_id"], second["correlation_id"]) == (derived, derived)
    rejected = rows.as_rejected(error_class="DataError", error_message="no")
    assert {r.headers for r in rejected.rejections} == {()}
    assert all("Kafka headers unreadable" in r.error_message for r in rejected.rejections)


def test_an_undecodable_message_with_undecodable_headers_is_dead_lettered_with_the_reason() -> None:
    rows = RowBatch(now=NOW)
    rows.add_records([UndecodableHeadersRecord(b"\xff\x00", offset=9)])
    (dead,) = rows.rejections
    assert (dead.offset, dead.headers, dead.error_stage) == (9, (), "decode")
    assert dead.error_message.endswith(
        "; Kafka headers unreadable (header name b'\\xff\\xfename' is not UTF-8);"
        " none of the message's headers kept"
    )
