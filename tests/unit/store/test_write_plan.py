"""The write plan against the schema and the row buffers, without PostgreSQL.

The statements of :data:`kingest.store.tables.WRITE_PLAN` are generated from the table
descriptions; these checks hold them to the migrations (``sql/*.sql``: the columns a
statement names exist, its ``ON CONFLICT`` target is the table's key) and to the row
buffers of :class:`RowBatch` (one array parameter per buffered column, in order).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from kingest.dev.synth import SyntheticStream
from kingest.store import Rejection, RowBatch, dead_letter_params
from kingest.store.dead_letter_sql import (
    INSERT_DEAD_LETTER,
    INSERT_UNPUBLISHED_DEAD_LETTER,
    SCHEMA,
)
from kingest.store.tables import (
    ENVELOPE,
    FACT_TABLES,
    WRITE_PLAN,
    Statement,
    WriteTable,
    iter_statement_tables,
)
from tests.fakes import FakeRecord

SQL_DIR = Path(__file__).resolve().parents[3] / "sql"
STATE_KEYS = {"training_runs": ("run_id",), "model_deployments": ("model_name", "environment")}


class Table:
    """A table as the migrations create it: its columns and keys."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.primary_key: tuple[str, ...] = ()
        self.unique: list[tuple[str, ...]] = []


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(","))


@cache
def schema() -> dict[str, Table]:
    """Every table of the migrations, by name (``CREATE TABLE`` and ``ADD COLUMN``)."""
    tables: dict[str, Table] = {}
    for path in sorted(SQL_DIR.glob("*.sql")):
        text = path.read_text()
        for name, body in re.findall(rf"CREATE TABLE {SCHEMA}\.(\w+) \((.*?)\n\);", text, re.S):
            table = tables[name] = Table()
            for line in body.splitlines():
                entry = re.match(r"    (\w+)\s+(.*)", line)
                if entry is None:
                    continue
                word, rest = entry.groups()
                if word == "PRIMARY":
                    table.primary_key = _names(re.search(r"\((.*)\)", rest)[1])  # type: ignore[index]
                elif word not in {"CONSTRAINT", "UNIQUE", "CHECK"}:
                    table.columns.append(word)
                    if "PRIMARY KEY" in rest:
                        table.primary_key = (word,)
            table.unique += [_names(m) for m in re.findall(r"UNIQUE \(([^)]*)\)", body)]
        for name, body in re.findall(rf"ALTER TABLE {SCHEMA}\.(\w+)(.*?);", text, re.S):
            tables[name].columns += re.findall(r"ADD COLUMN (\w+)", body)
    return tables


def statement_of(table: WriteTable) -> Statement:
    (statement,) = [s for s in WRITE_PLAN if table in s.fact_tables]
    return statement


def test_the_migrations_were_read() -> None:
    assert {table.name for table in FACT_TABLES} | set(STATE_KEYS) | {"dead_letters"} <= set(
        schema()
    )
    assert schema()["metrics"].primary_key == ("event_id",)
    assert schema()["model_deployments"].primary_key == ("model_name", "environment")
    assert "publish_error" in schema()["dead_letters"].columns


def test_every_fact_table_is_written_once_in_write_order() -> None:
    assert list(iter_statement_tables()) == list(FACT_TABLES)


@pytest.mark.parametrize("table", FACT_TABLES, ids=lambda t: t.name)
def test_each_fact_table_has_its_idempotent_insert(table: WriteTable) -> None:
    sql = statement_of(table).sql
    names = ", ".join(table.column_names)
    insert = f"INSERT INTO {table.qualified_name} ({names}) SELECT {names} FROM "
    assert sql.count(insert) == 1, sql
    conflict = re.search(
        rf"INSERT INTO {re.escape(table.qualified_name)} .*? ON CONFLICT \((.*?)\) DO NOTHING",
        sql,
    )
    assert conflict is not None
    assert _names(conflict[1]) == schema()[table.name].primary_key == ("event_id",)


@pytest.mark.parametrize("table", FACT_TABLES, ids=lambda t: t.name)
def test_fact_columns_exist_and_start_with_the_envelope(table: WriteTable) -> None:
    assert table.columns[: len(ENVELOPE)] == ENVELOPE
    assert set(table.column_names) <= set(schema()[table.name].columns)
    assert len(set(table.column_names)) == len(table.columns)


@pytest.mark.parametrize("statement", WRITE_PLAN, ids=lambda s: s.fact_tables[0].name)
def test_one_array_parameter_per_buffered_column_in_buffer_order(statement: Statement) -> None:
    # write_batch passes, per fact table of the statement, its columns in buffer order.
    expected = [c.type.array_type for t in statement.fact_tables for c in t.columns]
    assert re.findall(r"%b::(\w+\[\])", statement.sql) == expected
    assert "%s" not in statement.sql


@pytest.mark.parametrize("statement", WRITE_PLAN, ids=lambda s: s.fact_tables[0].name)
def test_each_statement_returns_one_count_per_table(statement: Statement) -> None:
    # write_batch reads fact counts, then state counts, from the statement's one row.
    assert statement.sql.count("count(*)") == len(statement.fact_tables) + len(
        statement.state_tables
    )


def test_state_tables_are_upserted_on_their_primary_keys() -> None:
    upserted = {name for s in WRITE_PLAN for name in s.state_tables}
    assert upserted == set(STATE_KEYS)
    for statement in WRITE_PLAN:
        for name in statement.state_tables:
            upsert = rf"INSERT INTO {SCHEMA}\.{name} AS t\s*\(([^)]*)\)"
            conflict = re.search(
                upsert + r".*?ON CONFLICT \(([^)]*)\) DO UPDATE", statement.sql, re.S
            )
            assert conflict is not None, name
            assert _names(conflict[2]) == schema()[name].primary_key == STATE_KEYS[name]
            assert set(_names(conflict[1])) <= set(schema()[name].columns)


def test_row_buffers_match_the_columns_of_every_table() -> None:
    records = SyntheticStream(seed=5).take(3000)
    batch = RowBatch()
    batch.add_records([FakeRecord(r.value, offset=i) for i, r in enumerate(records)])
    assert batch.rejection_count == 0
    assert set(batch.counts_by_type) == {table.event_type for table in FACT_TABLES}
    for table in FACT_TABLES:
        columns = batch.columns(table)
        assert len(columns) == len(table.columns), table.name
        rows = batch.counts_by_type[table.event_type]
        assert [len(values) for values in columns] == [rows] * len(table.columns), table.name
        assert len(batch.source_records(table)) == rows


@pytest.mark.parametrize(
    ("sql", "extra"), [(INSERT_DEAD_LETTER, 0), (INSERT_UNPUBLISHED_DEAD_LETTER, 1)]
)
def test_dead_letter_inserts_match_their_parameters_and_key(sql: str, extra: int) -> None:
    rejection = Rejection(
        topic="events",
        partition=0,
        offset=7,
        key=None,
        value=b"x",
        headers=(),
        kafka_timestamp_ms=None,
        error_stage="decode",
        error_class="invalid_protobuf",
        error_message="no",
    )
    placeholders = re.findall(r"%[sb]", sql)
    assert len(placeholders) == len(dead_letter_params(rejection, "g")) + extra
    columns = re.search(r"dead_letters \((.*?)\n\)", sql, re.S)
    assert columns is not None
    names = _names(columns[1].replace("\n", " "))
    assert len(names) == len(placeholders)
    assert set(names) <= set(schema()["dead_letters"].columns)
    conflict = re.search(r"ON CONFLICT \(([^)]*)\)", sql)
    assert conflict is not None
    assert _names(conflict[1]) in schema()["dead_letters"].unique
