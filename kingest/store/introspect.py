"""A live PostgreSQL schema as plain values that compare, and their differences.

Everything is read back in the form PostgreSQL itself prints (``format_type``,
``pg_get_expr``, ``pg_get_constraintdef``, ``pg_get_indexdef``), so two schemas built by
different DDL texts compare equal when PostgreSQL made the same objects of them:
``timestamptz`` and ``timestamp with time zone``, ``DEFAULT '{}'`` and ``DEFAULT
'{}'::jsonb``, an inline ``PRIMARY KEY`` and a table constraint. The schema's own name is
replaced by :data:`SCHEMA_PLACEHOLDER` wherever PostgreSQL prints it, so a schema
compares equal to a copy of itself made under another name. Column order is not
compared: a column added later comes last, and no query of kingest depends on it.

``NOT NULL`` is read from the column, not from ``pg_constraint``: PostgreSQL 18 also lists
it there, under a generated name, and 15 does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

__all__ = [
    "SCHEMA_PLACEHOLDER",
    "LiveColumn",
    "LiveSchema",
    "LiveTable",
    "introspect_schema",
    "schema_differences",
]

#: What stands for the schema's name in index, constraint and default definitions.
SCHEMA_PLACEHOLDER = "<schema>"

_TABLES = """
SELECT c.oid, c.relname, obj_description(c.oid, 'pg_class')
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
"""

_COLUMNS = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), col_description(a.attrelid, a.attnum)
FROM pg_attribute AS a
JOIN pg_class AS c ON c.oid = a.attrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND a.attnum > 0
  AND NOT a.attisdropped
"""

_CONSTRAINTS = """
SELECT k.conrelid, k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint AS k
JOIN pg_class AS c ON c.oid = k.conrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND k.contype <> 'n'
"""

_INDEXES = """
SELECT i.indrelid, x.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index AS i
JOIN pg_class AS x ON x.oid = i.indexrelid
JOIN pg_class AS c ON c.oid = i.indrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
"""


@dataclass(frozen=True)
class LiveColumn:
    """A column as PostgreSQL prints it: ``sql_type`` from ``format_type``, ``default``
    from ``pg_get_expr`` (None when the column has none)."""

    name: str
    sql_type: str
    not_null: bool
    default: str | None
    comment: str | None


@dataclass(frozen=True)
class LiveTable:
    """A table: its columns, constraints and indexes by name, each index or constraint
    by its definition (``pg_get_constraintdef``, ``pg_get_indexdef``)."""

    name: str
    columns: Mapping[str, LiveColumn]
    constraints: Mapping[str, str]
    indexes: Mapping[str, str]
    comment: str | None

    @property
    def primary_key(self) -> str | None:
        """The definition of the primary key constraint (``PRIMARY KEY (a, b)``)."""
        return next(
            (d for d in self.constraints.values() if d.startswith("PRIMARY KEY")),
            None,
        )


@dataclass(frozen=True)
class LiveSchema:
    """The tables of one schema by name; ``exists`` is False when there is no such schema."""

    name: str
    tables: Mapping[str, LiveTable] = field(default_factory=dict)
    exists: bool = True


def _placeholder(text: str | None, schema: str, quoted: str) -> str | None:
    """``text`` with the schema's (possibly quoted) qualified prefix replaced."""
    if text is None:
        return None
    for prefix in {f"{quoted}.", f"{schema}."}:
        text = text.replace(prefix, f"{SCHEMA_PLACEHOLDER}.")
    return text


def introspect_schema(conn: psycopg.Connection[Any], schema: str) -> LiveSchema:
    """Every table of ``schema`` with its columns, constraints, indexes and comments.

    Four catalog queries, whatever the number of tables; it reads and never writes.
    """
    params = {"schema": schema}
    found = conn.execute(
        "SELECT quote_ident(%(schema)s), EXISTS "
        "(SELECT FROM pg_namespace WHERE nspname = %(schema)s)",
        params,
    ).fetchone()
    assert found is not None
    quoted, exists = str(found[0]), bool(found[1])
    if not exists:
        return LiveSchema(name=schema, exists=False)
    names: dict[int, str] = {}
    comments: dict[int, str | None] = {}
    for oid, name, comment in conn.execute(_TABLES, params).fetchall():
        names[oid] = name
        comments[oid] = comment
    columns: dict[int, dict[str, LiveColumn]] = {oid: {} for oid in names}
    for oid, name, sql_type, not_null, default, comment in conn.execute(
        _COLUMNS, params
    ).fetchall():
        columns[oid][name] = LiveColumn(
            name=name,
            sql_type=sql_type,
            not_null=not_null,
            default=_placeholder(default, schema, quoted),
            comment=comment,
        )
    constraints: dict[int, dict[str, str]] = {oid: {} for oid in names}
    for oid, name, definition in conn.execute(_CONSTRAINTS, params).fetchall():
        constraints[oid][name] = _placeholder(definition, schema, quoted) or ""
    indexes: dict[int, dict[str, str]] = {oid: {} for oid in names}
    for oid, name, definition in conn.execute(_INDEXES, params).fetchall():
        indexes[oid][name] = _placeholder(definition, schema, quoted) or ""
    tables = {
        names[oid]: LiveTable(
            name=names[oid],
            columns=columns[oid],
            constraints=constraints[oid],
            indexes=indexes[oid],
            comment=comments[oid],
        )
        for oid in names
    }
    return LiveSchema(name=schema, tables=tables)


def _named_differences(
    what: str, left: Mapping[str, object], right: Mapping[str, object], labels: tuple[str, str]
) -> list[str]:
    problems: list[str] = []
    for name in sorted(left.keys() - right.keys()):
        problems.append(f"{what}{name}: only in {labels[0]}")
    for name in sorted(right.keys() - left.keys()):
        problems.append(f"{what}{name}: only in {labels[1]}")
    for name in sorted(left.keys() & right.keys()):
        if left[name] != right[name]:
            problems.append(
                f"{what}{name}: {left[name]!r} in {labels[0]}, {right[name]!r} in {labels[1]}"
            )
    return problems


def _column_differences(
    table: str, left: LiveColumn, right: LiveColumn, labels: tuple[str, str]
) -> list[str]:
    problems: list[str] = []
    for attribute in ("sql_type", "not_null", "default", "comment"):
        mine, theirs = getattr(left, attribute), getattr(right, attribute)
        if mine != theirs:
            problems.append(
                f"column {table}.{left.name}: {attribute} {mine!r} in {labels[0]}, "
                f"{theirs!r} in {labels[1]}"
            )
    return problems


def _table_differences(left: LiveTable, right: LiveTable, labels: tuple[str, str]) -> list[str]:
    name = left.name
    problems: list[str] = []
    if left.comment != right.comment:
        problems.append(
            f"table {name}: comment {left.comment!r} in {labels[0]}, "
            f"{right.comment!r} in {labels[1]}"
        )
    for column in sorted(left.columns.keys() - right.columns.keys()):
        problems.append(f"column {name}.{column}: only in {labels[0]}")
    for column in sorted(right.columns.keys() - left.columns.keys()):
        problems.append(f"column {name}.{column}: only in {labels[1]}")
    for column in sorted(left.columns.keys() & right.columns.keys()):
        problems += _column_differences(name, left.columns[column], right.columns[column], labels)
    problems += _named_differences(
        f"constraint {name}.", left.constraints, right.constraints, labels
    )
    problems += _named_differences(f"index {name}.", left.indexes, right.indexes, labels)
    return problems


def schema_differences(
    left: LiveSchema,
    right: LiveSchema,
    *,
    labels: tuple[str, str] | None = None,
    tables: set[str] | None = None,
) -> list[str]:
    """Every difference between two schemas, one line each, empty when they are alike.

    ``labels`` name the two sides in the lines (default: the schemas' names); ``tables``
    restricts the comparison to those table names (a schema that also holds tables of
    its own, say).
    """
    sides = labels or (left.name, right.name)
    mine = {n: t for n, t in left.tables.items() if tables is None or n in tables}
    theirs = {n: t for n, t in right.tables.items() if tables is None or n in tables}
    problems: list[str] = []
    for name in sorted(mine.keys() - theirs.keys()):
        problems.append(f"table {name}: only in {sides[0]}")
    for name in sorted(theirs.keys() - mine.keys()):
        problems.append(f"table {name}: only in {sides[1]}")
    for name in sorted(mine.keys() & theirs.keys()):
        problems += _table_differences(mine[name], theirs[name], sides)
    return problems
