"""RowBatch keys a replayed event without event_id by the ORIGINAL message's coordinates."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import Event, MetricLogged
from kingest.store.rows import (
    REPLAY_OF_HEADER,
    RowBatch,
    derive_event_id,
    parse_replay_of,
)
from kingest.store.tables import TABLES_BY_EVENT_TYPE
from tests.fakes import FakeRecord

NOW = 1_750_000_000.0
METRICS = TABLES_BY_EVENT_TYPE["metric_logged"]


def metric(event_id: str = "") -> bytes:
    return encode_event(
        Event(
            event_id=event_id,
            occurred_at=Timestamp(seconds=1_749_999_000),
            source="unit/test",
            metric_logged=MetricLogged(run_id="run-1", key="loss", value=0.5, step=1),
        )
    )


def stored_event_id(**record: Any) -> str:
    batch = RowBatch(now=NOW)
    batch.add_records([FakeRecord(**record)])
    assert batch.rejection_count == 0, batch.rejections
    return str(batch.columns(METRICS)[0][0])


def test_a_replayed_event_without_event_id_takes_the_original_coordinates_key() -> None:
    replayed = stored_event_id(
        value=metric(),
        topic="events",
        partition=2,
        offset=9_000,
        headers=[("correlation-id", b"c"), (REPLAY_OF_HEADER, b"events/2/17")],
    )
    original = stored_event_id(value=metric(), topic="events", partition=2, offset=17)
    assert replayed == original == derive_event_id("events", 2, 17)


def test_a_message_without_the_header_keeps_its_own_coordinates_key() -> None:
    assert stored_event_id(value=metric(), topic="events", partition=1, offset=5) == (
        derive_event_id("events", 1, 5)
    )


def test_the_event_id_of_the_event_wins_over_the_header() -> None:
    own = str(uuid.uuid4())
    headers = [(REPLAY_OF_HEADER, b"events/2/17")]
    assert stored_event_id(value=metric(own), offset=3, headers=headers) == own


@pytest.mark.parametrize("value", [b"", b"events", b"events/x/1", b"events/1", b"/1/2", None])
def test_a_malformed_header_falls_back_to_the_message_coordinates(value: bytes | None) -> None:
    headers = [(REPLAY_OF_HEADER, value)]
    key = stored_event_id(value=metric(), topic="t", partition=0, offset=4, headers=headers)
    assert key == derive_event_id("t", 0, 4)


def test_a_str_header_value_is_read_too() -> None:
    # confluent_kafka's types admit str header values (e.g. from a dict of headers).
    batch = RowBatch(now=NOW)

    class StrHeaders(FakeRecord):
        def headers(self) -> Any:
            return {REPLAY_OF_HEADER: "events/0/1"}

    batch.add_records([StrHeaders(metric(), topic="events", partition=0, offset=99)])
    assert batch.columns(METRICS)[0][0] == derive_event_id("events", 0, 1)


def test_parse_replay_of() -> None:
    assert parse_replay_of(b"ml.events-1/3/42") == ("ml.events-1", 3, 42)
    assert parse_replay_of("t/0/0") == ("t", 0, 0)
    assert parse_replay_of(b"t/0/0/1") is None
    assert parse_replay_of(b"t//1") is None
