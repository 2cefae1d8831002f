"""Semantic validation rules: each rule accepts its boundary and rejects just past it."""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kingest.catalog import load_catalog, message_class
from kingest.dev.synth import SyntheticStream
from kingest.schema.codec import catalog_classes, decode_event, encode_event
from kingest.schema.v1.events_pb2 import (
    DataDriftDetected,
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
from kingest.schema.validate import (
    INDEXED_IDENTIFIER_FIELDS,
    EventValidator,
    ValidationError,
    event_type,
    validate_event,
)
from tests.catalog_support import OPTIONS_IMPORT, compile_catalog

NOW = 1_760_000_000.0
DAY = 86_400


def _envelope(**payload: object) -> Event:
    event = Event(
        event_id="0b1c7a5e-8a4c-4e6b-9f0e-2f1f4a5b6c7d",
        correlation_id="flow-1",
        source="test",
        **payload,  # type: ignore[arg-type]
    )
    event.occurred_at.seconds = int(NOW) - 60
    return event


VALID_EVENTS: dict[str, Callable[[], Event]] = {
    "training_run_started": lambda: _envelope(
        training_run_started=TrainingRunStarted(run_id="run-1", hyperparameters={"lr": "3e-4"})
    ),
    "training_run_finished": lambda: _envelope(
        training_run_finished=TrainingRunFinished(
            run_id="run-1",
            status=RunStatus.RUN_STATUS_SUCCEEDED,
            duration_seconds=10.0,
            summary_metrics={"loss": 0.1},
        )
    ),
    "metric_logged": lambda: _envelope(
        metric_logged=MetricLogged(run_id="run-1", key="loss", value=0.5, step=0)
    ),
    "model_version_registered": lambda: _envelope(
        model_version_registered=ModelVersionRegistered(
            model_name="m", version="1", size_bytes=0, tags={"a": "b"}
        )
    ),
    "model_deployed": lambda: _envelope(
        model_deployed=ModelDeployed(
            model_name="m", version="1", environment="prod", traffic_percent=100.0
        )
    ),
    "inference_completed": lambda: _envelope(
        inference_completed=InferenceCompleted(
            model_name="m", latency_ms=0.0, status=InferenceStatus.INFERENCE_STATUS_OK
        )
    ),
    "evaluation_completed": lambda: _envelope(
        evaluation_completed=EvaluationCompleted(model_name="m", metrics={"f1": 0.9})
    ),
    "data_drift_detected": lambda: _envelope(
        data_drift_detected=DataDriftDetected(model_name="m", score=0.3, threshold=0.2)
    ),
}


def _rejection(event: Event, now: float = NOW) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as caught:
        validate_event(event, now=now)
    return caught.value.error_class, caught.value.field


def test_every_payload_type_has_a_valid_example() -> None:
    payload_names = {f.name for f in Event.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert set(VALID_EVENTS) == payload_names


@pytest.mark.parametrize("kind", sorted(VALID_EVENTS))
def test_minimal_valid_event_passes(kind: str) -> None:
    event = VALID_EVENTS[kind]()
    validate_event(event, now=NOW)
    assert event_type(event) == kind


def test_synthetic_stream_is_valid() -> None:
    stream = SyntheticStream(seed=11, base_time=NOW)
    for record in stream.take(5000):
        validate_event(decode_event(record.value), now=NOW)


def test_missing_payload() -> None:
    event = _envelope()
    assert _rejection(event) == ("missing_payload", "payload")
    with pytest.raises(ValidationError) as caught:
        event_type(event)
    assert caught.value.error_class == "missing_payload"


@pytest.mark.parametrize(
    "event_id",
    [
        "",
        "0b1c7a5e-8a4c-4e6b-9f0e-2f1f4a5b6c7d",
        "0B1C7A5E-8A4C-4E6B-9F0E-2F1F4A5B6C7D",
        "0b1c7a5e8a4c4e6b9f0e2f1f4a5b6c7d",
        "00000000-0000-0000-0000-000000000000",
    ],
)
def test_accepted_event_ids(event_id: str) -> None:
    event = VALID_EVENTS["metric_logged"]()
    event.event_id = event_id
    validate_event(event, now=NOW)


@pytest.mark.parametrize(
    "event_id",
    [
        "{0b1c7a5e-8a4c-4e6b-9f0e-2f1f4a5b6c7d}",
        "urn:uuid:0b1c7a5e-8a4c-4e6b-9f0e-2f1f4a5b6c7d",
        "0b1c7a5e-8a4c-4e6b-9f0e-2f1f4a5b6c7",
        "0b1c7a5e-8a4c-4e6b-9f0e-2f1f4a5b6c7d0",
        "0b1c7a5e8a4c4e6b9f0e2f1f4a5b6c7g",
        "0b1c7a5e-8a4c4e6b-9f0e-2f1f4a5b6c7d",
        "order-1234",
    ],
)
def test_rejected_event_ids(event_id: str) -> None:
    event = VALID_EVENTS["metric_logged"]()
    event.event_id = event_id
    assert _rejection(event) == ("invalid_uuid", "event_id")


def test_occurred_at_must_be_set() -> None:
    event = VALID_EVENTS["metric_logged"]()
    event.ClearField("occurred_at")
    assert _rejection(event) == ("missing_field", "occurred_at")


@pytest.mark.parametrize(
    ("seconds", "nanos", "valid"),
    [
        (946_684_800, 0, True),
        (946_684_799, 999_999_999, False),
        (int(NOW) + DAY, 0, True),
        (int(NOW) + DAY + 1, 0, False),
        (int(NOW), 999_999_999, True),
        (int(NOW), -1, False),
        (int(NOW), 1_000_000_000, False),
    ],
)
def test_occurred_at_bounds(seconds: int, nanos: int, valid: bool) -> None:
    event = VALID_EVENTS["metric_logged"]()
    event.occurred_at.seconds = seconds
    event.occurred_at.nanos = nanos
    if valid:
        validate_event(event, now=NOW)
    else:
        assert _rejection(event) == ("timestamp_out_of_range", "occurred_at")


def test_now_defaults_to_the_current_time() -> None:
    event = VALID_EVENTS["metric_logged"]()
    event.occurred_at.GetCurrentTime()
    validate_event(event)
    event.occurred_at.seconds += 2 * DAY
    with pytest.raises(ValidationError):
        validate_event(event)


def _set(path: str, value: object) -> Callable[[Event], None]:
    """A mutation setting the field at dotted ``path`` (from the envelope) to ``value``."""

    def mutate(event: Event) -> None:
        *parents, name = path.split(".")
        target = event
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return mutate


def _put(path: str, key: str, value: object) -> Callable[[Event], None]:
    """A mutation adding ``key: value`` to the map at ``payload.field`` ``path``."""

    def mutate(event: Event) -> None:
        kind, name = path.split(".")
        getattr(getattr(event, kind), name)[key] = value

    return mutate


LONG = "x" * 1025
TEXT_REJECTIONS = [
    # (payload example, mutation, field reported)
    ("metric_logged", _set("source", LONG), "source"),
    ("metric_logged", _set("correlation_id", LONG), "correlation_id"),
    ("metric_logged", _set("metric_logged.key", LONG), "metric_logged.key"),
    (
        "training_run_finished",
        _set("training_run_finished.error_message", "e" * 8193),
        "training_run_finished.error_message",
    ),
    (
        "model_version_registered",
        _set("model_version_registered.artifact_uri", "s" * 8193),
        "model_version_registered.artifact_uri",
    ),
    (
        "training_run_started",
        _put("training_run_started.hyperparameters", LONG, "v"),
        "training_run_started.hyperparameters key",
    ),
    (
        "model_version_registered",
        _put("model_version_registered.tags", "k", LONG),
        "model_version_registered.tags[k]",
    ),
]


@pytest.mark.parametrize(("kind", "mutate", "field"), TEXT_REJECTIONS)
def test_text_over_its_limit_is_too_long(
    kind: str, mutate: Callable[[Event], None], field: str
) -> None:
    event = VALID_EVENTS[kind]()
    mutate(event)
    assert _rejection(event) == ("too_long", field)
    # The same verdict when the caller supplies the decoded value's length.
    value = encode_event(event, schema_id=1)
    with pytest.raises(ValidationError) as caught:
        validate_event(decode_event(value), now=NOW, encoded_size=len(value))
    assert (caught.value.error_class, caught.value.field) == ("too_long", field)


_CHARS = st.characters(codec="utf-8")
# Short strings, and strings around the 1024-character limit (most of them multi-byte).
TEXT = st.text(_CHARS, max_size=20) | st.text(_CHARS, min_size=1000, max_size=1050)


@settings(max_examples=300, deadline=None)
@given(source=TEXT, key=TEXT, run_id=TEXT, hyperparameter=TEXT)
def test_encoded_size_shortcut_agrees_with_the_full_check(
    source: str, key: str, run_id: str, hyperparameter: str
) -> None:
    event = VALID_EVENTS["training_run_started"]()
    event.source = source
    event.training_run_started.run_id = run_id or "run-1"
    event.training_run_started.hyperparameters[key] = hyperparameter
    value = encode_event(event)

    def verdict(**hint: int | bytes) -> str | None:
        try:
            validate_event(decode_event(value), now=NOW, **hint)  # type: ignore[arg-type]
        except ValidationError as exc:
            return exc.error_class
        return None

    expected = None
    texts = (source, key, run_id, hyperparameter)
    if max(map(len, texts)) > 1024 or len(run_id.encode()) > 1024:
        expected = "too_long"
    elif any("\x00" in text for text in texts):
        expected = "nul_character"
    assert verdict() == verdict(encoded_size=len(value)) == verdict(encoded=value) == expected


PAYLOAD_REJECTIONS = [
    # (payload, field, value, error class)
    ("training_run_started", "run_id", "", "missing_field"),
    ("training_run_finished", "run_id", "", "missing_field"),
    ("metric_logged", "run_id", "", "missing_field"),
    ("metric_logged", "key", "", "missing_field"),
    ("model_version_registered", "model_name", "", "missing_field"),
    ("model_version_registered", "version", "", "missing_field"),
    ("model_deployed", "model_name", "", "missing_field"),
    ("model_deployed", "version", "", "missing_field"),
    ("model_deployed", "environment", "", "missing_field"),
    ("inference_completed", "model_name", "", "missing_field"),
    ("evaluation_completed", "model_name", "", "missing_field"),
    ("data_drift_detected", "model_name", "", "missing_field"),
    ("training_run_finished", "status", 0, "missing_field"),
    ("training_run_finished", "status", 9, "unknown_enum"),
    ("inference_completed", "status", 0, "missing_field"),
    ("inference_completed", "status", 4, "unknown_enum"),
    ("data_drift_detected", "severity", 4, "unknown_enum"),
    ("metric_logged", "value", math.nan, "not_finite"),
    ("metric_logged", "value", math.inf, "not_finite"),
    ("inference_completed", "latency_ms", math.nan, "not_finite"),
    ("inference_completed", "latency_ms", math.inf, "not_finite"),
    ("model_deployed", "traffic_percent", math.nan, "not_finite"),
    ("training_run_finished", "duration_seconds", math.inf, "not_finite"),
    ("training_run_finished", "duration_seconds", math.nan, "not_finite"),
    ("data_drift_detected", "score", -math.inf, "not_finite"),
    ("data_drift_detected", "threshold", math.nan, "not_finite"),
    ("metric_logged", "step", -1, "out_of_range"),
    ("model_version_registered", "size_bytes", -1, "out_of_range"),
    ("training_run_finished", "duration_seconds", -0.5, "out_of_range"),
    ("model_deployed", "traffic_percent", -0.1, "out_of_range"),
    ("model_deployed", "traffic_percent", 100.01, "out_of_range"),
    ("inference_completed", "latency_ms", -0.001, "out_of_range"),
    ("inference_completed", "latency_ms", 86_400_000.0, "out_of_range"),
    ("training_run_finished", "duration_seconds", 315_576_000.5, "out_of_range"),
    ("training_run_finished", "duration_seconds", 1e300, "out_of_range"),
]


@pytest.mark.parametrize(("kind", "name", "value", "error_class"), PAYLOAD_REJECTIONS)
def test_payload_rule_violations_are_classified(
    kind: str, name: str, value: object, error_class: str
) -> None:
    event = VALID_EVENTS[kind]()
    setattr(getattr(event, kind), name, value)
    assert _rejection(event) == (error_class, f"{kind}.{name}")


@pytest.mark.parametrize(
    ("kind", "name", "key"),
    [
        ("training_run_finished", "summary_metrics", "loss"),
        ("evaluation_completed", "metrics", "f1"),
    ],
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_map_values_must_be_finite(kind: str, name: str, key: str, value: float) -> None:
    event = VALID_EVENTS[kind]()
    getattr(getattr(event, kind), name)[key] = value
    assert _rejection(event) == ("not_finite", f"{kind}.{name}[{key}]")


ACCEPTED_BOUNDARIES = [
    ("metric_logged", _set("source", "x" * 1024)),
    ("metric_logged", _set("source", "é" * 1024)),  # 2048 bytes, 1024 characters
    ("training_run_finished", _set("training_run_finished.error_message", "e" * 8192)),
    ("model_deployed", _set("model_deployed.endpoint", "h" * 8192)),
    ("training_run_started", _put("training_run_started.hyperparameters", "k" * 1024, "v" * 1024)),
    ("model_deployed", _set("model_deployed.traffic_percent", 0.0)),
    ("model_deployed", _set("model_deployed.traffic_percent", 100.0)),
    ("inference_completed", _set("inference_completed.latency_ms", 86_399_999.999)),
    ("data_drift_detected", _set("data_drift_detected.severity", 0)),
    ("data_drift_detected", _set("data_drift_detected.severity", 3)),
    ("metric_logged", _set("metric_logged.value", -1e308)),
    ("evaluation_completed", _set("evaluation_completed.model_version", "")),
    ("training_run_finished", _set("training_run_finished.duration_seconds", 315_576_000.0)),
    # Indexed identifiers: 1024 UTF-8 bytes is the bound, whatever the characters.
    ("metric_logged", _set("metric_logged.run_id", "\U0001d538" * 256)),
    ("metric_logged", _set("correlation_id", "x" * 1024)),
    # Not indexed: only the character bound applies.
    ("training_run_started", _set("training_run_started.experiment", "\U0001d538" * 1024)),
    ("inference_completed", _set("inference_completed.request_id", "\U0001d538" * 1024)),
]


@pytest.mark.parametrize(
    ("kind", "mutate"),
    ACCEPTED_BOUNDARIES,
    ids=[f"{r[0]}-{i}" for i, r in enumerate(ACCEPTED_BOUNDARIES)],
)
def test_boundary_values_are_accepted(kind: str, mutate: Callable[[Event], None]) -> None:
    event = VALID_EVENTS[kind]()
    mutate(event)
    validate_event(event, now=NOW)


def test_validation_error_survives_pickling() -> None:
    error = ValidationError("too_long", "source", "source has 2000 characters")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.error_class, copy.field, str(copy)) == ("too_long", "source", str(error))


# --- NUL characters and indexed identifiers ---------------------------------------------


def _text_fields(kind: str) -> list[str]:
    """Dotted paths of every singular string field of the envelope and ``kind``'s payload."""
    payload: Any = Event.DESCRIPTOR.fields_by_name[kind].message_type
    envelope = [f.name for f in Event.DESCRIPTOR.fields if f.type == f.TYPE_STRING]
    own = [f"{kind}.{f.name}" for f in payload.fields if f.type == f.TYPE_STRING]
    return [name for name in envelope if name != "event_id"] + own


NUL_FIELDS = [(kind, path) for kind in sorted(VALID_EVENTS) for path in _text_fields(kind)]


def _verdicts(event: Event) -> set[tuple[str, str | None]]:
    """The rejection with and without each size hint, from plain and framed bytes."""
    found = set()
    for value in (encode_event(event), encode_event(event, schema_id=0)):
        for hint in ({}, {"encoded_size": len(value)}, {"encoded": value}):
            with pytest.raises(ValidationError) as caught:
                validate_event(decode_event(value), now=NOW, **hint)
            found.add((caught.value.error_class, caught.value.field))
    return found


@pytest.mark.parametrize(("kind", "path"), NUL_FIELDS, ids=[f"{k}-{p}" for k, p in NUL_FIELDS])
def test_nul_in_any_text_field_is_rejected(kind: str, path: str) -> None:
    event = VALID_EVENTS[kind]()
    _set(path, "a\x00b")(event)
    assert _verdicts(event) == {("nul_character", path)}


@pytest.mark.parametrize(
    ("kind", "name", "key", "value", "field"),
    [
        ("training_run_started", "hyperparameters", "l\x00r", "1", "hyperparameters key"),
        ("training_run_started", "hyperparameters", "lr", "\x00", "hyperparameters[lr]"),
        ("model_version_registered", "tags", "\x00", "v", "tags key"),
        ("model_version_registered", "tags", "stage", "p\x00", "tags[stage]"),
        ("training_run_finished", "summary_metrics", "lo\x00ss", 0.5, "summary_metrics key"),
        ("evaluation_completed", "metrics", "\x00f1", 0.5, "metrics key"),
    ],
)
def test_nul_in_map_keys_and_values_is_rejected(
    kind: str, name: str, key: str, value: object, field: str
) -> None:
    event = VALID_EVENTS[kind]()
    _put(f"{kind}.{name}", key, value)(event)
    assert _verdicts(event) == {("nul_character", f"{kind}.{field}")}


def test_every_text_field_is_covered_by_the_nul_test() -> None:
    """A string field added to the schema gets a NUL test case without editing this file."""
    names = {path.rsplit(".", 1)[-1] for _, path in NUL_FIELDS}
    for field in Event.DESCRIPTOR.oneofs_by_name["payload"].fields:
        payload: Any = field.message_type
        for sub in payload.fields:
            if sub.type == sub.TYPE_STRING:
                assert sub.name in names


def test_zero_bytes_outside_text_do_not_trip_the_nul_rule() -> None:
    """Doubles and framing headers hold 0x00 bytes; only a NUL in text is rejected."""
    event = VALID_EVENTS["model_deployed"]()
    event.model_deployed.traffic_percent = 100.0  # 0x4059000000000000
    for value in (encode_event(event), encode_event(event, schema_id=0)):
        assert b"\x00" in value
        assert validate_event(decode_event(value), now=NOW, encoded=value) == "model_deployed"


FOUR_BYTES = "\U0001d538"  # MATHEMATICAL DOUBLE-STRUCK CAPITAL A: 4 UTF-8 bytes


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("metric_logged", "correlation_id"),
        ("metric_logged", "metric_logged.run_id"),
        ("metric_logged", "metric_logged.key"),
        ("training_run_started", "training_run_started.run_id"),
        ("training_run_finished", "training_run_finished.run_id"),
        ("model_deployed", "model_deployed.model_name"),
        ("model_deployed", "model_deployed.environment"),
        ("inference_completed", "inference_completed.model_name"),
        ("evaluation_completed", "evaluation_completed.model_name"),
        ("data_drift_detected", "data_drift_detected.model_name"),
        ("model_version_registered", "model_version_registered.model_name"),
    ],
)
def test_indexed_identifier_is_bounded_in_utf8_bytes(kind: str, path: str) -> None:
    """1024 four-byte characters pass the character bound but not a btree entry (2704 B)."""
    event = VALID_EVENTS[kind]()
    _set(path, FOUR_BYTES * 1024)(event)
    assert _verdicts(event) == {("too_long", path)}
    _set(path, FOUR_BYTES * 256 + "x")(event)  # 1025 bytes: just past the bound
    assert _verdicts(event) == {("too_long", path)}
    _set(path, FOUR_BYTES * 256)(event)  # exactly 1024 bytes
    validate_event(event, now=NOW)


def test_indexed_identifier_set_matches_the_indexed_columns() -> None:
    """Every text column in a btree index of sql/ is bounded (and nothing else is)."""
    sql_dir = Path(__file__).resolve().parents[3] / "sql"
    indexed: set[str] = set()
    for path in sql_dir.glob("*.sql"):
        text = path.read_text()
        for columns in re.findall(r"CREATE (?:UNIQUE )?INDEX \S+\s+ON \S+ \(([^)]*)\)", text):
            indexed.update(c.strip() for c in columns.split(","))
        for columns in re.findall(r"PRIMARY KEY \(([^)]*)\)", text):
            indexed.update(c.strip() for c in columns.split(","))
        indexed.update(re.findall(r"^\s+(\w+)\s+text PRIMARY KEY", text, re.MULTILINE))
    # Not identifiers from events: set by kingest itself (status, error_class) or the
    # numbers/timestamps of composite indexes.
    not_event_text = {"occurred_at", "step", "status", "status_at", "dead_lettered_at"}
    not_event_text |= {"error_class", "kafka_topic", "kafka_partition", "kafka_offset"}
    assert indexed - not_event_text == set(INDEXED_IDENTIFIER_FIELDS)


IGNORE_UNKNOWN_FIELDS = (
    "option (kingest.options.v1.catalog).unknown_fields = UNKNOWN_FIELDS_IGNORE;\n"
)
SHOP = """
syntax = "proto3";
package shop.v1;
import "google/protobuf/timestamp.proto";
import "kingest/options/v1/options.proto";

message ShopEvent {
  option (kingest.options.v1.table).envelope = true;
  string event_id = 1;
  google.protobuf.Timestamp occurred_at = 3;
  oneof event {
    CartUpdated cart_updated = 10;
  }
}

message CartUpdated {
  string cart_id = 1;
}
"""


@pytest.mark.parametrize(
    ("option", "error_class"),
    [("", "unknown_fields"), (IGNORE_UNKNOWN_FIELDS, "missing_payload")],
)
def test_an_event_type_newer_than_the_catalog_is_an_unknown_field(
    tmp_path: Path, option: str, error_class: str
) -> None:
    # A producer with a newer catalog sends an envelope whose oneof member the catalog
    # does not define: held back whole as unknown_fields, replayable once the catalog
    # has it (unless the file ignores unknown fields: then there is nothing to store).
    source = SHOP.replace(
        'import "kingest/options/v1/options.proto";\n', f"{OPTIONS_IMPORT}\n{option}"
    )
    catalog = load_catalog(compile_catalog(tmp_path, {"shop/v1/events.proto": source}))
    validator = EventValidator(catalog, catalog_classes(catalog))
    envelope = message_class(catalog, "shop.v1.ShopEvent")
    newer = envelope(event_id="")
    newer.occurred_at.FromSeconds(int(NOW))
    newer_member = b"\x5a\x03\x0a\x01c"  # field 11, a message holding cart_id "c"
    newer.MergeFromString(newer_member)
    with pytest.raises(ValidationError) as refused:
        validator.validate(newer, now=NOW)
    assert refused.value.error_class == error_class
    if error_class == "unknown_fields":
        assert "holds fields 11" in str(refused.value)
    with pytest.raises(ValidationError, match="no payload") as empty:
        validator.validate(envelope(event_id=""), now=NOW)
    assert empty.value.error_class == "missing_payload"
