"""Kafka records to column buffers: values, keys, correlation ids, rejections, bisecting."""

from __future__ import annotations

import json
import uuid
from typing import Any

import confluent_kafka
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import (
    DataDriftDetected,
    DriftSeverity,
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
from kingest.schema.validate import EventValidator, payload_of
from kingest.store.event_ids import DERIVED_EVENT_ID_NAMESPACE, derive_event_id
from kingest.store.rows import KafkaRecord, Rejection, RowBatch
from kingest.store.tables import FACT_TABLES, TABLES_BY_EVENT_TYPE, WriteTable
from tests.fakes import FakeRecord

NOW = 1_750_000_000.0
OCCURRED = Timestamp(seconds=1_749_999_000, nanos=123_456_789)
OCCURRED_US = 1_749_999_000_123_456  # nanos truncated to microseconds
EVENT_ID = "6f1c2a9e-8b7d-4c3e-9f10-1a2b3c4d5e6f"


def event(**fields: Any) -> Event:
    """An Event with a valid envelope; ``fields`` set the payload and override the rest."""
    envelope: dict[str, Any] = {
        "event_id": EVENT_ID,
        "correlation_id": "flow-1",
        "occurred_at": OCCURRED,
        "source": "unit/test",
    }
    envelope.update(fields)
    return Event(**envelope)


def record(message: Event, **kwargs: Any) -> FakeRecord:
    return FakeRecord(encode_event(message), **kwargs)


def batch_of(*records: KafkaRecord) -> RowBatch:
    rows = RowBatch(now=NOW)
    rows.add_records(records)
    return rows


def only_row(rows: RowBatch, table: WriteTable) -> dict[str, Any]:
    (row,) = rows.rows(table)
    return row


ENVELOPE_ROW = {
    "event_id": EVENT_ID,
    "occurred_at": OCCURRED_US,
    "correlation_id": "flow-1",
    "source": "unit/test",
    "kafka_topic": "events",
    "kafka_partition": 3,
    "kafka_offset": 0,
}


# --- one test per event type: every column of the row ----------------------------------


def test_training_run_started_row() -> None:
    payload = TrainingRunStarted(
        run_id="run-1",
        experiment="exp",
        model_name="llama",
        framework="pytorch",
        dataset="",
        owner="alice",
        gpu_count=8,
        hyperparameters={"lr": "0.001", "batch": "64"},
    )
    rows = batch_of(record(event(training_run_started=payload)))
    row = only_row(rows, TABLES_BY_EVENT_TYPE["training_run_started"])
    assert json.loads(row.pop("hyperparameters")) == {"lr": "0.001", "batch": "64"}
    assert row == ENVELOPE_ROW | {
        "run_id": "run-1",
        "experiment": "exp",
        "model_name": "llama",
        "framework": "pytorch",
        "dataset": "",  # empty optional text travels as '' and lands as NULL
        "owner": "alice",
        "gpu_count": 8,
    }


def test_training_run_finished_row() -> None:
    payload = TrainingRunFinished(
        run_id="run-1",
        status=RunStatus.RUN_STATUS_FAILED,
        duration_seconds=12.5,
        summary_metrics={"loss": 0.25},
        error_message="CUDA out of memory",
    )
    rows = batch_of(record(event(training_run_finished=payload)))
    row = only_row(rows, TABLES_BY_EVENT_TYPE["training_run_finished"])
    assert json.loads(row.pop("summary_metrics")) == {"loss": 0.25}
    assert row == ENVELOPE_ROW | {
        "run_id": "run-1",
        "status": "failed",
        "duration_seconds": 12.5,
        "error_message": "CUDA out of memory",
    }


def test_metric_logged_row() -> None:
    payload = MetricLogged(run_id="run-1", key="loss", value=0.125, step=2**40, epoch=3)
    row = only_row(batch_of(record(event(metric_logged=payload))), FACT_TABLES[2])
    assert row == ENVELOPE_ROW | {
        "run_id": "run-1",
        "key": "loss",
        "value": 0.125,
        "step": 2**40,
        "epoch": 3,
    }


def test_model_version_registered_row_with_empty_map() -> None:
    payload = ModelVersionRegistered(
        model_name="llama", version="7", artifact_uri="s3://models/llama/7", size_bytes=2**33
    )
    rows = batch_of(record(event(model_version_registered=payload)))
    row = only_row(rows, TABLES_BY_EVENT_TYPE["model_version_registered"])
    assert row == ENVELOPE_ROW | {
        "model_name": "llama",
        "version": "7",
        "run_id": "",
        "artifact_uri": "s3://models/llama/7",
        "size_bytes": 2**33,
        "tags": "{}",
    }


def test_model_deployed_row() -> None:
    payload = ModelDeployed(
        model_name="llama",
        version="7",
        environment="prod",
        endpoint="https://serve/llama",
        replicas=4,
        traffic_percent=12.5,
    )
    row = only_row(
        batch_of(record(event(model_deployed=payload))), TABLES_BY_EVENT_TYPE["model_deployed"]
    )
    assert row == ENVELOPE_ROW | {
        "model_name": "llama",
        "version": "7",
        "environment": "prod",
        "endpoint": "https://serve/llama",
        "replicas": 4,
        "traffic_percent": 12.5,
    }


def test_inference_completed_row() -> None:
    payload = InferenceCompleted(
        request_id="req-9",
        model_name="llama",
        model_version="7",
        environment="prod",
        latency_ms=812.25,
        input_tokens=2**32 - 1,
        output_tokens=17,
        status=InferenceStatus.INFERENCE_STATUS_TIMEOUT,
        error_code="deadline",
    )
    rows = batch_of(record(event(inference_completed=payload)))
    row = only_row(rows, TABLES_BY_EVENT_TYPE["inference_completed"])
    assert row == ENVELOPE_ROW | {
        "request_id": "req-9",
        "model_name": "llama",
        "model_version": "7",
        "environment": "prod",
        "latency_ms": 812.25,
        "input_tokens": 2**32 - 1,
        "output_tokens": 17,
        "status": "timeout",
        "error_code": "deadline",
    }


def test_evaluation_completed_row() -> None:
    payload = EvaluationCompleted(
        evaluation_id="ev-1",
        model_name="llama",
        model_version="7",
        dataset="mmlu",
        metrics={"accuracy": 0.75, "f1": 0.5},
        passed=True,
    )
    rows = batch_of(record(event(evaluation_completed=payload)))
    row = only_row(rows, TABLES_BY_EVENT_TYPE["evaluation_completed"])
    assert json.loads(row.pop("metrics")) == {"accuracy": 0.75, "f1": 0.5}
    assert row == ENVELOPE_ROW | {
        "evaluation_id": "ev-1",
        "model_name": "llama",
        "model_version": "7",
        "dataset": "mmlu",
        "passed": True,
    }


@pytest.mark.parametrize(
    ("severity", "stored"),
    [
        (DriftSeverity.DRIFT_SEVERITY_HIGH, "high"),
        (DriftSeverity.DRIFT_SEVERITY_UNSPECIFIED, ""),  # lands as NULL
    ],
)
def test_data_drift_detected_row(severity: DriftSeverity, stored: str) -> None:
    payload = DataDriftDetected(
        model_name="llama",
        model_version="7",
        feature="age",
        method="psi",
        score=0.4,
        threshold=0.2,
        severity=severity,
    )
    rows = batch_of(record(event(data_drift_detected=payload)))
    row = only_row(rows, TABLES_BY_EVENT_TYPE["data_drift_detected"])
    assert row == ENVELOPE_ROW | {
        "model_name": "llama",
        "model_version": "7",
        "feature": "age",
        "method": "psi",
        "score": 0.4,
        "threshold": 0.2,
        "severity": stored,
    }


def test_rows_go_to_their_tables_in_arrival_order() -> None:
    metric = MetricLogged(run_id="r", key="loss", value=1.0)
    inference = InferenceCompleted(model_name="m", status=InferenceStatus.INFERENCE_STATUS_OK)
    records = [
        record(event(event_id="", metric_logged=metric), offset=10),
        record(event(event_id="", inference_completed=inference), offset=11),
        record(event(event_id="", metric_logged=metric), offset=12),
    ]
    rows = batch_of(*records)
    metrics = rows.rows(TABLES_BY_EVENT_TYPE["metric_logged"])
    assert [row["kafka_offset"] for row in metrics] == [10, 12]
    assert rows.counts_by_type == {"metric_logged": 2, "inference_completed": 1}
    assert rows.event_count == 3
    assert len(rows) == 3
    assert rows.source_records(TABLES_BY_EVENT_TYPE["metric_logged"]) == [records[0], records[2]]


# --- idempotency key and correlation id --------------------------------------------------


def test_derived_event_id_is_a_deterministic_uuid5_of_the_coordinates() -> None:
    derived = derive_event_id("events", 3, 42)
    assert derived == str(uuid.uuid5(DERIVED_EVENT_ID_NAMESPACE, "events/3/42"))
    assert derived == derive_event_id("events", 3, 42)
    assert derived != derive_event_id("events", 3, 43)
    assert derived != derive_event_id("events", 4, 42)
    assert derived != derive_event_id("other", 3, 42)
    # Pinned: a change of namespace or name format would give rows already stored a new
    # key on redelivery, hence duplicates.
    assert derived == "46ca0a0f-a10a-5275-92d7-cf28b3b44383"


def test_event_without_id_gets_the_derived_one_on_every_delivery() -> None:
    message = event(event_id="", metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    first = batch_of(record(message, offset=42))
    redelivered = batch_of(record(message, offset=42))
    table = TABLES_BY_EVENT_TYPE["metric_logged"]
    expected = derive_event_id("events", 3, 42)
    assert only_row(first, table)["event_id"] == expected
    assert only_row(redelivered, table)["event_id"] == expected


def test_producer_event_id_is_kept_as_sent() -> None:
    upper = EVENT_ID.upper()
    message = event(event_id=upper, metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    row = only_row(batch_of(record(message)), TABLES_BY_EVENT_TYPE["metric_logged"])
    assert row["event_id"] == upper  # PostgreSQL's uuid input normalises the case


@pytest.mark.parametrize(
    ("envelope", "headers", "expected"),
    [
        ("from-envelope", [("correlation-id", b"from-header")], "from-envelope"),
        ("", [("traceparent", b"00-x"), ("correlation-id", b"from-header")], "from-header"),
        ("", [("correlation-id", b"")], EVENT_ID),
        ("", None, EVENT_ID),
    ],
)
def test_correlation_id_precedence(
    envelope: str, headers: list[tuple[str, bytes | None]] | None, expected: str
) -> None:
    message = event(
        correlation_id=envelope, metric_logged=MetricLogged(run_id="r", key="k", value=1.0)
    )
    row = only_row(
        batch_of(record(message, headers=headers)), TABLES_BY_EVENT_TYPE["metric_logged"]
    )
    assert row["correlation_id"] == expected


def test_correlation_id_falls_back_to_the_derived_event_id() -> None:
    message = event(
        event_id="", correlation_id="", metric_logged=MetricLogged(run_id="r", key="k", value=1)
    )
    row = only_row(batch_of(record(message, offset=7)), TABLES_BY_EVENT_TYPE["metric_logged"])
    assert row["correlation_id"] == derive_event_id("events", 3, 7) == row["event_id"]


# --- rejections ----------------------------------------------------------------------------


def test_undecodable_value_becomes_a_decode_rejection_with_the_original_message() -> None:
    headers: list[tuple[str, bytes | None]] = [("correlation-id", b"c-9"), ("empty", None)]
    bad = FakeRecord(b"\xff\xff\xff", offset=77, key=b"k-1", headers=headers)
    rows = batch_of(bad)
    assert rows.event_count == 0
    assert rows.rejection_count == 1
    assert len(rows) == 1
    (rejection,) = rows.rejections
    assert rejection == Rejection(
        topic="events",
        partition=3,
        offset=77,
        key=b"k-1",
        value=b"\xff\xff\xff",
        headers=(("correlation-id", b"c-9"), ("empty", None)),
        kafka_timestamp_ms=1_749_999_000_500,
        error_stage="decode",
        error_class="invalid_protobuf",
        error_message=rejection.error_message,
        correlation_id="c-9",
    )
    assert rejection.error_message


def test_missing_value_is_rejected_and_missing_timestamp_is_none() -> None:
    rows = batch_of(FakeRecord(None, timestamp=(0, 0)))
    (rejection,) = rows.rejections
    assert (rejection.error_stage, rejection.error_class) == ("decode", "empty_value")
    assert rejection.kafka_timestamp_ms is None
    assert rejection.correlation_id is None


def test_invalid_event_becomes_a_validate_rejection_naming_the_event() -> None:
    message = event(
        event_id="not-a-uuid",
        metric_logged=MetricLogged(run_id="r", key="k", value=1.0),
    )
    rows = batch_of(record(message, offset=5))
    (rejection,) = rows.rejections
    assert rejection.error_stage == "validate"
    assert rejection.error_class == "invalid_uuid"
    assert rejection.event_id == "not-a-uuid"
    assert rejection.event_type == "metric_logged"
    assert rejection.correlation_id == "flow-1"
    assert rejection.value == encode_event(message)
    assert rejection.offset == 5


def test_a_rejection_does_not_stop_the_records_after_it() -> None:
    good = event(metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    missing_run = event(event_id="", metric_logged=MetricLogged(key="k", value=1.0))
    rows = batch_of(
        FakeRecord(b"\x00", offset=1),
        record(missing_run, offset=2),
        record(good, offset=3),
    )
    assert [r.error_class for r in rows.rejections] == ["truncated_wire_header", "missing_field"]
    assert rows.event_count == 1
    assert len(rows) == 3


def test_add_rejection_keeps_order_and_counts_bytes() -> None:
    rows = RowBatch(now=NOW)
    before = rows.nbytes
    rejection = Rejection(
        topic="t",
        partition=0,
        offset=1,
        key=None,
        value=b"x" * 1000,
        headers=(),
        kafka_timestamp_ms=None,
        error_stage="decode",
        error_class="invalid_protobuf",
        error_message="bad",
    )
    rows.add_rejection(rejection)
    assert rows.rejections == [rejection]
    assert rows.nbytes >= before + 1000


# --- extend, halves, as_rejected ---------------------------------------------------------


def mixed_records(count: int) -> list[FakeRecord]:
    """Alternating metric and inference events with distinct ids, offsets 0..count-1."""
    records = []
    for offset in range(count):
        if offset % 3 == 2:
            payload: dict[str, Any] = {
                "inference_completed": InferenceCompleted(
                    model_name="m", status=InferenceStatus.INFERENCE_STATUS_OK
                )
            }
        else:
            payload = {"metric_logged": MetricLogged(run_id="r", key="k", value=offset)}
        message = event(event_id=str(uuid.UUID(int=offset + 1)), **payload)
        records.append(record(message, offset=offset))
    return records


def all_rows(rows: RowBatch) -> list[tuple[str, dict[str, Any]]]:
    return [(table.name, row) for table in FACT_TABLES for row in rows.rows(table)]


def all_records(rows: RowBatch) -> list[KafkaRecord]:
    return [record for table in FACT_TABLES for record in rows.source_records(table)]


def test_extend_appends_rows_and_rejections() -> None:
    records = mixed_records(6)
    first = batch_of(*records[:3], FakeRecord(b"\xff", offset=100))
    second = batch_of(*records[3:])
    whole = batch_of(*records, FakeRecord(b"\xff", offset=100))
    first_bytes = first.nbytes
    first.extend(second)
    assert first.event_count == 6
    assert first.rejection_count == 1
    assert first.nbytes == first_bytes + second.nbytes
    assert sorted(map(repr, all_rows(first))) == sorted(map(repr, all_rows(whole)))
    assert second.event_count == 3  # left as it was


@pytest.mark.parametrize("count", [2, 3, 7, 10])
def test_halves_split_rows_in_order_and_keep_their_records(count: int) -> None:
    records = mixed_records(count)
    rows = batch_of(*records, FakeRecord(b"\xff", offset=999))
    first, second = rows.halves()
    assert first.event_count == count // 2
    assert second.event_count == count - count // 2
    assert all_rows(first) + all_rows(second) == all_rows(rows)
    assert all_records(first) + all_records(second) == all_records(rows)
    # Rejections are stored once: all of them travel with the first half.
    assert first.rejections == rows.rejections
    assert second.rejections == []
    assert first.nbytes + second.nbytes == rows.nbytes


def test_repeated_halving_isolates_every_row() -> None:
    pending = [batch_of(*mixed_records(9))]
    singles = []
    while pending:
        rows = pending.pop()
        if rows.event_count == 1:
            singles.append(rows)
        else:
            pending.extend(rows.halves())
    assert len(singles) == 9
    offsets = sorted(row["kafka_offset"] for single in singles for _, row in all_rows(single))
    assert offsets == list(range(9))


def test_halves_needs_two_rows() -> None:
    with pytest.raises(ValueError, match="two rows"):
        batch_of(*mixed_records(1)).halves()


def test_as_rejected_turns_rows_into_write_rejections_with_the_original_message() -> None:
    headers: list[tuple[str, bytes | None]] = [("traceparent", b"00-abc")]
    message = event(
        event_id="", correlation_id="", metric_logged=MetricLogged(run_id="r", key="k", value=1)
    )
    source = record(message, offset=31, key=b"run-r", headers=headers)
    rows = batch_of(source, FakeRecord(b"\xff", offset=32))
    rejected = rows.as_rejected(
        error_class="CharacterNotInRepertoire",
        error_message='invalid byte sequence for encoding "UTF8": 0x00',
        sqlstate="22021",
    )
    assert rejected.event_count == 0
    decode_rejection, write_rejection = rejected.rejections
    assert decode_rejection == rows.rejections[0]
    derived = derive_event_id("events", 3, 31)
    assert write_rejection == Rejection(
        topic="events",
        partition=3,
        offset=31,
        key=b"run-r",
        value=encode_event(message),
        headers=(("traceparent", b"00-abc"),),
        kafka_timestamp_ms=1_749_999_000_500,
        error_stage="write",
        error_class="CharacterNotInRepertoire",
        error_message='invalid byte sequence for encoding "UTF8": 0x00',
        sqlstate="22021",
        event_id=derived,
        event_type="metric_logged",
        correlation_id=derived,
    )


# --- memory accounting --------------------------------------------------------------------


def test_nbytes_grows_with_content() -> None:
    def metric(run_id: str, offset: int) -> FakeRecord:
        payload = MetricLogged(run_id=run_id, key="loss", value=1.0)
        return record(event(event_id=str(uuid.UUID(int=offset + 1)), metric_logged=payload))

    empty = RowBatch(now=NOW)
    small = batch_of(metric("r", 0))
    large = batch_of(metric("r" * 1000, 0))
    two = batch_of(metric("r", 0), metric("r", 1))
    assert empty.nbytes == 0
    assert 0 < small.nbytes < large.nbytes
    assert large.nbytes - small.nbytes >= 999  # at least the extra bytes of the value
    assert two.nbytes > small.nbytes


def test_confluent_kafka_message_is_a_kafka_record() -> None:
    message = event(metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    kafka_message = confluent_kafka.Message(
        topic="events",
        partition=3,
        offset=0,
        key=b"r",
        value=encode_event(message, schema_id=1),
        headers=[("correlation-id", b"ignored")],
        timestamp=(1, 1_749_999_000_500),
    )
    row = only_row(batch_of(kafka_message), TABLES_BY_EVENT_TYPE["metric_logged"])
    assert row == ENVELOPE_ROW | {
        "run_id": "r",
        "key": "k",
        "value": 1.0,
        "step": 0,
        "epoch": 0,
    }


def test_every_table_has_a_mapper_matching_its_columns() -> None:
    """Each table's buffers line up with its column list (rows() zips them strictly)."""
    samples: dict[str, dict[str, Any]] = {
        "training_run_started": {"training_run_started": TrainingRunStarted(run_id="r")},
        "training_run_finished": {
            "training_run_finished": TrainingRunFinished(
                run_id="r", status=RunStatus.RUN_STATUS_SUCCEEDED
            )
        },
        "metric_logged": {"metric_logged": MetricLogged(run_id="r", key="k")},
        "model_version_registered": {
            "model_version_registered": ModelVersionRegistered(model_name="m", version="1")
        },
        "model_deployed": {
            "model_deployed": ModelDeployed(model_name="m", version="1", environment="prod")
        },
        "inference_completed": {
            "inference_completed": InferenceCompleted(
                model_name="m", status=InferenceStatus.INFERENCE_STATUS_OK
            )
        },
        "evaluation_completed": {
            "evaluation_completed": EvaluationCompleted(model_name="m", model_version="1")
        },
        "data_drift_detected": {"data_drift_detected": DataDriftDetected(model_name="m")},
    }
    assert set(samples) == {table.event_type for table in FACT_TABLES}
    rows = batch_of(
        *(
            record(event(event_id=str(uuid.UUID(int=i + 1)), **payload), offset=i)
            for i, payload in enumerate(samples.values())
        )
    )
    assert rows.rejection_count == 0
    for table in FACT_TABLES:
        (row,) = rows.rows(table)
        assert tuple(row) == table.column_names


def test_an_enum_the_mapping_does_not_know_is_rejected_not_buffered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: should validation ever let an unknown enum through."""
    monkeypatch.setattr(EventValidator, "validate", lambda _s, event, *_, **__: payload_of(event))
    unknown = InferenceCompleted(model_name="m", status=99)  # type: ignore[arg-type]
    good = InferenceCompleted(model_name="m", status=InferenceStatus.INFERENCE_STATUS_OK)
    rows = batch_of(
        record(event(inference_completed=unknown), offset=1),
        record(event(event_id="", inference_completed=good), offset=2),
    )
    (rejection,) = rows.rejections
    assert (rejection.error_stage, rejection.error_class) == ("validate", "unknown_enum")
    (row,) = rows.rows(TABLES_BY_EVENT_TYPE["inference_completed"])  # columns still aligned
    assert (row["kafka_offset"], row["status"]) == (2, "ok")


def test_headers_given_as_a_dict_with_text_values_are_understood() -> None:
    """confluent_kafka admits dict headers and str values (e.g. on a built Message)."""
    headers = {"correlation-id": "c-text", "note": "ünï"}
    metric = event(correlation_id="", metric_logged=MetricLogged(run_id="r", key="k", value=1))
    kafka_message = confluent_kafka.Message(
        topic="events", partition=3, offset=0, value=encode_event(metric), headers=headers
    )
    row = only_row(batch_of(kafka_message), TABLES_BY_EVENT_TYPE["metric_logged"])
    assert row["correlation_id"] == "c-text"
    poison = confluent_kafka.Message(
        topic="events", partition=3, offset=1, value=b"\xff", headers=headers
    )
    (rejection,) = batch_of(poison).rejections
    assert rejection.headers == (("correlation-id", b"c-text"), ("note", "ünï".encode()))
    assert rejection.correlation_id == "c-text"
