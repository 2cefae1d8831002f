"""The DDL that creates a catalog's tables: CREATE TABLE, CREATE INDEX, COMMENT ON.

Identifiers are quoted only where PostgreSQL needs it (a reserved word, a character
outside ``[a-z0-9_]``), so the text reads like hand-written DDL and PostgreSQL's own
rendering of the objects (``pg_get_indexdef``...) matches it. Literals (comments, CHECK
labels) are quoted by doubling single quotes; none of this text comes from a Kafka
message, only from the catalog the operator chose.
"""

from __future__ import annotations

import re
from typing import Final

from kingest.catalog.model import Catalog, Column, FactTable, Index, StateTable

__all__ = [
    "catalog_ddl",
    "column_definition",
    "comment_ddl",
    "create_index_ddl",
    "create_table_ddl",
    "quote_identifier",
    "quote_literal",
]

_PLAIN: Final = re.compile(r"[a-z_][a-z0-9_]*")
#: PostgreSQL's reserved key words (SQL key words appendix, "reserved" in the
#: PostgreSQL column, including "requires AS"): a column named so must be quoted.
_RESERVED: Final = frozenset(
    """all analyse analyze and any array as asc asymmetric authorization binary both case
    cast check collate collation column concurrently constraint create cross current_catalog
    current_date current_role current_schema current_time current_timestamp current_user
    default deferrable desc distinct do else end except false fetch for foreign freeze from
    full grant group having ilike in initially inner intersect into is isnull join lateral
    leading left like limit localtime localtimestamp natural not notnull null offset on only
    or order outer overlaps placing primary references returning right select session_user
    similar some symmetric system_user table tablesample then to trailing true union unique
    user using variadic verbose when where window with""".split()  # noqa: SIM905
)

Table = FactTable | StateTable


def quote_identifier(name: str) -> str:
    """``name`` as an SQL identifier, in double quotes only where it needs them."""
    if _PLAIN.fullmatch(name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _qualified(catalog: Catalog, table: Table) -> str:
    return f"{quote_identifier(catalog.schema)}.{quote_identifier(table.name)}"


def column_definition(table: Table, column: Column) -> str:
    """``name type [NOT NULL] [DEFAULT ...] [CONSTRAINT ... CHECK ...]``."""
    parts = [quote_identifier(column.name), column.sql_type]
    if column.not_null:
        parts.append("NOT NULL")
    if column.default is not None:
        parts.append(f"DEFAULT {column.default}")
    if column.check_values:
        labels = ", ".join(quote_literal(value) for value in column.check_values)
        constraint = quote_identifier(f"{table.name}_{column.name}_check")
        parts.append(
            f"CONSTRAINT {constraint} CHECK ({quote_identifier(column.name)} IN ({labels}))"
        )
    return " ".join(parts)


def create_table_ddl(catalog: Catalog, table: Table) -> str:
    lines = [f"    {column_definition(table, column)}" for column in table.columns]
    key = ", ".join(quote_identifier(column) for column in table.primary_key)
    lines.append(f"    PRIMARY KEY ({key})")
    body = ",\n".join(lines)
    return f"CREATE TABLE {_qualified(catalog, table)} (\n{body}\n)"


def create_index_ddl(catalog: Catalog, table: Table, index: Index) -> str:
    columns = ", ".join(quote_identifier(column) for column in index.columns)
    return (
        f"CREATE INDEX {quote_identifier(index.name)} ON {_qualified(catalog, table)} ({columns})"
    )


def comment_ddl(catalog: Catalog, table: Table, column: Column | None = None) -> str | None:
    """``COMMENT ON TABLE`` (``column`` None) or ``COMMENT ON COLUMN``; None without text."""
    if column is None:
        if table.comment is None:
            return None
        return f"COMMENT ON TABLE {_qualified(catalog, table)} IS {quote_literal(table.comment)}"
    if column.comment is None:
        return None
    target = f"{_qualified(catalog, table)}.{quote_identifier(column.name)}"
    return f"COMMENT ON COLUMN {target} IS {quote_literal(column.comment)}"


def catalog_ddl(catalog: Catalog) -> list[str]:
    """Every statement that creates the catalog's schema objects, in order."""
    statements = [f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(catalog.schema)}"]
    for table in catalog.tables:
        statements.append(create_table_ddl(catalog, table))
        statements += [create_index_ddl(catalog, table, index) for index in table.indexes]
        comments = [
            comment_ddl(catalog, table),
            *(comment_ddl(catalog, table, c) for c in table.columns),
        ]
        statements += [comment for comment in comments if comment is not None]
    return statements
