"""A catalog's tables on a live database: what to add, what would break, and applying it.

:func:`plan_schema` compares the database with the catalog. What only adds is planned:
new tables with their indexes and comments, new columns that are nullable or have a
default, new indexes, changed comments, a NOT NULL lifted, a default changed, an
enumeration's CHECK widened. What would change stored rows or refuse them is refused,
each with how to proceed: a column whose type differs, a NOT NULL column without default
for a table that has rows, a key that changed, a CHECK that loses values, and, against
the catalog last applied to the schema (``kingest.catalogs``), every breaking change
:mod:`kingest.catalog.compat` finds (a field number reused, a field or table removed
while the database still has its column or table...). Nothing is ever dropped.

To compare, the plan renders the catalog's DDL into a scratch schema, inside a
transaction it rolls back, and reads it back like the live one: PostgreSQL itself then
says what ``timestamptz`` or ``DEFAULT '{}'`` become, and the comparison cannot mistake a
spelling for a change. (Planning therefore needs the right to create a schema, as
applying does; it leaves nothing behind.)

:func:`apply_schema` takes the migrations' advisory lock, plans again under it, and runs
the statements and records the catalog in one transaction: a second apply finds nothing
to do and records nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import attrs
import psycopg
from psycopg.types.json import Jsonb

from kingest.catalog import (
    REMOVAL_RULES,
    Catalog,
    CatalogError,
    Column,
    FactTable,
    FieldMapping,
    Incompatibility,
    StateTable,
    ValueKind,
    catalog_ddl,
    catalog_incompatibilities,
    column_definition,
    comment_ddl,
    create_index_ddl,
    create_table_ddl,
    load_catalog,
    quote_identifier,
)
from kingest.store.introspect import LiveSchema, LiveTable, introspect_schema
from kingest.store.migrate import migration_lock

__all__ = [
    "RecordedCatalog",
    "SchemaPlan",
    "SchemaPlanError",
    "apply_schema",
    "catalog_gaps",
    "latest_recorded_catalog",
    "plan_schema",
]

_Table = FactTable | StateTable

_CHECK_VALUE = re.compile(r"'((?:[^']|'')*)'")

#: What a message encoded before a field existed holds for it: Protobuf's zero value, for
#: the kinds of value that have one a column can hold.
_ZERO_VALUES = {
    ValueKind.INT: "0",
    ValueKind.UINT64: "0",
    ValueKind.FLOAT: "0",
    ValueKind.BOOL: "false",
    ValueKind.TEXT: "''",
    ValueKind.BYTES: "''",
    ValueKind.ARRAY: "'{}'",
    ValueKind.JSON: "'{}'",
}


def _source_field(catalog: Catalog, table: _Table, column: Column) -> FieldMapping | None:
    """The field a column's values come from: its own, or for a state column the field of
    the fact column that sets it."""
    if column.field is not None or isinstance(table, FactTable):
        return column.field
    for fact in catalog.fact_tables:
        for update in fact.updates:
            for assignment in update.assignments:
                sets_it = update.table == table.name and assignment.column == column.name
                if sets_it and assignment.source is not None:
                    return fact.column(assignment.source).field
    return None


def _zero_value(catalog: Catalog, table: _Table, column: Column) -> str | None:
    """The value rows stored before a new NOT NULL column get: the zero value of an
    optional field (old messages had it implicitly), None for a required field or one
    without a zero value."""
    field = _source_field(catalog, table, column)
    if field is None or field.required:
        return None
    return _ZERO_VALUES.get(field.kind)


class SchemaPlanError(RuntimeError):
    """The catalog cannot be applied: breaking changes (``plan`` lists them), or no
    ``kingest.catalogs`` to record it in, or a lock wait that lasted too long."""

    def __init__(self, message: str, plan: SchemaPlan | None = None) -> None:
        super().__init__(message)
        self.plan = plan


@dataclass(frozen=True)
class RecordedCatalog:
    """The latest row of ``kingest.catalogs`` for a schema."""

    digest: str
    descriptor_set: bytes
    topic_types: Mapping[str, str]


@dataclass(frozen=True)
class SchemaPlan:
    """What applying ``digest`` to ``schema`` would do: ``statements`` to run in order,
    ``breaking`` changes that refuse it, ``notes`` worth knowing that change nothing."""

    schema: str
    digest: str
    statements: tuple[str, ...]
    breaking: tuple[Incompatibility, ...]
    notes: tuple[str, ...]
    recorded_digest: str | None

    @property
    def holds_catalog(self) -> bool:
        """The database already has every table, column, index and comment."""
        return not self.statements and not self.breaking

    @property
    def recorded(self) -> bool:
        """The catalog is the latest one recorded for the schema."""
        return self.recorded_digest == self.digest

    def refusal(self) -> str:
        """Every breaking change, one per line, for an error message."""
        lines = [f"{len(self.breaking)} breaking changes in schema {self.schema}:"]
        return "\n".join([*lines, *(f"  - {finding}" for finding in self.breaking)])


def _catalogs_table_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('kingest.catalogs') IS NOT NULL").fetchone()
    return bool(row and row[0])


def latest_recorded_catalog(conn: psycopg.Connection[Any], schema: str) -> RecordedCatalog | None:
    """The catalog last applied to ``schema`` (None when none was, or before migration)."""
    if not _catalogs_table_exists(conn):
        return None
    row = conn.execute(
        "SELECT digest, descriptor_set, topic_types FROM kingest.catalogs"
        " WHERE schema_name = %s ORDER BY id DESC LIMIT 1",
        (schema,),
    ).fetchone()
    if row is None:
        return None
    return RecordedCatalog(digest=row[0], descriptor_set=bytes(row[1]), topic_types=row[2])


def _expected_schema(conn: psycopg.Connection[Any], catalog: Catalog) -> LiveSchema:
    """The catalog as PostgreSQL makes it: its DDL run in a scratch schema, read back,
    rolled back."""
    scratch = f"kingest_plan_{uuid.uuid4().hex[:16]}"
    copy = load_catalog(catalog.descriptor_set, schema=scratch, topic_types=catalog.topic_types)
    with conn.transaction(force_rollback=True):
        for statement in catalog_ddl(copy):
            conn.execute(statement.encode())
        return introspect_schema(conn, scratch)


class _Planner:
    """Collects one plan's statements and findings, table by table."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.statements: list[str] = []
        self.findings: list[Incompatibility] = []

    def qualified(self, *names: str) -> str:
        return ".".join(quote_identifier(name) for name in names)

    def create(self, table: _Table) -> None:
        catalog = self.catalog
        self.statements.append(create_table_ddl(catalog, table))
        self.statements += [create_index_ddl(catalog, table, index) for index in table.indexes]
        for column in (None, *table.columns):
            comment = comment_ddl(catalog, table, column)
            if comment is not None:
                self.statements.append(comment)

    def evolve(self, table: _Table, expected: LiveTable, live: LiveTable) -> None:
        name = self.qualified(self.catalog.schema, table.name)
        for column in table.columns:
            if column.name in live.columns:
                self.evolve_column(table, column, expected, live)
            elif column.not_null and column.default is None:
                self.add_not_null(table, column)
            else:
                self.statements.append(
                    f"ALTER TABLE {name} ADD COLUMN {column_definition(table, column)}"
                )
                self.comment(table, column)
        self.check_unknown_columns(table, live)
        if expected.primary_key != live.primary_key:
            self.findings.append(
                Incompatibility(
                    "TABLE_SAME_KEY",
                    f"table {table.name}: the catalog's key is {expected.primary_key}, the "
                    f"database's {live.primary_key}.",
                    "give the table with the new key a new name, or drop the table by hand "
                    "and apply again to create it afresh.",
                    table.name,
                )
            )
        for index in table.indexes:
            wanted, present = expected.indexes.get(index.name), live.indexes.get(index.name)
            if present is not None and present != wanted:
                self.statements.append(
                    f"DROP INDEX {self.qualified(self.catalog.schema, index.name)}"
                )
            if present != wanted:
                self.statements.append(create_index_ddl(self.catalog, table, index))
        if table.comment is not None and live.comment != expected.comment:
            self.statements.append(self.comment_of(table, None))

    def add_not_null(self, table: _Table, column: Column) -> None:
        """A new NOT NULL column: added with the zero value old messages implicitly
        held, for the rows already stored, then without a default like the catalog's;
        refused when there is no such value (a required field)."""
        zero = _zero_value(self.catalog, table, column)
        if zero is None:
            self.findings.append(
                Incompatibility(
                    "COLUMN_NOT_NULL_WITHOUT_DEFAULT",
                    f"column {table.name}.{column.name} is new and NOT NULL without a "
                    "default, and its field is required or has no zero value: the "
                    "rows already in the table would have no value.",
                    "make the field optional (not required), or add the column by hand "
                    "(ADD COLUMN ... DEFAULT ..., or fill it then SET NOT NULL) and "
                    "apply again.",
                    table.name,
                    (column.name,),
                )
            )
            return
        name = self.qualified(self.catalog.schema, table.name)
        with_zero = attrs.evolve(column, default=zero)
        self.statements.append(
            f"ALTER TABLE {name} ADD COLUMN {column_definition(table, with_zero)}"
        )
        self.statements.append(
            f"ALTER TABLE {name} ALTER COLUMN {self.qualified(column.name)} DROP DEFAULT"
        )
        self.comment(table, column)

    def check_unknown_columns(self, table: _Table, live: LiveTable) -> None:
        for column_name, unknown in live.columns.items():
            known = any(c.name == column_name for c in table.columns)
            if not known and unknown.not_null and unknown.default is None:
                self.findings.append(
                    Incompatibility(
                        "COLUMN_UNKNOWN_NOT_NULL",
                        f"column {table.name}.{column_name} is NOT NULL without a default "
                        "and the catalog does not have it: every insert would fail.",
                        "put its field back in the catalog, or drop the column or give it "
                        "a default by hand.",
                        table.name,
                        (column_name,),
                    )
                )

    def evolve_column(
        self, table: _Table, column: Column, expected: LiveTable, live: LiveTable
    ) -> None:
        wanted, present = expected.columns[column.name], live.columns[column.name]
        name = self.qualified(self.catalog.schema, table.name)
        alter = f"ALTER TABLE {name} ALTER COLUMN {self.qualified(column.name)}"
        if present.sql_type != wanted.sql_type:
            self.findings.append(
                Incompatibility(
                    "COLUMN_SAME_TYPE",
                    f"column {table.name}.{column.name} is {present.sql_type} in the "
                    f"database, {wanted.sql_type} in the catalog.",
                    "keep the field's type, or add a new field (new number and name) for "
                    "the new type.",
                    table.name,
                    (column.name,),
                )
            )
        if wanted.not_null and not present.not_null:
            self.findings.append(
                Incompatibility(
                    "COLUMN_NO_NEW_NOT_NULL",
                    f"column {table.name}.{column.name} would become NOT NULL: stored rows "
                    "may hold NULL.",
                    "keep the field optional, or fill the NULLs and SET NOT NULL by hand.",
                    table.name,
                    (column.name,),
                )
            )
        elif present.not_null and not wanted.not_null:
            self.statements.append(f"{alter} DROP NOT NULL")
        if present.default != wanted.default:
            self.statements.append(
                f"{alter} DROP DEFAULT"
                if column.default is None
                else f"{alter} SET DEFAULT {column.default}"
            )
        self.evolve_check(table, column, expected, live)
        if present.comment != wanted.comment:
            self.comment(table, column)

    def evolve_check(
        self, table: _Table, column: Column, expected: LiveTable, live: LiveTable
    ) -> None:
        check = f"{table.name}_{column.name}_check"
        wanted, present = expected.constraints.get(check), live.constraints.get(check)
        if wanted == present:
            return
        name = self.qualified(self.catalog.schema, table.name)
        constraint = self.qualified(check)
        if wanted is None:
            self.statements.append(f"ALTER TABLE {name} DROP CONSTRAINT {constraint}")
            return
        if present is not None:
            lost = set(_CHECK_VALUE.findall(present)) - set(_CHECK_VALUE.findall(wanted))
            if lost:
                self.findings.append(
                    Incompatibility(
                        "COLUMN_CHECK_NO_NARROWING",
                        f"column {table.name}.{column.name} would no longer accept "
                        f"{', '.join(repr(v) for v in sorted(lost))}: the new CHECK would "
                        "refuse the stored rows that hold any of them.",
                        "keep the values in the enumeration (deprecated if need be).",
                        table.name,
                        (column.name,),
                    )
                )
                return
        drop = f"DROP CONSTRAINT {constraint}, " if present is not None else ""
        self.statements.append(f"ALTER TABLE {name} {drop}ADD CONSTRAINT {constraint} {wanted}")

    def comment(self, table: _Table, column: Column) -> None:
        """COMMENT ON the column, when the catalog has a comment for it (a comment the
        catalog dropped stays in the database)."""
        statement = comment_ddl(self.catalog, table, column)
        if statement is not None:
            self.statements.append(statement)

    def comment_of(self, table: _Table, column: Column | None) -> str:
        statement = comment_ddl(self.catalog, table, column)
        assert statement is not None  # only asked for what has a comment
        return statement


def _is_moot(finding: Incompatibility, live: LiveSchema) -> bool:
    """A removal whose table or columns are already gone from the database."""
    if finding.rule not in REMOVAL_RULES or finding.table is None:
        return False
    table = live.tables.get(finding.table)
    if table is None:
        return True
    return bool(finding.columns) and not any(c in table.columns for c in finding.columns)


def _compatibility(
    catalog: Catalog, previous: RecordedCatalog | None, live: LiveSchema, notes: list[str]
) -> list[Incompatibility]:
    if previous is None or previous.digest == catalog.digest:
        return []
    try:
        old = load_catalog(
            previous.descriptor_set, schema=catalog.schema, topic_types=previous.topic_types
        )
    except CatalogError as error:
        notes.append(
            f"the catalog last applied ({previous.digest[:12]}) no longer loads, so it was "
            f"not compared with this one: {error}"
        )
        return []
    return [f for f in catalog_incompatibilities(old, catalog) if not _is_moot(f, live)]


def _not_explained(
    findings: list[Incompatibility], by: list[Incompatibility]
) -> Iterator[Incompatibility]:
    """The database's findings that no compatibility finding already reports."""
    explained = {pair for other in by for pair in other.affects}
    for finding in findings:
        same_rule = any(o.table == finding.table and o.rule == finding.rule for o in by)
        concerns = {(finding.table, column) for column in finding.columns}
        if not same_rule and not (concerns & explained):
            yield finding


def plan_schema(conn: psycopg.Connection[Any], catalog: Catalog) -> SchemaPlan:
    """What applying ``catalog`` to the database of ``conn`` would do, or why it may not."""
    live = introspect_schema(conn, catalog.schema)
    previous = latest_recorded_catalog(conn, catalog.schema)
    notes: list[str] = []
    planner = _Planner(catalog)
    if not live.exists:
        planner.statements.append(
            f"CREATE SCHEMA IF NOT EXISTS {planner.qualified(catalog.schema)}"
        )
    expected = _expected_schema(conn, catalog)
    for table in catalog.tables:
        live_table = live.tables.get(table.name)
        if live_table is None:
            planner.create(table)
        else:
            planner.evolve(table, expected.tables[table.name], live_table)
    compatibility = _compatibility(catalog, previous, live, notes)
    breaking = [*compatibility, *_not_explained(planner.findings, compatibility)]
    if not _catalogs_table_exists(conn):
        notes.append("kingest.catalogs does not exist: run `kingest migrate` before applying")
    return SchemaPlan(
        schema=catalog.schema,
        digest=catalog.digest,
        statements=tuple(planner.statements),
        breaking=tuple(breaking),
        notes=tuple(notes),
        recorded_digest=None if previous is None else previous.digest,
    )


def apply_schema(
    conn: psycopg.Connection[Any], catalog: Catalog, *, lock_timeout_s: float = 60
) -> SchemaPlan:
    """Plan under the migrations' advisory lock and, unless refused, run the plan and
    record the catalog in one transaction; return the plan that was applied.

    ``conn`` must be in autocommit mode: the lock is the session's, the transaction this
    function's own. A catalog the database already holds and records is a no-op. Raises
    :class:`SchemaPlanError` listing every breaking change, and leaves the database as
    it was.
    """
    if not conn.autocommit:
        raise ValueError("apply_schema needs a connection in autocommit mode")
    with migration_lock(conn, lock_timeout_s, SchemaPlanError):
        if not _catalogs_table_exists(conn):
            raise SchemaPlanError(
                "kingest.catalogs does not exist: run `kingest migrate` before applying"
            )
        with conn.transaction():
            plan = plan_schema(conn, catalog)
            if plan.breaking:
                raise SchemaPlanError(plan.refusal(), plan)
            for statement in plan.statements:
                conn.execute(statement.encode())
            if plan.statements or not plan.recorded:
                conn.execute(
                    "INSERT INTO kingest.catalogs (schema_name, digest, descriptor_set,"
                    " topic_types, applied_ddl) VALUES (%s, %s, %s, %s, %s)",
                    (
                        catalog.schema,
                        catalog.digest,
                        catalog.descriptor_set,
                        Jsonb(dict(catalog.topic_types)),
                        "".join(f"{statement};\n" for statement in plan.statements),
                    ),
                )
        return plan


#: Tables and their columns from the system catalogs alone: no function here opens a
#: table (as pg_get_expr or pg_get_indexdef do), so a table locked by a migration or a
#: VACUUM FULL does not hold up the start-up check behind its lock.
_TABLE_COLUMNS = """
SELECT c.relname, a.attname
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
"""


def catalog_gaps(conn: psycopg.Connection[Any], catalog: Catalog) -> list[str]:
    """The catalog's tables and columns the database lacks (``schema.table`` or
    ``schema.table.column``): what ``kingest start`` refuses to run without."""
    live: dict[str, set[str]] = {}
    for table, column in conn.execute(_TABLE_COLUMNS, (catalog.schema,)):
        live.setdefault(table, set()).add(column)
    gaps: list[str] = []
    for table in catalog.tables:
        found = live.get(table.name)
        if found is None:
            gaps.append(f"{catalog.schema}.{table.name}")
            continue
        gaps += [
            f"{catalog.schema}.{table.name}.{column.name}"
            for column in table.columns
            if column.name not in found
        ]
    return gaps
