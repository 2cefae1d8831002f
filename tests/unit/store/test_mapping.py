"""The row functions compiled from a catalog: what each column receives from a message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kingest.catalog import load_catalog, message_class
from kingest.store.mapping import ENVELOPE_WIDTH, compile_row_functions
from kingest.store.tables import write_plan
from tests.catalog_support import OPTIONS_IMPORT, compile_catalog

FLATTENED = f"""
syntax = "proto3";
package team.v1;
{OPTIONS_IMPORT}

message Span {{
  uint32 start = 1;
  bool in_completion = 2;
  optional int32 confidence = 3;
  string label = 4;
}}

message Hit {{
  string rule = 1;
  Span span = 2 [(kingest.options.v1.column).flatten = true];
}}
"""


def rows_of(tmp_path: Path, *messages: Any) -> list[dict[str, Any]]:
    catalog = load_catalog(
        compile_catalog(tmp_path, {"team/v1/hit.proto": FLATTENED}),
        schema="team",
        topic_types={"hits": "team.v1.Hit"},
    )
    (table,) = catalog.fact_tables
    row = compile_row_functions(write_plan(catalog))[table.event_type]
    names = [column.name for column in table.payload_columns]
    rows = []
    for build in messages:
        buffers: list[list[Any]] = [[] for _ in range(ENVELOPE_WIDTH + len(names))]
        row(build(message_class(catalog, "team.v1.Hit")), buffers)
        rows.append({name: buffers[ENVELOPE_WIDTH + i][0] for i, name in enumerate(names)})
    return rows


def test_a_flattened_message_gives_its_fields_or_nulls_when_unset(tmp_path: Path) -> None:
    unset, zero, full = rows_of(
        tmp_path,
        lambda hit: hit(rule="r"),
        lambda hit: hit(rule="r", span={}),
        lambda hit: hit(
            rule="r", span={"start": 7, "in_completion": True, "confidence": 0, "label": "x"}
        ),
    )
    # Unset message: every column NULL (the plain scalars are not asked for presence).
    assert unset == {
        "rule": "r",
        "span_start": None,
        "span_in_completion": None,
        "span_confidence": None,
        "span_label": "",  # optional text travels as '' and is NULL in SQL
    }
    # A set, empty message: the scalars' zero values; an optional field unset stays NULL.
    assert zero == {
        "rule": "r",
        "span_start": "0",
        "span_in_completion": "false",
        "span_confidence": None,
        "span_label": "",
    }
    assert full == {
        "rule": "r",
        "span_start": "7",
        "span_in_completion": "true",
        "span_confidence": "0",
        "span_label": "x",
    }
