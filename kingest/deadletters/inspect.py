"""Inspecting a dead letter: its bytes, and what the pipeline would do with it today.

``kingest dlq inspect`` shows a dead letter's key and value as a hex dump
(:func:`hexdump`), since a message that could not be decoded cannot be shown any other
way, and its verdict (:func:`judge_now`): the dead letter run through today's decode,
validate and map steps, writing nothing. A dead letter rejected by a schema or a mapping
that has since been fixed would now be accepted, which tells whether replaying it is
worthwhile. A write-stage failure cannot be predicted without writing.

:class:`ReplayRecord` presents a dead letter to the pipeline as the Kafka record it
was, with its ORIGINAL coordinates, so that the rows and derived event ids are those of
the original message; the replay to the pipeline uses it too.
"""

from __future__ import annotations

from typing import Final

import attrs
from google.protobuf import json_format

from kingest.deadletters.stored import StoredDeadLetter
from kingest.schema import DecodeError
from kingest.store import Rejection, RowBatch, WritePlan

__all__ = [
    "ReplayRecord",
    "Verdict",
    "hexdump",
    "judge_now",
]

_CREATE_TIME: Final = 1  # confluent_kafka.TIMESTAMP_CREATE_TIME
_NO_TIMESTAMP: Final = 0


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

    def __len__(self) -> int:
        return len(self._rejection.value or b"")

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


def judge_now(dead_letter: StoredDeadLetter, plan: WritePlan | None = None) -> Verdict:
    """Run the dead letter through today's decode -> validate -> map, writing nothing.

    ``plan`` is the catalog's write plan (the built-in catalog's by default).
    """
    record = ReplayRecord(dead_letter.rejection)
    batch = RowBatch(plan=plan)
    event_json = None
    try:
        event = batch.decode(record)
        event_json = json_format.MessageToJson(event, preserving_proto_field_name=True)
    except DecodeError:
        pass
    batch.add_records([record])
    if batch.rejection_count:
        return Verdict(event_json, rejection=batch.rejections[0])
    table = next(batch.iter_tables())
    return Verdict(event_json, table=table.name, event_id=batch.columns(table)[0][0])
