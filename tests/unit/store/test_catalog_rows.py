"""A team's catalog through RowBatch: typed topics, framing, derived values, unknown fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from google.protobuf.message import Message

from kingest.catalog import load_catalog
from kingest.store import RowBatch, write_plan
from kingest.store.tables import ColumnType, WritePlan
from tests.catalog_support import OPTIONS_IMPORT, compile_catalog
from tests.fakes import FakeRecord

NOW = 1_760_000_000.0
SOURCE = f"""
syntax = "proto3";
package team.v1;
import "google/protobuf/timestamp.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/wrappers.proto";
{OPTIONS_IMPORT}

enum Tier {{
  TIER_UNSPECIFIED = 0;
  TIER_FREE = 1;
  TIER_PRO = 2 [(kingest.options.v1.label) = "paying"];
}}

message Limits {{
  int32 max_tokens = 1;
  string policy = 2;
}}

// One sample of a device.
message Sample {{
  string host = 1 [(kingest.options.v1.column).required = true];
  bytes raw = 2;
  uint64 big = 3;
  float ratio = 4;
  Tier tier = 5;
  google.protobuf.Duration window = 6;
  google.protobuf.Int64Value maybe = 7;
  repeated int64 counts = 8;
  map<string, double> scores = 9;
  Limits limits = 10 [(kingest.options.v1.column).flatten = true];
  optional int32 slot = 11;
  google.protobuf.Timestamp occurred_at = 12;
  double load = 13 [(kingest.options.v1.column).lte = 1];
}}

// The second message of the file: framed values may name it.
message Note {{
  string text = 1;
}}
"""


def _classes(raw: bytes) -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    for file in FileDescriptorSet.FromString(raw).file:
        pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
        for name in ("team.v1.Sample", "team.v1.Note")
    }


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_catalog(tmp_path_factory.mktemp("rows"), {"team/v1/sample.proto": SOURCE})


@pytest.fixture(scope="module")
def plan(compiled: bytes) -> WritePlan:
    catalog = load_catalog(
        compiled,
        schema="team",
        topic_types={"samples": "team.v1.Sample", "notes": "team.v1.Note"},
    )
    return write_plan(catalog)


def _sample(compiled: bytes, **fields: Any) -> Message:
    return _classes(compiled)["team.v1.Sample"](host="gpu-1", **fields)


def _rows(plan: WritePlan, *records: FakeRecord) -> RowBatch:
    batch = RowBatch(now=NOW, plan=plan)
    batch.add_records(records)
    return batch


def test_a_typed_topic_fills_every_column_as_the_type_table_says(
    compiled: bytes, plan: WritePlan
) -> None:
    sample = _sample(
        compiled,
        raw=b"\x00\xff",
        big=2**64 - 1,
        ratio=0.5,
        tier=2,
        maybe={"value": -3},
        counts=[1, 2],
        scores={"a": 1.5},
        limits={"max_tokens": 7},
        slot=0,
        load=0.25,
    )
    sample.window.seconds = 90
    sample.occurred_at.seconds = int(NOW) - 10
    batch = _rows(plan, FakeRecord(sample.SerializeToString(), topic="samples", offset=4))
    table = plan.by_event_type["sample"]
    (row,) = batch.rows(table)
    assert row["host"] == "gpu-1"
    assert row["raw"] == "\\x00ff"
    assert row["big"] == str(2**64 - 1)
    assert row["ratio"] == "0.5"
    assert row["tier"] == "paying"
    assert row["window"] == "90000000"
    assert row["maybe"] == "-3"
    assert row["counts"] == "[1, 2]"
    assert row["scores"] == '{"a": 1.5}'
    assert (row["limits_max_tokens"], row["limits_policy"]) == ("7", "")  # '': NULL in SQL
    assert row["slot"] == "0"  # set to zero: a value, not NULL
    assert row["occurred_at"] == (int(NOW) - 10) * 1_000_000
    assert row["load"] == 0.25
    # No event id in the message: derived from the coordinates, as for built-in events.
    assert len(row["event_id"]) == 36
    columns = {column.name: column for column in table.columns}
    assert columns["host"].type is ColumnType.TEXT
    assert columns["big"].type is ColumnType.CAST
    assert columns["big"].cast == "({})::numeric(20)"


def test_unset_values_are_null_and_the_kafka_timestamp_stands_in(
    compiled: bytes, plan: WritePlan
) -> None:
    record = FakeRecord(
        _sample(compiled).SerializeToString(), topic="samples", timestamp=(1, 1_750_000_000_123)
    )
    (row,) = _rows(plan, record).rows(plan.by_event_type["sample"])
    assert row["occurred_at"] == 1_750_000_000_123_000
    for name in ("raw", "tier", "window", "maybe", "limits_max_tokens", "slot"):
        assert row[name] in (None, ""), name  # '' of optional text is NULL in SQL


def test_rules_compiled_from_the_options_dead_letter_what_breaks_them(
    compiled: bytes, plan: WritePlan
) -> None:
    classes = _classes(compiled)
    records = [
        FakeRecord(
            classes["team.v1.Sample"](load=0.5).SerializeToString(), topic="samples", offset=1
        ),
        FakeRecord(_sample(compiled, load=2).SerializeToString(), topic="samples", offset=2),
        FakeRecord(_sample(compiled, tier=9).SerializeToString(), topic="samples", offset=3),
        FakeRecord(
            _sample(compiled).SerializeToString(), topic="samples", offset=4, timestamp=(0, 0)
        ),
    ]
    batch = _rows(plan, *records)
    assert [(r.offset, r.error_class, r.event_type) for r in batch.rejections] == [
        (1, "missing_field", "sample"),
        (2, "out_of_range", "sample"),
        (3, "unknown_enum", "sample"),
        (4, "missing_field", "sample"),
    ]
    assert batch.event_count == 0


def test_fields_the_catalog_does_not_define_make_a_dead_letter_not_a_cut_row(
    compiled: bytes, plan: WritePlan
) -> None:
    value = _sample(compiled, limits={"max_tokens": 1}).SerializeToString()
    ahead = value + b"\xa2\x06\x02hi"  # field 100, length-delimited: a newer producer's
    nested = _classes(compiled)["team.v1.Sample"](host="h")
    nested.limits.max_tokens = 1
    deep = nested.SerializeToString()
    deep_ahead = deep.replace(b"\x52\x02\x08\x01", b"\x52\x04\x08\x01\x18\x01")
    batch = _rows(
        plan,
        FakeRecord(ahead, topic="samples", offset=1),
        FakeRecord(deep_ahead, topic="samples", offset=2),
        FakeRecord(value, topic="samples", offset=3),
    )
    rejected = [(r.offset, r.error_class, r.error_message) for r in batch.rejections]
    assert [(offset, error) for offset, error, _ in rejected] == [
        (1, "unknown_fields"),
        (2, "unknown_fields"),
    ]
    assert "holds fields 100" in rejected[0][2]
    assert rejected[1][2].startswith("limits holds fields 3")
    assert batch.event_count == 1


def test_a_framed_value_may_name_another_message_of_the_types_file(
    compiled: bytes, plan: WritePlan
) -> None:
    note = _classes(compiled)["team.v1.Note"](text="hello").SerializeToString()
    # Index paths count the file's messages: [0] Limits (no table), [1] Sample, [2] Note.
    framed_note = b"\x00\x00\x00\x00\x07" + b"\x02\x04" + note
    framed_sample = b"\x00\x00\x00\x00\x07\x02\x02" + _sample(compiled).SerializeToString()
    unknown_path = b"\x00\x00\x00\x00\x07\x00" + note  # the short form of [0]: Limits
    batch = _rows(
        plan,
        FakeRecord(framed_note, topic="samples", offset=1),
        FakeRecord(framed_sample, topic="samples", offset=2),
        FakeRecord(unknown_path, topic="samples", offset=3),
        FakeRecord(note, topic="elsewhere", offset=4),
    )
    assert [row["text"] for row in batch.rows(plan.by_event_type["note"])] == ["hello"]
    assert len(batch.rows(plan.by_event_type["sample"])) == 1
    assert [(r.offset, r.error_class) for r in batch.rejections] == [
        (3, "unknown_message_index"),
        (4, "unknown_topic"),
    ]


def test_the_built_in_catalog_ignores_unknown_fields_as_before(tmp_path: Path) -> None:
    from kingest.schema.codec import encode_event  # noqa: PLC0415
    from kingest.schema.v1.events_pb2 import Event, MetricLogged  # noqa: PLC0415

    event = Event(metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    event.occurred_at.seconds = int(NOW) - 5
    batch = RowBatch(now=NOW)
    batch.add_records([FakeRecord(encode_event(event) + b"\xa2\x06\x02hi")])
    assert (batch.event_count, batch.rejection_count) == (1, 0)
