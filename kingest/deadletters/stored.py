"""Stored dead letters: what ``kingest dlq`` selects, lists and shows.

Dead letters live in ``kingest.dead_letters`` (one row per source message, unique on
its Kafka coordinates) and, when ``KINGEST_DEAD_LETTER_STORE`` includes ``topic``, on a
dead-letter topic (:mod:`kingest.deadletters.publisher`). Either way a command sees a
:class:`StoredDeadLetter`: the rejected message (a :class:`~kingest.store.Rejection`)
with the dead letter's own history (attempts, replays); one read from a topic and not
yet in the table has no ``id``.

This module holds what the commands share: parsing the user's times
(:func:`parse_time`) and references (:func:`parse_reference`), the selection
(:class:`DeadLetterFilter`, as SQL for the table and in Python for a topic), and the
queries on the table (:func:`list_dead_letters`, :func:`summarize`,
:func:`get_dead_letter`, and the pages a replay walks). The table is the one ledger of
what was replayed: dead letters read from a topic are added to it before they are
replayed (:func:`with_table_state`). Judging a dead letter today is
:mod:`kingest.deadletters.inspect`'s; replaying, :mod:`kingest.deadletters.replay`'s.

Errors: :class:`DlqInputError` is the user's (a bad time, an unknown dead letter: exit
code 2), :class:`DlqError` the environment's (broker, topic or database trouble).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
import psycopg
from psycopg import sql

from kingest.deadletters.publisher import DeadLetter
from kingest.store import (
    IMPORT_DEAD_LETTER,
    Rejection,
    dead_letter_params,
    storable_timestamp_ms,
)

__all__ = [
    "STAGES",
    "DeadLetterFilter",
    "DeadLetterNotFoundError",
    "DlqError",
    "DlqInputError",
    "Reference",
    "StoredDeadLetter",
    "count_dead_letters",
    "get_dead_letter",
    "list_dead_letters",
    "parse_reference",
    "parse_time",
    "pending_pages",
    "summarize",
    "with_table_state",
]

STAGES: Final = ("decode", "validate", "write")

#: A relative time: a number and a unit, several allowed (``90m``, ``1h30m``, ``2d``).
_RELATIVE_PART: Final = re.compile(r"(\d+)\s*([smhdw])")
_RELATIVE: Final = re.compile(r"(\s*\d+\s*[smhdw])+\s*")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_REFERENCE: Final = re.compile(r"(?P<topic>[A-Za-z0-9._-]+):(?P<partition>\d+):(?P<offset>\d+)")


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


def pending_pages(
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


# ------------------------------------------------------- dead letters of a topic in the table


def _import_params(dead_letter: StoredDeadLetter) -> tuple[Any, ...]:
    """The parameters of :data:`~kingest.store.IMPORT_DEAD_LETTER` for ``dead_letter``."""
    r = dead_letter.rejection
    if r.error_stage not in STAGES:
        # The table only knows the three stages; a topic message naming another is from
        # a newer or foreign writer, and "decode" is the stage that claims least about it.
        r = attrs.evolve(r, error_stage="decode")
    return (
        *dead_letter_params(r, dead_letter.consumer_group),
        dead_letter.attempts,
        dead_letter.dead_lettered_at,
    )


def with_table_state(
    conn: psycopg.Connection[Any], page: Sequence[StoredDeadLetter], *, record: bool
) -> list[StoredDeadLetter]:
    """Topic dead letters as the table knows them (id, replay history); ``record`` adds
    the missing ones to the table first. Order is kept; missing ones stay as they were."""
    if record:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(IMPORT_DEAD_LETTER, [_import_params(d) for d in page])
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
