"""Idempotency keys of events sent without ``event_id``, and of replayed dead letters.

Idempotency key of a row: the event's ``event_id``, or when empty a UUIDv5 of
``"{topic}/{partition}/{offset}"`` in :data:`DERIVED_EVENT_ID_NAMESPACE`
(:func:`derive_event_id`), so a redelivered message maps to the same key. A dead letter
replayed to its source topic (``kingest dlq replay --to source``) lands at a new offset
but carries a ``kingest.replay.of: topic/partition/offset`` header
(:data:`REPLAY_OF_HEADER`) naming the original message and a ``kingest.replay.digest``
header (:data:`REPLAY_DIGEST_HEADER`, :func:`replay_digest`) binding those coordinates
to the message's key and value; an event without ``event_id`` then takes the key
derived from those ORIGINAL coordinates (:func:`derived_event_id_of`), so however often
it is replayed it maps to the one row the original would have been. The coordinates are
trusted only when both headers appear once, are well formed and the digest matches the
message (:func:`verified_replay_of`): headers forwarded onto another message, a digest
alone, repeated or malformed headers leave the message its own coordinates' key, so two
different messages never share a derived key by accident. (A producer can always
choose any ``event_id``, a derived one included: the digest is no defence against a
producer that wants a collision.) Headers are only read when ``event_id`` is empty,
which keeps the common case off this lookup.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Final, Protocol

from kingest.store.headers import Headers, header_pairs, message_headers

__all__ = [
    "DERIVED_EVENT_ID_NAMESPACE",
    "REPLAY_DIGEST_HEADER",
    "REPLAY_OF_HEADER",
    "derive_event_id",
    "derived_event_id_of",
    "parse_replay_of",
    "replay_digest",
    "verified_replay_of",
]

#: Namespace of the event ids derived from Kafka coordinates. Fixed forever: changing
#: it would give a redelivered message a new key, hence a duplicate row.
DERIVED_EVENT_ID_NAMESPACE: Final = uuid.UUID("a76e5044-6f7d-476d-84a6-2998463a6357")
#: Header of a replayed dead letter naming its original message: ``topic/partition/offset``.
REPLAY_OF_HEADER: Final = "kingest.replay.of"
#: Header of a replayed dead letter: :func:`replay_digest` of the original coordinates
#: and the message's key and value, as lower-case hex.
REPLAY_DIGEST_HEADER: Final = "kingest.replay.digest"
_REPLAY_DIGEST_DOMAIN: Final = b"kingest.replay.v1"
#: ``topic/partition/offset`` in canonical form: a legal Kafka topic name, an int32
#: partition and an int64 offset, non-negative, in ASCII digits without sign, padding
#: or leading zeros (the range is checked after the match).
_REPLAY_OF: Final = re.compile(rb"([A-Za-z0-9._-]{1,249})/(0|[1-9][0-9]{0,9})/(0|[1-9][0-9]{0,18})")
_MAX_PARTITION: Final = 2**31 - 1
_MAX_OFFSET: Final = 2**63 - 1


class _Replayable(Protocol):
    """What deriving a key reads from a Kafka message (``KafkaRecord`` fits)."""

    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...


def derive_event_id(topic: str | None, partition: int | None, offset: int | None) -> str:
    """The idempotency key of an event sent without ``event_id``: stable per message."""
    return str(uuid.uuid5(DERIVED_EVENT_ID_NAMESPACE, f"{topic}/{partition}/{offset}"))


def parse_replay_of(value: str | bytes) -> tuple[str, int, int] | None:
    """A :data:`REPLAY_OF_HEADER` value ``"topic/partition/offset"`` as a tuple, or None
    unless it is in the canonical form kingest writes (see :data:`_REPLAY_OF`).

    Topic names cannot contain ``/``, so the split is unambiguous.
    """
    raw = value.encode("utf-8", "replace") if isinstance(value, str) else value
    match = _REPLAY_OF.fullmatch(raw)
    if match is None:
        return None
    partition, offset = int(match[2]), int(match[3])
    if partition > _MAX_PARTITION or offset > _MAX_OFFSET:
        return None
    return match[1].decode("ascii"), partition, offset


def replay_digest(original: tuple[str, int, int], key: bytes | None, value: bytes | None) -> str:
    """The :data:`REPLAY_DIGEST_HEADER` value of a message replaying ``original`` with
    this key and value: hex SHA-256 of a domain tag, then of the coordinates
    ``topic/partition/offset``, the key and the value, each framed as ``0x00`` when null,
    else ``0x01``, its length (8 bytes, big-endian) and its bytes."""
    digest = hashlib.sha256(_REPLAY_DIGEST_DOMAIN)
    topic, partition, offset = original
    for part in (f"{topic}/{partition}/{offset}".encode(), key, value):
        if part is None:
            digest.update(b"\x00")
        else:
            digest.update(b"\x01" + len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def verified_replay_of(
    headers: Headers | None, key: bytes | None, value: bytes | None
) -> tuple[str, int, int] | None:
    """The original coordinates a replayed message names, or None unless its headers
    prove them: exactly one well-formed :data:`REPLAY_OF_HEADER` and exactly one
    :data:`REPLAY_DIGEST_HEADER` equal to :func:`replay_digest` of those coordinates and
    this key and value."""
    named: list[str | bytes | None] = []
    digests: list[str | bytes | None] = []
    for name, header in header_pairs(headers):
        if name == REPLAY_OF_HEADER:
            named.append(header)
        elif name == REPLAY_DIGEST_HEADER:
            digests.append(header)
    if len(named) != 1 or len(digests) != 1 or named[0] is None or digests[0] is None:
        return None
    original = parse_replay_of(named[0])
    if original is None:
        return None
    # The digest is no secret (anyone can compute it): a plain comparison will do, and
    # anything but the exact lower-case hex of the expected digest differs from it.
    claimed = digests[0] if isinstance(digests[0], bytes) else digests[0].encode("utf-8", "replace")
    return original if claimed == replay_digest(original, key, value).encode() else None


def derived_event_id_of(
    record: _Replayable, topic: str | None, partition: int | None, offset: int | None
) -> str:
    """The key of an event without ``event_id``: from the original coordinates of a
    replayed dead letter whose replay headers check out, else from its own."""
    original = verified_replay_of(message_headers(record), record.key(), record.value())
    if original is not None:
        return derive_event_id(*original)
    return derive_event_id(topic, partition, offset)
