"""A descriptor set to tables: the type table, the options, and every problem listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kingest.catalog import (
    ENVELOPE_COLUMNS,
    CatalogError,
    Column,
    FactTable,
    ValueKind,
    load_catalog,
    snake_case,
)
from tests.catalog_support import OPTIONS_IMPORT, compile_catalog

EVERY_TYPE = """
syntax = "proto3";
package team.v1;
import "google/protobuf/timestamp.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/wrappers.proto";
import "google/protobuf/struct.proto";

enum Tier {
  TIER_UNSPECIFIED = 0;
  TIER_FREE = 1;
  TIER_PRO = 2;
}

message Usage {
  int32 prompt = 1;
  int64 total = 2;
}

// GPU utilisation of one device.
message GPUSample {
  // When the sample was taken.
  google.protobuf.Timestamp occurred_at = 1;
  string event_id = 2;
  string host = 3;
  bytes raw = 4;
  int32 a_int32 = 5;
  sint32 a_sint32 = 6;
  uint32 a_uint32 = 7;
  fixed32 a_fixed32 = 8;
  int64 a_int64 = 9;
  uint64 a_uint64 = 10;
  fixed64 a_fixed64 = 11;
  float a_float = 12;
  double a_double = 13;
  bool a_bool = 14;
  Tier tier = 15;
  google.protobuf.Duration window = 16;
  google.protobuf.DoubleValue maybe_double = 17;
  google.protobuf.StringValue maybe_text = 18;
  repeated string tags = 19;
  repeated int64 counts = 20;
  repeated Tier tiers = 21;
  map<string, double> scores = 22;
  google.protobuf.Struct attributes = 23;
  Usage usage = 24;
  repeated Usage history = 25;
  optional int32 maybe_int = 26;
  oneof target {
    string device = 27;
    int32 slot = 28;
  }
}
"""


@pytest.fixture(scope="module")
def every_type(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_catalog(tmp_path_factory.mktemp("every"), {"team/v1/types.proto": EVERY_TYPE})


def _payload(table: FactTable) -> dict[str, Column]:
    return {column.name: column for column in table.payload_columns}


def test_a_message_of_a_topic_needs_no_options_and_every_type_has_its_column(
    every_type: bytes,
) -> None:
    catalog = load_catalog(every_type, topic_types={"gpu": "team.v1.GPUSample"})
    (table,) = catalog.fact_tables
    assert (table.name, table.event_type, table.message) == (
        "gpu_sample",
        "gpu_sample",
        "team.v1.GPUSample",
    )
    assert table.comment == "One row per GPUSample event: GPU utilisation of one device."
    assert table.columns[: len(ENVELOPE_COLUMNS)] == ENVELOPE_COLUMNS
    columns = _payload(table)
    # The envelope fields of a topic's message are the envelope columns, not payload.
    assert "occurred_at" not in columns
    assert "event_id" not in columns
    shapes = {name: (c.sql_type, c.not_null, c.default) for name, c in columns.items()}
    assert shapes == {
        "host": ("text", False, None),
        "raw": ("bytea", False, None),
        "a_int32": ("integer", True, None),
        "a_sint32": ("integer", True, None),
        "a_uint32": ("bigint", True, None),
        "a_fixed32": ("bigint", True, None),
        "a_int64": ("bigint", True, None),
        "a_uint64": ("numeric(20)", True, None),
        "a_fixed64": ("numeric(20)", True, None),
        "a_float": ("real", True, None),
        "a_double": ("double precision", True, None),
        "a_bool": ("boolean", True, None),
        "tier": ("text", False, None),
        "window": ("interval", False, None),
        "maybe_double": ("double precision", False, None),
        "maybe_text": ("text", False, None),
        "tags": ("text[]", True, "'{}'"),
        "counts": ("bigint[]", True, "'{}'"),
        "tiers": ("text[]", True, "'{}'"),
        "scores": ("jsonb", True, "'{}'"),
        "attributes": ("jsonb", False, None),
        "usage": ("jsonb", False, None),
        "history": ("jsonb", True, "'[]'"),
        "maybe_int": ("integer", False, None),
        "device": ("text", False, None),
        "slot": ("integer", False, None),
    }
    assert columns["tier"].check_values == ("free", "pro")
    assert columns["tier"].field is not None
    assert dict(columns["tier"].field.labels) == {0: "unspecified", 1: "free", 2: "pro"}
    assert columns["maybe_double"].field is not None
    assert columns["maybe_double"].field.wrapped
    assert columns["slot"].field is not None
    assert columns["slot"].field.present
    assert columns["counts"].field is not None
    assert columns["counts"].field.element is ValueKind.INT
    assert columns["host"].field is not None
    assert columns["host"].field.proto_type == "string"
    assert columns["tags"].field is not None
    assert columns["tags"].field.proto_type == "repeated string"
    assert [i.name for i in table.indexes] == ["gpu_sample_correlation_id_idx"]


OPTIONED = f"""
syntax = "proto3";
package team.v1;
import "google/protobuf/timestamp.proto";
{OPTIONS_IMPORT}

message Envelope {{
  option (kingest.options.v1.table).envelope = true;
  string event_id = 1;
  google.protobuf.Timestamp occurred_at = 2;
  oneof event {{
    Completed completed = 10;
    Ignored ignored = 11;
  }}
}}

message Limits {{
  int32 max_tokens = 1;
  string policy = 2;
}}

message Completed {{
  option (kingest.options.v1.table) = {{
    name: "completions"
    indexes: {{columns: ["conversation_id", "occurred_at"]}}
  }};
  string conversation_id = 1 [(kingest.options.v1.column).required = true];
  string model = 2 [(kingest.options.v1.column).keep_empty = true];
  double cost = 3 [(kingest.options.v1.column) = {{gte: 0, lt: 100, type: "numeric"}}];
  Limits limits = 4 [(kingest.options.v1.column).flatten = true];
  string order = 5 [(kingest.options.v1.column).name = "order"];
}}

message Ignored {{
  option (kingest.options.v1.table).skip = true;
  string anything = 1;
}}
"""


def test_options_name_tables_and_shape_columns(tmp_path: Path) -> None:
    catalog = load_catalog(
        compile_catalog(tmp_path, {"team/v1/events.proto": OPTIONED}), schema="team"
    )
    assert catalog.envelope == "team.v1.Envelope"
    (table,) = catalog.fact_tables
    assert (table.name, table.event_type) == ("completions", "completed")
    columns = _payload(table)
    assert list(columns) == [
        "conversation_id",
        "model",
        "cost",
        "limits_max_tokens",
        "limits_policy",
        "order",
    ]
    assert (columns["conversation_id"].not_null, columns["model"].not_null) == (True, True)
    cost = columns["cost"]
    assert cost.sql_type == "numeric"
    assert cost.field is not None
    assert (cost.field.gte, cost.field.lte, cost.field.lt) == (
        0,
        None,
        100,
    )
    flattened = columns["limits_max_tokens"]
    assert flattened.field is not None
    assert flattened.field.path == ("limits", "max_tokens")
    # A field of a nested message that may be unset is NULL then.
    assert not flattened.not_null
    assert [index.name for index in table.indexes] == [
        "completions_conversation_id_occurred_at_idx",
        "completions_correlation_id_idx",
    ]
    assert catalog.digest
    assert catalog.schema == "team"


BROKEN = f"""
syntax = "proto3";
package team.v1;
{OPTIONS_IMPORT}

option (kingest.options.v1.catalog) = {{
  state_tables: {{name: "orphans"}}
}};

message Envelope {{
  option (kingest.options.v1.table).envelope = true;
  string event_id = 1;
  oneof event {{
    Bad bad = 10;
  }}
}}

message Bad {{
  option (kingest.options.v1.table) = {{
    name: "Bad-Name"
    indexes: {{columns: ["nowhere"]}}
    updates: {{table: "undeclared" key: ["missing"]}}
  }};
  string x = 1;
}}
"""


def test_every_problem_of_a_catalog_is_listed_at_once(tmp_path: Path) -> None:
    raw = compile_catalog(tmp_path, {"team/v1/broken.proto": BROKEN})
    with pytest.raises(CatalogError) as caught:
        load_catalog(raw, schema="Not A Schema", topic_types={"t": "team.v1.Nope"})
    text = str(caught.value)
    for expected in (
        "schema name 'Not A Schema' is not a lowercase SQL identifier",
        "table name 'Bad-Name' is not a lowercase SQL identifier",
        "names unknown columns ['nowhere']",
        "without at_column",
        "without event_id_column",
        "by key missing, not a column",
        "topic t: message team.v1.Nope is not in the catalog",
    ):
        assert expected in text
    assert len(caught.value.problems) >= 7


def test_state_problems_are_listed(tmp_path: Path) -> None:
    source = (
        BROKEN.replace('name: "Bad-Name"', 'name: "bad"')
        .replace('indexes: {columns: ["nowhere"]}', "")
        .replace('key: ["missing"]', 'key: ["x"] at_column: "at" event_id_column: "id"')
    )
    with pytest.raises(CatalogError) as caught:
        load_catalog(compile_catalog(tmp_path, {"team/v1/broken.proto": source}))
    assert caught.value.problems == [
        "bad updates undeclared, which no file declares",
        "state table orphans is updated by no message",
    ]


def test_bytes_that_are_no_descriptor_set_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not a FileDescriptorSet"):
        load_catalog(b"\xff\xff\xff")
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        load_catalog(tmp_path / "missing.binpb")


def test_a_set_without_envelope_or_topics_has_no_table(every_type: bytes) -> None:
    with pytest.raises(CatalogError, match="no envelope message"):
        load_catalog(every_type)


@pytest.mark.parametrize(
    ("name", "snake"),
    [
        ("PromptCompleted", "prompt_completed"),
        ("GPUSample", "gpu_sample"),
        ("Event", "event"),
        ("ModelV2Deployed", "model_v2_deployed"),
    ],
)
def test_message_names_become_snake_case_tables(name: str, snake: str) -> None:
    assert snake_case(name) == snake
