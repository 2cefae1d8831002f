"""Dead letters after the fact: select, inspect and replay them (``kingest dlq``).

Dead letters live in ``kingest.dead_letters`` (one row per source message, unique on
its Kafka coordinates) and, when ``KINGEST_DEAD_LETTER_STORE`` includes ``topic``, on a
dead-letter topic (:mod:`kingest.deadletters.publisher`). This module reads both, and replays
them to one of two destinations:

* ``source``: produce the original key, value and headers back to the source topic and
  partition, plus a ``kingest.replay.of: topic/partition/offset`` header naming the
  original message and a ``kingest.replay.digest`` header binding those coordinates to
  the key and value, for the running pipeline to store. The copy lands at a new offset;
  :class:`kingest.store.rows.RowBatch` gives an event without ``event_id`` the key
  derived from the header's ORIGINAL coordinates when the digest matches, so any number
  of replays map to the one row the original would have been.
* ``pipeline``: decode, validate, map and :func:`~kingest.store.write.write_batch`
  directly, in batches, with the dead letter's own (original) coordinates, bisecting a
  batch PostgreSQL rejects as the writers do. Facts are written ``ON CONFLICT DO
  NOTHING``, so replaying twice stores once.

Every replay is recorded on the dead letter's row (``sql/0004_dead_letter_replays.sql``:
``replayed_at``, ``replay_count``, ``last_replay_outcome``). A dead letter whose last
replay succeeded is skipped unless ``again``; one that failed again keeps its row, with
``attempts + 1`` and the new error, and stays pending. Dead letters read from the topic
are first added to the table when they are not in it yet (a no-op for those that are),
so that the table is the one ledger of what was replayed.

Writing the facts and recording the outcome are two transactions: a crash between them
leaves the dead letter pending and a later replay finds its rows already stored (counted
as duplicates), so nothing is stored twice.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from google.protobuf import json_format
from psycopg import sql

from kingest.deadletters.publisher import DeadLetter, NotADeadLetterError, decode_message
from kingest.schema import DecodeError, decode_event
from kingest.schema.v1.events_pb2 import Event
from kingest.store import (
    REPLAY_DIGEST_HEADER,
    REPLAY_OF_HEADER,
    ErrorKind,
    Rejection,
    RowBatch,
    classify_db_error,
    first_line,
    is_schema_error,
    message_headers,
    replay_digest,
    sqlstate_of,
    storable_timestamp_ms,
    verified_replay_of,
    write_batch,
)

__all__ = [
    "STAGES",
    "DeadLetterFilter",
    "DeadLetterNotFoundError",
    "DlqError",
    "DlqInputError",
    "RateLimiter",
    "ReplayPlan",
    "ReplayRecord",
    "ReplaySummary",
    "StoredDeadLetter",
    "Verdict",
    "count_dead_letters",
    "count_to_replay",
    "get_dead_letter",
    "hexdump",
    "judge_now",
    "list_dead_letters",
    "parse_reference",
    "parse_time",
    "replay",
    "replay_headers",
    "summarize",
]

STAGES: Final = ("decode", "validate", "write")
SOURCES: Final = ("table", "topic")
DESTINATIONS: Final = ("source", "pipeline")

#: A relative time: a number and a unit, several allowed (``90m``, ``1h30m``, ``2d``).
_RELATIVE_PART: Final = re.compile(r"(\d+)\s*([smhdw])")
_RELATIVE: Final = re.compile(r"(\s*\d+\s*[smhdw])+\s*")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_REFERENCE: Final = re.compile(r"(?P<topic>[A-Za-z0-9._-]+):(?P<partition>\d+):(?P<offset>\d+)")
_CREATE_TIME: Final = 1  # confluent_kafka.TIMESTAMP_CREATE_TIME
_NO_TIMESTAMP: Final = 0


class DlqError(RuntimeError):
    """The command could not do its work (broker, topic or database trouble)."""


class DlqInputError(ValueError):
    """The user's input is wrong (bad time, unknown dead letter...): exit code 2."""


class DeadLetterNotFoundError(DlqInputError):
    """No dead letter has that id or those coordinates."""


# --------------------------------------------------------------------------- input


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (naive means UTC) or a relative ``2h`` ago.

    Relative times count back from ``now``: ``30s``, ``15m``, ``2h``, ``7d``, ``1w``, or
    combinations such as ``1h30m``.
    """
    value = text.strip()
    if _RELATIVE.fullmatch(value):
        seconds = sum(
            int(amount) * _UNIT_SECONDS[unit] for amount, unit in _RELATIVE_PART.findall(value)
        )
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise DlqInputError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-28T04:00:00Z) or a relative "
            "time such as 30m, 2h, 7d"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


Reference = int | tuple[str, int, int]


def parse_reference(text: str) -> Reference:
    """A dead letter's id (``42``) or its source coordinates (``topic:partition:offset``)."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    match = _REFERENCE.fullmatch(value)
    if match is None:
        raise DlqInputError(
            f"{text!r} is neither a dead-letter id nor TOPIC:PARTITION:OFFSET coordinates"
        )
    return match["topic"], int(match["partition"]), int(match["offset"])


# --------------------------------------------------------------------------- the model


@attrs.frozen
class StoredDeadLetter:
    """A dead letter with its replay history; ``id`` is None for one only on a topic."""

    id: int | None
    rejection: Rejection
    consumer_group: str | None
    attempts: int
    dead_lettered_at: datetime
    replayed_at: datetime | None = None
    replay_count: int = 0
    last_replay_outcome: str | None = None
    #: Why it is not on the dead-letter topic (the topic did not take it), if so.
    publish_error: str | None = None

    @property
    def coordinates(self) -> str:
        r = self.rejection
        return f"{r.topic}:{r.partition}:{r.offset}"

    @property
    def pending(self) -> bool:
        """Not yet replayed successfully (never replayed, or the last replay failed)."""
        return self.last_replay_outcome in (None, "failed")

    @classmethod
    def from_topic(cls, dead_letter: DeadLetter) -> StoredDeadLetter:
        return cls(
            id=None,
            rejection=dead_letter.rejection,
            consumer_group=dead_letter.consumer_group,
            attempts=dead_letter.attempts,
            dead_lettered_at=dead_letter.dead_lettered_at,
        )

    def as_json(self, *, with_content: bool = False) -> dict[str, Any]:
        """JSON-ready fields; ``with_content`` adds key, value (base64) and headers."""
        r = self.rejection
        data: dict[str, Any] = {
            "id": self.id,
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "kafka_timestamp": _iso(_from_epoch_ms(r.kafka_timestamp_ms)),
            "error_stage": r.error_stage,
            "error_class": r.error_class,
            "error_message": r.error_message,
            "sqlstate": r.sqlstate,
            "event_id": r.event_id,
            "event_type": r.event_type,
            "correlation_id": r.correlation_id,
            "consumer_group": self.consumer_group,
            "attempts": self.attempts,
            "dead_lettered_at": _iso(self.dead_lettered_at),
            "replayed_at": _iso(self.replayed_at),
            "replay_count": self.replay_count,
            "last_replay_outcome": self.last_replay_outcome,
            "publish_error": self.publish_error,
            "value_size": None if r.value is None else len(r.value),
        }
        if with_content:
            data["key_base64"] = _b64(r.key)
            data["value_base64"] = _b64(r.value)
            data["headers"] = [{"key": k, "value_base64": _b64(v)} for k, v in r.headers]
        return data


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _from_epoch_ms(ms: int | None) -> datetime | None:
    """A Kafka timestamp as a datetime; None when it has none a datetime can hold."""
    storable = storable_timestamp_ms(ms)
    return None if storable is None else _EPOCH + timedelta(milliseconds=storable)


# --------------------------------------------------------------------------- filters


@attrs.frozen
class DeadLetterFilter:
    """Which dead letters a command applies to; every criterion given must hold."""

    since: datetime | None = None
    until: datetime | None = None
    error_classes: tuple[str, ...] = ()
    event_type: str | None = None
    stage: str | None = None
    topic: str | None = None
    limit: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.stage is not None and self.stage not in STAGES:
            raise DlqInputError(f"--stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if self.limit is not None and self.limit < 1:
            raise DlqInputError(f"--limit must be at least 1, not {self.limit}")
        if self.since and self.until and self.since >= self.until:
            raise DlqInputError("--since must be before --until")

    def where(self) -> tuple[sql.Composable, list[Any]]:
        """The SQL condition (on ``kingest.dead_letters``) and its parameters."""
        clauses: list[sql.Composable] = [sql.SQL("true")]
        params: list[Any] = []
        for condition, value in (
            ("dead_lettered_at >= %s", self.since),
            ("dead_lettered_at < %s", self.until),
            ("error_class = ANY(%s)", list(self.error_classes) or None),
            ("event_type = %s", self.event_type),
            ("error_stage = %s", self.stage),
            ("kafka_topic = %s", self.topic),
        ):
            if value is not None:
                clauses.append(sql.SQL(condition))
                params.append(value)
        return sql.SQL(" AND ").join(clauses), params

    def matches(self, dead_letter: StoredDeadLetter) -> bool:
        """The same condition in Python, for dead letters read from a topic."""
        r = dead_letter.rejection
        at = dead_letter.dead_lettered_at
        return (
            (self.since is None or at >= self.since)
            and (self.until is None or at < self.until)
            and (not self.error_classes or r.error_class in self.error_classes)
            and (self.event_type is None or r.event_type == self.event_type)
            and (self.stage is None or r.error_stage == self.stage)
            and (self.topic is None or r.topic == self.topic)
        )


# --------------------------------------------------------------------------- the table

_SELECT: Final = sql.SQL(
    "SELECT id, kafka_topic, kafka_partition, kafka_offset, message_key, message_value, "
    "header_keys, header_values, "
    "(extract(epoch FROM kafka_timestamp) * 1000)::int8, "
    "error_stage, error_class, error_message, sqlstate, event_id, event_type, "
    "correlation_id, consumer_group, attempts, dead_lettered_at, "
    "replayed_at, replay_count, last_replay_outcome, publish_error "
    "FROM kingest.dead_letters"
)
_PENDING: Final = sql.SQL("(last_replay_outcome IS NULL OR last_replay_outcome = 'failed')")


def _from_row(row: Sequence[Any]) -> StoredDeadLetter:
    (
        id_,
        topic,
        partition,
        offset,
        key,
        value,
        header_keys,
        header_values,
        timestamp_ms,
        stage,
        error_class,
        message,
        sqlstate,
        event_id,
        event_type,
        correlation_id,
        group,
        attempts,
        dead_lettered_at,
        replayed_at,
        replay_count,
        outcome,
        publish_error,
    ) = row
    rejection = Rejection(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=tuple(zip(header_keys, header_values, strict=True)),
        kafka_timestamp_ms=timestamp_ms,
        error_stage=stage,
        error_class=error_class,
        error_message=message,
        sqlstate=sqlstate,
        event_id=event_id,
        event_type=event_type,
        correlation_id=correlation_id,
    )
    return StoredDeadLetter(
        id=id_,
        rejection=rejection,
        consumer_group=group,
        attempts=attempts,
        dead_lettered_at=dead_lettered_at,
        replayed_at=replayed_at,
        replay_count=replay_count,
        last_replay_outcome=outcome,
        publish_error=publish_error,
    )


def list_dead_letters(
    conn: psycopg.Connection[Any], selection: DeadLetterFilter
) -> list[StoredDeadLetter]:
    """Dead letters matching ``selection``, newest first, at most ``selection.limit``."""
    where, params = selection.where()
    query = sql.SQL("{} WHERE {} ORDER BY id DESC").format(_SELECT, where)
    if selection.limit is not None:
        query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(selection.limit))
    return [_from_row(row) for row in conn.execute(query, params).fetchall()]


def count_dead_letters(
    conn: psycopg.Connection[Any], selection: DeadLetterFilter, *, pending: bool | None = None
) -> int:
    """How many match (``pending``: only those not yet replayed successfully, or only
    those that were); ``selection.limit`` is not applied."""
    where, params = selection.where()
    if pending is not None:
        state = _PENDING if pending else sql.SQL("NOT {}").format(_PENDING)
        where = sql.SQL("{} AND {}").format(where, state)
    query = sql.SQL("SELECT count(*) FROM kingest.dead_letters WHERE {}").format(where)
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def summarize(conn: psycopg.Connection[Any], selection: DeadLetterFilter) -> list[dict[str, Any]]:
    """Counts by stage and error class: total, still pending, first and last seen."""
    where, params = selection.where()
    query = sql.SQL(
        "SELECT error_stage, error_class, count(*), count(*) FILTER (WHERE {pending}), "
        "min(dead_lettered_at), max(dead_lettered_at) "
        "FROM kingest.dead_letters WHERE {where} GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
    ).format(pending=_PENDING, where=where)
    return [
        {
            "error_stage": stage,
            "error_class": error_class,
            "count": count,
            "pending": pending,
            "first": _iso(first),
            "last": _iso(last),
        }
        for stage, error_class, count, pending, first, last in conn.execute(query, params)
    ]


def get_dead_letter(conn: psycopg.Connection[Any], reference: Reference) -> StoredDeadLetter:
    """The dead letter with this id or these coordinates; :class:`DeadLetterNotFoundError`."""
    if isinstance(reference, int):
        query = sql.SQL("{} WHERE id = %s").format(_SELECT)
        params: tuple[Any, ...] = (reference,)
        shown = f"id {reference}"
    else:
        query = sql.SQL(
            "{} WHERE kafka_topic = %s AND kafka_partition = %s AND kafka_offset = %s"
        ).format(_SELECT)
        params = reference
        shown = ":".join(map(str, reference))
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise DeadLetterNotFoundError(f"no dead letter with {shown}")
    return _from_row(row)


def _pending_pages(
    conn: psycopg.Connection[Any], selection: DeadLetterFilter, *, again: bool, page_size: int
) -> Iterator[list[StoredDeadLetter]]:
    """The dead letters to replay from the table, oldest first, page by page (keyset)."""
    where, params = selection.where()
    if not again:
        where = sql.SQL("{} AND {}").format(where, _PENDING)
    remaining = selection.limit
    last_id = 0
    while remaining is None or remaining > 0:
        size = page_size if remaining is None else min(page_size, remaining)
        query = sql.SQL("{} WHERE {} AND id > %s ORDER BY id LIMIT {}").format(
            _SELECT, where, sql.Literal(size)
        )
        page = [_from_row(row) for row in conn.execute(query, [*params, last_id]).fetchall()]
        if not page:
            return
        yield page
        last_id = page[-1].id or last_id
        if remaining is not None:
            remaining -= len(page)


# --------------------------------------------------------------------------- inspecting


def hexdump(data: bytes, *, limit: int | None = None, width: int = 16) -> str:
    """``xxd``-style lines: offset, hex bytes, printable ASCII; cut after ``limit`` bytes."""
    shown = data if limit is None else data[:limit]
    lines = []
    for start in range(0, len(shown), width):
        chunk = shown[start : start + width]
        hex_part = " ".join(f"{byte:02x}" for byte in chunk)
        text = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in chunk)
        lines.append(f"{start:08x}  {hex_part:<{width * 3 - 1}}  |{text}|")
    if len(shown) < len(data):
        lines.append(f"... {len(data) - len(shown)} more bytes")
    return "\n".join(lines)


class ReplayRecord:
    """A dead letter as a Kafka record (:class:`kingest.store.rows.KafkaRecord`), with its
    ORIGINAL coordinates, so rows and derived event ids are those of the original."""

    __slots__ = ("_rejection",)

    def __init__(self, rejection: Rejection) -> None:
        self._rejection = rejection

    def topic(self) -> str | None:
        return self._rejection.topic

    def partition(self) -> int | None:
        return self._rejection.partition

    def offset(self) -> int | None:
        return self._rejection.offset

    def key(self) -> bytes | None:
        return self._rejection.key

    def value(self) -> bytes | None:
        return self._rejection.value

    def headers(self) -> list[tuple[str, bytes | None]]:
        return list(self._rejection.headers)

    def timestamp(self) -> tuple[int, int]:
        ms = self._rejection.kafka_timestamp_ms
        return (_NO_TIMESTAMP, 0) if ms is None else (_CREATE_TIME, ms)


@attrs.frozen
class Verdict:
    """What the pipeline would do with a dead letter's message today (before writing).

    ``event_json``: the value as an Event in JSON, when it decodes (valid or not);
    ``table``/``event_id``: where it would be stored, when it passes; ``rejection``: the
    decode or validation failure it gets now, otherwise. A write-stage failure cannot be
    predicted without writing.
    """

    event_json: str | None
    table: str | None = None
    event_id: str | None = None
    rejection: Rejection | None = None


def judge_now(dead_letter: StoredDeadLetter) -> Verdict:
    """Run the dead letter through today's decode -> validate -> map, writing nothing."""
    value = dead_letter.rejection.value
    event_json = None
    try:
        event: Event = decode_event(value)
        event_json = json_format.MessageToJson(event, preserving_proto_field_name=True)
    except DecodeError:
        pass
    batch = RowBatch()
    batch.add_records([ReplayRecord(dead_letter.rejection)])
    if batch.rejection_count:
        return Verdict(event_json, rejection=batch.rejections[0])
    table = next(batch.iter_tables())
    return Verdict(event_json, table=table.name, event_id=batch.columns(table)[0][0])


# --------------------------------------------------------------------------- replaying


def replay_headers(rejection: Rejection) -> list[tuple[str, bytes | None]]:
    """The headers of a replayed message: the original ones plus ``kingest.replay.of``
    naming the dead letter's coordinates and ``kingest.replay.digest`` binding them to
    its key and value.

    A dead letter of a message that was itself a replay already names the original
    message: when its replay headers check out (as the pipeline judged them,
    :func:`kingest.store.event_ids.verified_replay_of`) they are kept as they are, so every
    generation maps to the first one. Replay headers that do not check out (forwarded
    from another message, a digest alone, malformed) are dropped: the pipeline keyed
    that message by its own coordinates, so its replay names those.
    """
    r = rejection
    if verified_replay_of(r.headers, r.key, r.value) is not None:
        return list(r.headers)
    replay = (REPLAY_OF_HEADER, REPLAY_DIGEST_HEADER)
    kept = [(key, value) for key, value in r.headers if key not in replay]
    original = (r.topic, r.partition, r.offset)
    marker = f"{r.topic}/{r.partition}/{r.offset}".encode()
    digest = replay_digest(original, r.key, r.value).encode()
    return [*kept, (REPLAY_OF_HEADER, marker), (REPLAY_DIGEST_HEADER, digest)]


class RateLimiter:
    """At most ``rate`` items per second on an absolute schedule (no drift): item ``i``
    waits until ``start + i / rate``. ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and not rate > 0:
            raise DlqInputError(f"--rate must be positive, not {rate}")
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._count = 0

    def wait(self) -> None:
        """Block until the next item may go."""
        if not self._interval:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + self._count * self._interval
        while now < due:
            self._sleep(due - now)
            now = self._clock()
        self._count += 1


@attrs.frozen
class ReplayPlan:
    """What ``kingest dlq replay`` does: from where, to where, which dead letters, how fast."""

    source: str = "table"
    destination: str = "source"
    selection: DeadLetterFilter = attrs.Factory(DeadLetterFilter)
    again: bool = False
    dry_run: bool = False
    rate: float | None = None
    batch_size: int = 500
    dead_letter_topics: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.source not in SOURCES:
            raise DlqInputError(f"--from must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.destination not in DESTINATIONS:
            raise DlqInputError(
                f"--to must be one of {', '.join(DESTINATIONS)}, not {self.destination!r}"
            )
        if self.source == "topic" and not self.dead_letter_topics:
            raise DlqInputError("--from topic needs at least one dead-letter topic")
        if self.batch_size < 1:
            raise DlqInputError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.rate is not None and not self.rate > 0:
            raise DlqInputError(f"--rate must be positive, not {self.rate}")


@attrs.define
class ReplaySummary:
    """What a replay did. ``replayed``: dead letters handed to the destination (or, in a
    dry run, that would be); ``stored``/``duplicates``/``still_failing``: outcomes of a
    pipeline replay; ``produced``/``failed_deliveries``: of a replay to the source topic;
    ``skipped``: already replayed successfully (replay them with ``again``);
    ``not_dead_letters``/``repeated``: topic messages without kingest's headers, and
    copies of a dead letter already read (the topic is at-least-once)."""

    replayed: int = 0
    stored: int = 0
    duplicates: int = 0
    still_failing: int = 0
    produced: int = 0
    failed_deliveries: int = 0
    skipped: int = 0
    not_dead_letters: int = 0
    repeated: int = 0
    errors: list[str] = attrs.Factory(list)


# --- marking the table -----------------------------------------------------------------

_MARK_REPLAYED: Final = sql.SQL(
    "UPDATE kingest.dead_letters SET replayed_at = now(), replay_count = replay_count + 1, "
    "last_replay_outcome = %s WHERE id = ANY(%s)"
)
_MARK_FAILED: Final = sql.SQL(
    "UPDATE kingest.dead_letters SET replayed_at = now(), replay_count = replay_count + 1, "
    "last_replay_outcome = 'failed', attempts = attempts + 1, error_stage = %s, "
    "error_class = %s, error_message = %s, sqlstate = %s, "
    "event_id = coalesce(%s, event_id), event_type = coalesce(%s, event_type) WHERE id = %s"
)
_IMPORT: Final = sql.SQL(
    "INSERT INTO kingest.dead_letters (kafka_topic, kafka_partition, kafka_offset, "
    "message_key, message_value, header_keys, header_values, kafka_timestamp, error_stage, "
    "error_class, error_message, sqlstate, event_id, event_type, correlation_id, "
    "consumer_group, attempts, dead_lettered_at) VALUES (%s, %s, %s, %b, %b, %s::text[], "
    "%b::bytea[], 'epoch'::timestamptz + %s::int8 * '1 millisecond'::interval, "
    "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING"
)


def _text(value: str | None) -> str | None:
    """Text PostgreSQL accepts (a NUL cannot be stored in text)."""
    return None if value is None else value.replace("\x00", "\ufffd")


def _mark(conn: psycopg.Connection[Any], ids: Iterable[int | None], outcome: str) -> None:
    known = [id_ for id_ in ids if id_ is not None]
    if known:
        conn.execute(_MARK_REPLAYED, (outcome, known))


def _mark_failed(
    conn: psycopg.Connection[Any], failures: Sequence[tuple[int | None, Rejection]]
) -> None:
    params = [
        (
            r.error_stage,
            _text(r.error_class),
            _text(r.error_message),
            r.sqlstate,
            _text(r.event_id),
            _text(r.event_type),
            id_,
        )
        for id_, r in failures
        if id_ is not None
    ]
    if params:
        with conn.cursor() as cursor:
            cursor.executemany(_MARK_FAILED, params)


def _import_params(dead_letter: StoredDeadLetter) -> tuple[Any, ...]:
    r = dead_letter.rejection
    # The table only knows the three stages; a topic message naming another is from a
    # newer or foreign writer, and "decode" is the stage that claims least about it.
    stage = r.error_stage if r.error_stage in STAGES else "decode"
    return (
        _text(r.topic),
        r.partition,
        r.offset,
        r.key,
        r.value,
        [_text(key) for key, _ in r.headers],
        [value for _, value in r.headers],
        storable_timestamp_ms(r.kafka_timestamp_ms),
        stage,
        _text(r.error_class),
        _text(r.error_message),
        r.sqlstate,
        _text(r.event_id),
        _text(r.event_type),
        _text(r.correlation_id),
        _text(dead_letter.consumer_group),
        dead_letter.attempts,
        dead_letter.dead_lettered_at,
    )


def _with_table_state(
    conn: psycopg.Connection[Any], page: Sequence[StoredDeadLetter], *, record: bool
) -> list[StoredDeadLetter]:
    """Topic dead letters as the table knows them (id, replay history); ``record`` adds
    the missing ones to the table first. Order is kept; missing ones stay as they were."""
    if record:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(_IMPORT, [_import_params(d) for d in page])
    query = sql.SQL(
        "{} WHERE (kafka_topic, kafka_partition, kafka_offset) IN "
        "(SELECT * FROM unnest(%s::text[], %s::int[], %s::int8[]))"
    ).format(_SELECT)
    params = (
        [d.rejection.topic for d in page],
        [d.rejection.partition for d in page],
        [d.rejection.offset for d in page],
    )
    stored = {d.coordinates: d for d in map(_from_row, conn.execute(query, params).fetchall())}
    return [stored.get(d.coordinates, d) for d in page]


# --- reading a dead-letter topic -------------------------------------------------------


def _read_topics(
    config: Mapping[str, Any],
    topics: Sequence[str],
    summary: ReplaySummary,
    *,
    stall_timeout_s: float = 30.0,
) -> Iterator[StoredDeadLetter]:
    """Every dead letter on ``topics`` from the beginning up to the end as of the start,
    once per source coordinates; manual assignment, no group, nothing committed.

    The end is each partition's high watermark when reading starts. (Tansu 0.6 reports
    it too low after produce requests carrying several messages: there, reading stops
    early.)
    """
    consumer = Consumer(
        {
            **config,
            "group.id": f"kingest-dlq-replay-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        ends = _assign_from_beginning(consumer, topics)
        seen: set[tuple[str, int, int]] = set()
        last_progress = time.monotonic()
        while ends:
            messages = consumer.consume(500, timeout=0.5)
            if messages:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_timeout_s:
                raise DlqError(
                    f"no message from the dead-letter topic for {stall_timeout_s:.0f} s "
                    f"before its end ({len(ends)} partitions not read to the end)"
                )
            for message in messages:
                dead_letter = _dead_letter_of(message, ends, summary)
                if dead_letter is None:
                    continue
                r = dead_letter.rejection
                coordinates = (r.topic, r.partition, r.offset)
                if coordinates in seen:
                    summary.repeated += 1
                    continue
                seen.add(coordinates)
                yield dead_letter
            _forget_finished(consumer, ends)
    finally:
        consumer.close()


def _assign_from_beginning(consumer: Consumer, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """Assign every non-empty partition at its low watermark; return what is left to
    read per partition (high watermark as of now, counted down as messages arrive)."""
    ends: dict[tuple[str, int], int] = {}
    assignment = []
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise DlqInputError(f"dead-letter topic {topic!r} does not exist")
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )
            if high > low:
                ends[(topic, partition)] = high
                assignment.append(TopicPartition(topic, partition, low))
    consumer.assign(assignment)
    return ends


def _forget_finished(consumer: Consumer, ends: dict[tuple[str, int], int]) -> None:
    """Drop the partitions whose position reached their end (offset gaps included)."""
    positions = consumer.position([TopicPartition(t, p) for t, p in ends])
    for position in positions:
        if position.offset >= ends[(position.topic, position.partition)]:
            del ends[(position.topic, position.partition)]


def _dead_letter_of(
    message: Message, ends: dict[tuple[str, int], int], summary: ReplaySummary
) -> StoredDeadLetter | None:
    """The dead letter in ``message`` (None when past the end or not a dead letter)."""
    error = message.error()
    if error is not None:
        if error.code() == KafkaError._PARTITION_EOF:
            return None
        raise KafkaException(error)
    end = ends.get((message.topic() or "", message.partition() or 0))
    if end is None or (message.offset() or 0) >= end:
        return None
    try:
        return StoredDeadLetter.from_topic(
            decode_message(message.key(), message.value(), message_headers(message))
        )
    except NotADeadLetterError:
        summary.not_dead_letters += 1
        return None


def _topic_pages(
    conn: psycopg.Connection[Any],
    plan: ReplayPlan,
    kafka_config: Mapping[str, Any],
    summary: ReplaySummary,
) -> Iterator[list[StoredDeadLetter]]:
    """Pending dead letters from the dead-letter topics, page by page, as the table
    knows them (recorded there first unless this is a dry run)."""
    remaining = plan.selection.limit
    page: list[StoredDeadLetter] = []

    def settle(chunk: list[StoredDeadLetter]) -> list[StoredDeadLetter]:
        nonlocal remaining
        known = _with_table_state(conn, chunk, record=not plan.dry_run)
        pending = [d for d in known if plan.again or d.pending]
        summary.skipped += len(known) - len(pending)
        if remaining is not None:
            pending = pending[:remaining]
            remaining -= len(pending)
        return pending

    for dead_letter in _read_topics(kafka_config, plan.dead_letter_topics, summary):
        if not plan.selection.matches(dead_letter):
            continue
        page.append(dead_letter)
        if len(page) >= plan.batch_size:
            settled = settle(page)
            page = []
            if settled:
                yield settled
            if remaining == 0:
                return
    if page:
        settled = settle(page)
        if settled:
            yield settled


# --- destinations ----------------------------------------------------------------------


class _PipelineDestination:
    """Decode, validate, map and write each page in one transaction, like a writer."""

    def __init__(
        self, conn: psycopg.Connection[Any], consumer_group: str | None, summary: ReplaySummary
    ) -> None:
        self._conn = conn
        self._group = consumer_group
        self._summary = summary

    def replay(self, page: Sequence[StoredDeadLetter], limiter: RateLimiter) -> None:
        batch = RowBatch()
        for dead_letter in page:
            limiter.wait()
            batch.add_records([ReplayRecord(dead_letter.rejection)])
        failures = [*batch.rejections, *self._write_isolating(batch)]
        ids = {d.coordinates: d.id for d in page}
        failed = {f"{r.topic}:{r.partition}:{r.offset}": r for r in failures}
        with self._conn.transaction():
            _mark(self._conn, [d.id for d in page if d.coordinates not in failed], "stored")
            _mark_failed(self._conn, [(ids.get(key), r) for key, r in failed.items()])
        self._summary.replayed += len(page)
        self._summary.still_failing += len(failed)

    def _write_isolating(self, batch: RowBatch) -> list[Rejection]:
        """Write the rows; bisect on a permanent error down to the rows PostgreSQL
        rejects, and return those as write-stage rejections."""
        if not batch.event_count:
            return []
        try:
            result = write_batch(
                self._conn, batch, consumer_group=self._group, store_dead_letters=False
            )
        except Exception as error:
            if is_schema_error(error) or classify_db_error(error) is not ErrorKind.PERMANENT:
                raise
            if batch.event_count == 1:
                rejected = batch.as_rejected(
                    error_class=type(error).__name__,
                    error_message=first_line(error),
                    sqlstate=sqlstate_of(error),
                )
                return [r for r in rejected.rejections if r.error_stage == "write"]
            first, second = batch.halves()
            return [*self._write_isolating(first), *self._write_isolating(second)]
        self._summary.stored += sum(result.inserted.values())
        self._summary.duplicates += result.duplicates
        return []

    def close(self) -> None:
        """Nothing to release: the connection belongs to the caller."""


class _SourceDestination:
    """Produce each dead letter back to its source topic and partition; mark the ones
    the broker confirmed."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        kafka_config: Mapping[str, Any],
        summary: ReplaySummary,
        *,
        delivery_timeout_s: float = 60.0,
    ) -> None:
        self._conn = conn
        self._summary = summary
        self._timeout_s = delivery_timeout_s
        self._producer = Producer(
            {
                **kafka_config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
            }
        )

    def replay(self, page: Sequence[StoredDeadLetter], limiter: RateLimiter) -> None:
        confirmed: list[int | None] = []
        failed: list[str] = []

        def on_delivery(dead_letter: StoredDeadLetter) -> Callable[[Any, Message], None]:
            def callback(error: KafkaError | None, _message: Message) -> None:
                if error is None:
                    confirmed.append(dead_letter.id)
                else:
                    failed.append(f"{dead_letter.coordinates}: {error.str()}")

            return callback

        for dead_letter in page:
            limiter.wait()
            self._produce(dead_letter, on_delivery(dead_letter))
        remaining = self._producer.flush(self._timeout_s + 5)
        if remaining:
            failed.append(f"{remaining} messages without a delivery report in time")
        with self._conn.transaction():
            _mark(self._conn, confirmed, "produced")
        self._summary.replayed += len(page)
        self._summary.produced += len(confirmed)
        self._summary.failed_deliveries += len(page) - len(confirmed)
        self._summary.errors.extend(failed[: max(0, 10 - len(self._summary.errors))])

    def _produce(
        self, dead_letter: StoredDeadLetter, callback: Callable[[Any, Message], None]
    ) -> None:
        r = dead_letter.rejection
        options: dict[str, Any] = {
            "key": r.key,
            "value": r.value,
            "headers": replay_headers(r),
            "on_delivery": callback,
        }
        if r.partition >= 0:
            options["partition"] = r.partition  # keeps the key's order on its partition
        while True:
            try:
                self._producer.produce(r.topic, **options)
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve delivery reports
                continue
            self._producer.poll(0)
            return

    def close(self) -> None:
        self._producer.flush(self._timeout_s)


def replay(
    plan: ReplayPlan,
    *,
    database_url: str,
    kafka_config: Mapping[str, Any],
    consumer_group: str | None = None,
    progress: Callable[[int], None] | None = None,
    announce: Callable[[StoredDeadLetter], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Replay the dead letters ``plan`` selects; return what happened.

    ``progress(n)`` is called after each page with the number of dead letters replayed;
    ``announce(dead_letter)`` for each one a dry run would replay (a dry run changes
    nothing: no message, no row, no bookkeeping). ``kafka_config`` holds the client
    settings (bootstrap servers, security) for producing to the source topics and
    reading dead-letter topics; ``consumer_group`` is recorded on write-stage failures.
    """
    summary = ReplaySummary()
    limiter = RateLimiter(plan.rate, clock=clock, sleep=sleep)
    with psycopg.connect(database_url, autocommit=True) as conn:
        if plan.source == "table":
            pages = _pending_pages(
                conn, plan.selection, again=plan.again, page_size=plan.batch_size
            )
            if not plan.again:
                summary.skipped = count_dead_letters(conn, plan.selection, pending=False)
        else:
            pages = _topic_pages(conn, plan, kafka_config, summary)
        destination: _PipelineDestination | _SourceDestination | None = None
        try:
            for page in pages:
                if plan.dry_run:
                    for dead_letter in page:
                        if announce is not None:
                            announce(dead_letter)
                    summary.replayed += len(page)
                else:
                    if destination is None:  # opened once there is something to replay
                        destination = (
                            _PipelineDestination(conn, consumer_group, summary)
                            if plan.destination == "pipeline"
                            else _SourceDestination(conn, kafka_config, summary)
                        )
                    destination.replay(page, limiter)
                if progress is not None:
                    progress(len(page))
        finally:
            if destination is not None:
                destination.close()
    return summary


def count_to_replay(database_url: str, plan: ReplayPlan) -> int | None:
    """How many dead letters a table replay will take (None for a topic: unknown)."""
    if plan.source != "table":
        return None
    with psycopg.connect(database_url, autocommit=True) as conn:
        count = count_dead_letters(conn, plan.selection, pending=None if plan.again else True)
    return count if plan.selection.limit is None else min(count, plan.selection.limit)
