"""The poison corpus: every kind of bad Kafka message kingest must survive, with the
outcome it must have.

Each :class:`PoisonCase` is one Kafka message (key, value, headers) and its
:class:`Expected` outcome: a dead letter (with the stage and ``error_class`` it is
stored with), a stored row, or a duplicate that is ignored because an earlier message
with the same ``event_id`` is already stored (the first write wins). The unit test
(tests/unit/store/test_rows_poison_corpus.py) runs every case through ``RowBatch``; the integration
test (tests/integration/test_poison_corpus.py) interleaves the corpus with valid events
across partitions and runs the real pipeline. docs/poison-messages.md is the table of
the same cases, for people; ``markdown_table()`` renders it and a test keeps it current.

Cases that validation can catch are dead-lettered at the ``decode`` or ``validate``
stage, in the same transaction as their neighbours, without a failed write. Only what
validation cannot see (a Kafka header) may reach PostgreSQL and cost a bisection
(stage ``write``); those cases say so in ``note``.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable

import attrs
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import (
    EvaluationCompleted,
    Event,
    InferenceCompleted,
    InferenceStatus,
    MetricLogged,
    ModelDeployed,
    ModelVersionRegistered,
    RunStatus,
    TrainingRunFinished,
    TrainingRunStarted,
)

__all__ = [
    "CORPUS_NOW",
    "DUPLICATE_EVENT_ID",
    "Expected",
    "Outcome",
    "PoisonCase",
    "build_corpus",
    "four_byte_text",
    "markdown_table",
]

#: The clock the corpus is built against (Unix seconds); events happen just before it.
CORPUS_NOW = time.time()
#: The event id sent twice, with different contents.
DUPLICATE_EVENT_ID = "5f0b8a2e-3c1d-4e6f-8a9b-0c1d2e3f4a5b"


def four_byte_text(length: int) -> str:
    """``length`` different four-byte characters (4 * length UTF-8 bytes). Varied on
    purpose: PostgreSQL compresses a long index entry, and one repeated character would
    compress below the btree limit and be accepted."""
    return "".join(chr(0x10000 + (i * 7919) % 0xFFFFF) for i in range(length))


class Outcome(enum.Enum):
    DEAD_LETTER = "dead letter"
    STORED = "stored"
    DUPLICATE_IGNORED = "duplicate ignored (first write wins)"


@attrs.frozen
class Expected:
    """What must become of a message: ``stage`` and ``error_class`` for dead letters,
    ``table`` (and optionally ``columns``, values of the stored row) for stored rows."""

    outcome: Outcome
    stage: str | None = None
    error_class: str | None = None
    table: str | None = None
    sqlstate: str | None = None


def dead_letter(stage: str, error_class: str, sqlstate: str | None = None) -> Expected:
    return Expected(Outcome.DEAD_LETTER, stage=stage, error_class=error_class, sqlstate=sqlstate)


def stored(table: str) -> Expected:
    return Expected(Outcome.STORED, table=table)


@attrs.frozen
class PoisonCase:
    """One Kafka message of the corpus and its expected outcome.

    ``event_id`` is the id the stored row has (for stored and duplicate cases).
    ``stored_column`` is a ``(column, value)`` pair the stored row must hold: it shows
    which of two duplicates won. ``group`` names cases that must share a partition, in
    corpus order (the integration test keys them alike).
    """

    name: str
    description: str
    value: bytes | None
    expected: Expected
    headers: tuple[tuple[str, bytes], ...] = ()
    event_id: str | None = None
    stored_column: tuple[str, object] | None = None
    group: str | None = None
    note: str = ""

    @property
    def key(self) -> bytes:
        return (self.group or self.name).encode()


# --- building blocks ---------------------------------------------------------------------


def _event(seq: int, **payload: object) -> Event:
    """A valid envelope (unique event id per ``seq``) around ``payload``."""
    event = Event(
        event_id=f"00000000-0000-4000-8000-{seq:012d}",
        correlation_id=f"poison-{seq}",
        source="tests/poison-corpus",
        **payload,  # type: ignore[arg-type]
    )
    event.occurred_at.FromNanoseconds(int((CORPUS_NOW - 60) * 1e9))
    return event


def _inference(seq: int, **fields: object) -> Event:
    payload = {"model_name": "m", "status": InferenceStatus.INFERENCE_STATUS_OK, **fields}
    return _event(seq, inference_completed=InferenceCompleted(**payload))  # type: ignore[arg-type]


def _metric(seq: int, **fields: object) -> Event:
    payload = {"run_id": "run-1", "key": "loss", "value": 0.5, "step": 1, **fields}
    return _event(seq, metric_logged=MetricLogged(**payload))  # type: ignore[arg-type]


def _mutated(event: Event, mutate: Callable[[Event], object]) -> Event:
    mutate(event)
    return event


def _field(number: int, wire_type: int, body: bytes) -> bytes:
    """One hand-encoded Protobuf field (tag as a one-byte varint; short bodies only)."""
    assert number < 16, "one-byte tags only"
    assert len(body) < 128, "one-byte lengths only"
    return bytes([number << 3 | wire_type]) + (bytes([len(body)]) if wire_type == 2 else b"")


def _length_delimited(number: int, body: bytes) -> bytes:
    return _field(number, 2, body) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _invalid_utf8_value(seq: int) -> bytes:
    """A valid inference event whose ``source`` (field 4) holds the bytes ff fe."""
    valid = encode_event(_mutated(_inference(seq), lambda e: e.ClearField("source")))
    return valid + _length_delimited(4, b"ok\xff\xfe")


def _unknown_payload_value(seq: int) -> bytes:
    """An envelope whose payload is a field number no version of the schema defines (99):
    what a newer producer's event type looks like to this consumer."""
    envelope = encode_event(_event(seq))
    body = _length_delimited(1, b"future-run")
    tag = _varint(99 << 3 | 2)
    return envelope + tag + _varint(len(body)) + body


def _struct_value() -> bytes:
    """Another schema's Protobuf bytes (google.protobuf.Struct)."""
    message = Struct()
    message.update({"event_id": "not-an-event", "value": 1.0})
    return message.SerializeToString()


def _truncated(event: Event) -> bytes:
    value = encode_event(event)
    return value[: len(value) - 3]  # cuts the last field (a string) short


def _wire(event: Event, schema_id: int = 7) -> bytes:
    return encode_event(event, schema_id=schema_id)


# --- the corpus --------------------------------------------------------------------------


def build_corpus() -> list[PoisonCase]:
    """Every case, in the order the integration test produces them (per partition)."""
    random_bytes = random.Random(20260101).randbytes(64)
    assert random_bytes[0] != 0  # plain Protobuf, not a framed value
    four_byte_id = four_byte_text(1024)  # 1024 characters, 4096 UTF-8 bytes
    return [
        # ---- not an Event at all: dead-lettered at decode
        PoisonCase(
            "random_bytes",
            "64 random bytes",
            random_bytes,
            dead_letter("decode", "invalid_protobuf"),
        ),
        PoisonCase(
            "truncated_protobuf",
            "a valid event cut 3 bytes short",
            _truncated(_inference(1, request_id="request-0001")),
            dead_letter("decode", "invalid_protobuf"),
        ),
        PoisonCase("empty_value", "a zero-length value", b"", dead_letter("decode", "empty_value")),
        PoisonCase(
            "null_value",
            "no value at all (a tombstone)",
            None,
            dead_letter("decode", "empty_value"),
        ),
        PoisonCase(
            "json_value",
            "a JSON document instead of Protobuf",
            b'{"event_id": "0b1c7a5e-8a4c-4e6b-9f0e-2f1f4a5b6c7d", "kind": "metric"}',
            dead_letter("decode", "invalid_protobuf"),
        ),
        PoisonCase(
            "invalid_utf8",
            "invalid UTF-8 (ff fe) in the source string",
            _invalid_utf8_value(2),
            dead_letter("decode", "invalid_protobuf"),
        ),
        PoisonCase(
            "bad_magic_byte",
            "Confluent framing with magic byte 01 instead of 00",
            b"\x01" + _wire(_inference(3))[1:],
            dead_letter("decode", "invalid_protobuf"),
            note="a value not starting with 00 is read as plain Protobuf, which 01 is not",
        ),
        PoisonCase(
            "truncated_wire_header",
            "magic byte 00 and only two bytes of schema id",
            b"\x00\x00\x07",
            dead_letter("decode", "truncated_wire_header"),
        ),
        PoisonCase(
            "unknown_message_index",
            "Confluent framing naming message index [1], not Event",
            b"\x00\x00\x00\x00\x07\x02\x02" + encode_event(_inference(4)),
            dead_letter("decode", "unknown_message_index"),
        ),
        PoisonCase(
            "framed_empty_payload",
            "Confluent header with no Protobuf after it",
            b"\x00\x00\x00\x00\x07\x02\x00",
            dead_letter("decode", "empty_value"),
        ),
        # ---- an Event, but not one kingest can store: dead-lettered at validate
        PoisonCase(
            "other_schema_struct",
            "another schema's Protobuf bytes (a google.protobuf.Struct)",
            _struct_value(),
            dead_letter("decode", "invalid_protobuf"),
            note="its field 1 (a map entry) reads as event_id: a string of non-UTF-8 bytes",
        ),
        PoisonCase(
            "other_schema_timestamp",
            "another schema's Protobuf bytes (a google.protobuf.Timestamp)",
            Timestamp(seconds=1_760_000_000, nanos=5).SerializeToString(),
            dead_letter("validate", "missing_payload"),
            note="Protobuf keeps fields of the wrong wire type as unknown fields, so it "
            "parses; nothing names a payload",
        ),
        PoisonCase(
            "unknown_payload",
            "a payload field number this schema does not define (a newer event type)",
            _unknown_payload_value(5),
            dead_letter("validate", "missing_payload"),
        ),
        PoisonCase(
            "missing_payload",
            "an envelope without a payload",
            encode_event(_event(6)),
            dead_letter("validate", "missing_payload"),
        ),
        PoisonCase(
            "missing_occurred_at",
            "no occurred_at",
            encode_event(_mutated(_inference(7), lambda e: e.ClearField("occurred_at"))),
            dead_letter("validate", "missing_field"),
        ),
        PoisonCase(
            "missing_required_field",
            "a metric without run_id",
            encode_event(_metric(8, run_id="")),
            dead_letter("validate", "missing_field"),
        ),
        PoisonCase(
            "unspecified_status",
            "an inference with status UNSPECIFIED",
            encode_event(_inference(9, status=InferenceStatus.INFERENCE_STATUS_UNSPECIFIED)),
            dead_letter("validate", "missing_field"),
        ),
        PoisonCase(
            "unknown_enum",
            "an inference with status 9, which the schema does not define",
            encode_event(_inference(10, status=9)),
            dead_letter("validate", "unknown_enum"),
        ),
        PoisonCase(
            "invalid_event_id",
            "event_id that is not a UUID",
            encode_event(_mutated(_inference(11), lambda e: setattr(e, "event_id", "order-42"))),
            dead_letter("validate", "invalid_uuid"),
        ),
        PoisonCase(
            "timestamp_1970",
            "occurred_at 1970-01-01T00:00:01Z (an unset clock)",
            encode_event(_mutated(_inference(12), lambda e: e.occurred_at.FromSeconds(1))),
            dead_letter("validate", "timestamp_out_of_range"),
        ),
        PoisonCase(
            "timestamp_9999",
            "occurred_at 9999-12-31 (far in the future)",
            encode_event(
                _mutated(_inference(13), lambda e: e.occurred_at.FromSeconds(253_402_300_799))
            ),
            dead_letter("validate", "timestamp_out_of_range"),
        ),
        PoisonCase(
            "nan_metric",
            "a metric value of NaN",
            encode_event(_metric(14, value=float("nan"))),
            dead_letter("validate", "not_finite"),
        ),
        PoisonCase(
            "infinite_summary_metric",
            "+infinity in a run's summary_metrics map",
            encode_event(
                _event(
                    15,
                    training_run_finished=TrainingRunFinished(
                        run_id="run-1",
                        status=RunStatus.RUN_STATUS_SUCCEEDED,
                        summary_metrics={"loss": float("inf")},
                    ),
                )
            ),
            dead_letter("validate", "not_finite"),
        ),
        PoisonCase(
            "negative_step",
            "a metric at step -1",
            encode_event(_metric(16, step=-1)),
            dead_letter("validate", "out_of_range"),
        ),
        PoisonCase(
            "negative_size",
            "a model version of -1 bytes",
            encode_event(
                _event(
                    17,
                    model_version_registered=ModelVersionRegistered(
                        model_name="m", version="1", size_bytes=-1
                    ),
                )
            ),
            dead_letter("validate", "out_of_range"),
        ),
        PoisonCase(
            "absurd_duration",
            "a training run of 1e12 seconds (31,000 years)",
            encode_event(
                _event(
                    18,
                    training_run_finished=TrainingRunFinished(
                        run_id="run-1", status=RunStatus.RUN_STATUS_FAILED, duration_seconds=1e12
                    ),
                )
            ),
            dead_letter("validate", "out_of_range"),
        ),
        PoisonCase(
            "absurd_traffic",
            "a deployment taking 250 % of the traffic",
            encode_event(
                _event(
                    19,
                    model_deployed=ModelDeployed(
                        model_name="m", version="1", environment="prod", traffic_percent=250.0
                    ),
                )
            ),
            dead_letter("validate", "out_of_range"),
        ),
        PoisonCase(
            "negative_latency",
            "an inference that took -5 ms",
            encode_event(_inference(20, latency_ms=-5.0)),
            dead_letter("validate", "out_of_range"),
        ),
        PoisonCase(
            "oversize_string",
            "a 100,000-character source",
            encode_event(_mutated(_inference(21), lambda e: setattr(e, "source", "s" * 100_000))),
            dead_letter("validate", "too_long"),
        ),
        PoisonCase(
            "oversize_map_value",
            "a 2,000-character hyperparameter value",
            encode_event(
                _event(
                    22,
                    training_run_started=TrainingRunStarted(
                        run_id="run-1", hyperparameters={"prompt": "p" * 2000}
                    ),
                )
            ),
            dead_letter("validate", "too_long"),
        ),
        PoisonCase(
            "nul_in_text",
            "a NUL character (U+0000) in model_name",
            encode_event(_inference(23, model_name="bad\x00model")),
            dead_letter("validate", "nul_character"),
            note="PostgreSQL would refuse it with SQLSTATE 22021",
        ),
        PoisonCase(
            "nul_in_map_key",
            "a NUL character in an evaluation metric name (a jsonb key)",
            encode_event(
                _event(
                    24,
                    evaluation_completed=EvaluationCompleted(
                        model_name="m", model_version="1", metrics={"acc\x00": 0.9}
                    ),
                )
            ),
            dead_letter("validate", "nul_character"),
            note="PostgreSQL would refuse it with SQLSTATE 22P05",
        ),
        PoisonCase(
            "four_byte_run_id",
            "run_id of 1024 four-byte characters (4096 UTF-8 bytes; an indexed column)",
            encode_event(_metric(25, run_id=four_byte_id)),
            dead_letter("validate", "too_long"),
            note="PostgreSQL would refuse the btree entry with SQLSTATE 54000",
        ),
        PoisonCase(
            "four_byte_correlation_id",
            "correlation_id of 1024 four-byte characters (indexed on every table)",
            encode_event(
                _mutated(_inference(26), lambda e: setattr(e, "correlation_id", four_byte_id))
            ),
            dead_letter("validate", "too_long"),
            note="PostgreSQL would refuse the btree entry with SQLSTATE 54000",
        ),
        # ---- unusual but valid: stored
        PoisonCase(
            "nul_in_correlation_header",
            "a valid event whose correlation-id Kafka header holds a NUL",
            encode_event(_mutated(_inference(27), lambda e: setattr(e, "correlation_id", ""))),
            stored("inferences"),
            headers=(("correlation-id", b"flow\x00x"),),
            event_id=_inference(27).event_id,
            note="an unusable correlation-id header is ignored: the event id stands in",
        ),
        PoisonCase(
            "four_byte_free_text",
            "1024 four-byte characters in a field that is not indexed (request_id)",
            encode_event(_inference(28, request_id=four_byte_id)),
            stored("inferences"),
            event_id=_inference(28).event_id,
        ),
        PoisonCase(
            "no_event_id",
            "no event_id: kingest derives one from topic/partition/offset",
            encode_event(_mutated(_inference(29), lambda e: setattr(e, "event_id", ""))),
            stored("inferences"),
        ),
        PoisonCase(
            "wire_format_event",
            "a valid event in the Confluent wire format (schema id 0, short index form)",
            _wire(_inference(30), schema_id=0),
            stored("inferences"),
            event_id=_inference(30).event_id,
        ),
        PoisonCase(
            "zero_bytes_in_doubles",
            "a valid deployment whose doubles encode 00 bytes (100 % traffic)",
            encode_event(
                _event(
                    31,
                    model_deployed=ModelDeployed(
                        model_name="m", version="1", environment="prod", traffic_percent=100.0
                    ),
                )
            ),
            stored("deployments"),
            event_id=_event(31).event_id,
        ),
        # ---- one event_id twice with different contents: the first write wins
        PoisonCase(
            "duplicate_first",
            "event_id sent for the first time (model_name first)",
            encode_event(
                _mutated(
                    _inference(32, model_name="first"),
                    lambda e: setattr(e, "event_id", DUPLICATE_EVENT_ID),
                )
            ),
            stored("inferences"),
            event_id=DUPLICATE_EVENT_ID,
            stored_column=("model_name", "first"),
            group="duplicate",
        ),
        PoisonCase(
            "duplicate_second",
            "the same event_id again, different contents (model_name second)",
            encode_event(
                _mutated(
                    _inference(33, model_name="second", latency_ms=99.0),
                    lambda e: setattr(e, "event_id", DUPLICATE_EVENT_ID),
                )
            ),
            Expected(Outcome.DUPLICATE_IGNORED, table="inferences"),
            event_id=DUPLICATE_EVENT_ID,
            stored_column=("model_name", "first"),
            group="duplicate",
            note="written after the first is stored; ON CONFLICT (event_id) DO NOTHING",
        ),
    ]


def markdown_table(cases: list[PoisonCase]) -> str:
    """The corpus as the Markdown table of docs/poison-messages.md."""
    lines = [
        "| case | message | outcome | stage | error_class | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for case in cases:
        expected = case.expected
        error_class = expected.error_class or ""
        if expected.sqlstate:
            error_class += f" (SQLSTATE {expected.sqlstate})"
        lines.append(
            f"| `{case.name}` | {case.description} | {expected.outcome.value} "
            f"| {expected.stage or ''} | {error_class} | {case.note} |"
        )
    return "\n".join(lines) + "\n"
