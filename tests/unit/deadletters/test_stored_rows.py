"""RowBatch keys a replayed event without event_id by the ORIGINAL message's coordinates,
when the replay headers prove that the message is that original's content."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import Event, MetricLogged
from kingest.store.event_ids import (
    REPLAY_DIGEST_HEADER,
    REPLAY_OF_HEADER,
    derive_event_id,
    parse_replay_of,
    replay_digest,
    verified_replay_of,
)
from kingest.store.rows import RowBatch
from kingest.store.tables import TABLES_BY_EVENT_TYPE
from tests.fakes import FakeRecord

NOW = 1_750_000_000.0
METRICS = TABLES_BY_EVENT_TYPE["metric_logged"]


def metric(event_id: str = "", *, value: float = 0.5) -> bytes:
    return encode_event(
        Event(
            event_id=event_id,
            occurred_at=Timestamp(seconds=1_749_999_000),
            source="unit/test",
            metric_logged=MetricLogged(run_id="run-1", key="loss", value=value, step=1),
        )
    )


def replay_of(
    original: str, value: bytes, key: bytes | None = b"key"
) -> list[tuple[str, bytes | None]]:
    """The headers `kingest dlq replay --to source` gives the message (key, value)."""
    topic, partition, offset = original.split("/")
    digest = replay_digest((topic, int(partition), int(offset)), key, value)
    return [(REPLAY_OF_HEADER, original.encode()), (REPLAY_DIGEST_HEADER, digest.encode())]


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
        headers=[("correlation-id", b"c"), *replay_of("events/2/17", metric())],
    )
    original = stored_event_id(value=metric(), topic="events", partition=2, offset=17)
    assert replayed == original == derive_event_id("events", 2, 17)


def test_a_message_without_the_header_keeps_its_own_coordinates_key() -> None:
    # Fixed forever: a redelivery across an upgrade must map to the same row.
    namespace = uuid.UUID("a76e5044-6f7d-476d-84a6-2998463a6357")
    expected = str(uuid.uuid5(namespace, "events/1/5"))
    assert stored_event_id(value=metric(), topic="events", partition=1, offset=5) == expected
    assert derive_event_id("events", 1, 5) == expected


def test_different_messages_with_forwarded_replay_headers_keep_their_own_keys() -> None:
    # Header-forwarding middleware copies a replay's headers onto other messages: none
    # of them is the replayed content, so each keeps the key of its own coordinates.
    forwarded = replay_of("events/2/17", metric())
    first = stored_event_id(
        value=metric(value=1.0), topic="events", partition=2, offset=40, headers=forwarded
    )
    second = stored_event_id(
        value=metric(value=2.0), topic="events", partition=2, offset=41, headers=forwarded
    )
    assert (first, second) == (derive_event_id("events", 2, 40), derive_event_id("events", 2, 41))


def test_the_digest_binds_the_key_too() -> None:
    headers = replay_of("events/2/17", metric(), key=b"model-a")
    for key in (b"model-b", b"", None):
        assert stored_event_id(
            value=metric(), key=key, partition=2, offset=40, headers=headers
        ) == derive_event_id("events", 2, 40)
    assert stored_event_id(
        value=metric(), key=b"model-a", partition=2, offset=40, headers=headers
    ) == derive_event_id("events", 2, 17)


def test_a_null_key_and_an_empty_key_are_different_content() -> None:
    original = ("events", 2, 17)
    assert replay_digest(original, None, b"v") != replay_digest(original, b"", b"v")
    assert replay_digest(original, b"v", None) != replay_digest(original, None, b"v")
    assert replay_digest(original, b"ab", b"c") != replay_digest(original, b"a", b"bc")


def test_the_digest_is_sha256_of_the_framed_coordinates_key_and_value() -> None:
    # The format is shared by every kingest version that reads or writes the header.
    def frame(part: bytes | None) -> bytes:
        return b"\x00" if part is None else b"\x01" + len(part).to_bytes(8, "big") + part

    framed = b"kingest.replay.v1" + frame(b"events/2/17") + frame(None) + frame(b"value")
    assert replay_digest(("events", 2, 17), None, b"value") == hashlib.sha256(framed).hexdigest()


def test_a_replay_header_without_its_digest_is_not_trusted() -> None:
    headers = [(REPLAY_OF_HEADER, b"events/2/17")]
    key = stored_event_id(value=metric(), partition=2, offset=40, headers=headers)
    assert key == derive_event_id("events", 2, 40)


def test_a_digest_without_the_replay_header_is_ignored() -> None:
    headers = replay_of("events/2/17", metric())[1:]
    key = stored_event_id(value=metric(), partition=2, offset=40, headers=headers)
    assert key == derive_event_id("events", 2, 40)


@pytest.mark.parametrize(
    "extra",
    [
        [(REPLAY_OF_HEADER, b"events/2/18")],  # two originals named
        [(REPLAY_OF_HEADER, b"events/2/17")],  # the same one twice
        [(REPLAY_DIGEST_HEADER, b"0" * 64)],  # two digests
    ],
    ids=["two-originals", "same-original-twice", "two-digests"],
)
def test_repeated_replay_headers_are_not_trusted(extra: list[tuple[str, bytes]]) -> None:
    headers = [*replay_of("events/2/17", metric()), *extra]
    key = stored_event_id(value=metric(), partition=2, offset=40, headers=headers)
    assert key == derive_event_id("events", 2, 40)


@pytest.mark.parametrize(
    "digest",
    [None, b"", b"zz" * 32, b"0" * 63, b"not hex at all"],
    ids=["null", "empty", "not-hex", "short", "text"],
)
def test_a_malformed_digest_is_not_trusted(digest: bytes | None) -> None:
    headers = [(REPLAY_OF_HEADER, b"events/2/17"), (REPLAY_DIGEST_HEADER, digest)]
    key = stored_event_id(value=metric(), partition=2, offset=40, headers=headers)
    assert key == derive_event_id("events", 2, 40)


def test_an_upper_case_digest_is_not_trusted() -> None:
    of, (name, digest) = replay_of("events/2/17", metric())
    assert digest is not None
    headers = [of, (name, digest.upper())]
    key = stored_event_id(value=metric(), partition=2, offset=40, headers=headers)
    assert key == derive_event_id("events", 2, 40)


def test_the_event_id_of_the_event_wins_over_the_header() -> None:
    own = str(uuid.uuid4())
    headers = replay_of("events/2/17", metric(own))
    assert stored_event_id(value=metric(own), offset=3, headers=headers) == own


MALFORMED_REPLAY_OF = [
    b"",
    b"events",
    b"events/x/1",
    b"events/1",
    b"/1/2",
    b"events/-1/2",
    b"events/1/+2",
    b"events/01/2",
    b"events/ 1/2",
    b"events/1/2 ",
    b"ev ents/1/2",
    "events/\u0661/2".encode(),  # an Arabic-Indic one, which int() would take
    b"events/1/\xff",
    b"events/2147483648/1",  # beyond a Kafka partition
]


@pytest.mark.parametrize("value", [*MALFORMED_REPLAY_OF, None])
def test_a_malformed_header_falls_back_to_the_message_coordinates(value: bytes | None) -> None:
    # Even with a digest over what the value would mean to a lenient parser.
    digest = replay_digest(("events", 1, 2), b"key", metric()).encode()
    headers = [(REPLAY_OF_HEADER, value), (REPLAY_DIGEST_HEADER, digest)]
    key = stored_event_id(value=metric(), topic="t", partition=0, offset=4, headers=headers)
    assert key == derive_event_id("t", 0, 4)


def test_a_str_header_value_is_read_too() -> None:
    # confluent_kafka's types admit str header values (e.g. from a dict of headers).
    batch = RowBatch(now=NOW)

    class StrHeaders(FakeRecord):
        def headers(self) -> Any:
            digest = replay_digest(("events", 0, 1), b"key", metric())
            return {REPLAY_OF_HEADER: "events/0/1", REPLAY_DIGEST_HEADER: digest}

    batch.add_records([StrHeaders(metric(), topic="events", partition=0, offset=99)])
    assert batch.columns(METRICS)[0][0] == derive_event_id("events", 0, 1)


def test_parse_replay_of() -> None:
    assert parse_replay_of(b"ml.events-1/3/42") == ("ml.events-1", 3, 42)
    assert parse_replay_of("t/0/0") == ("t", 0, 0)
    assert parse_replay_of(b"t/0/0/1") is None
    assert parse_replay_of(b"t//1") is None
    for value in MALFORMED_REPLAY_OF:
        assert parse_replay_of(value) is None, value


def test_verified_replay_of_reads_dead_letter_headers_too() -> None:
    headers = tuple(replay_of("events/2/17", b"v", key=None))
    assert verified_replay_of(headers, None, b"v") == ("events", 2, 17)
    assert verified_replay_of(headers, None, b"w") is None
    assert verified_replay_of(None, None, b"v") is None
