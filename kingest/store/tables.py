"""The write plan: the statements that store a batch, derived from the catalog.

Each fact table of the catalog (:mod:`kingest.catalog`) becomes a :class:`WriteTable`:
its columns in the order the row buffers of :mod:`kingest.store.rows` hold them, and
how each column travels. A column travels as one array parameter per batch (``unnest``
turns the arrays back into rows), so the Python side never builds a value per row that
PostgreSQL could build itself:

* timestamps travel as epoch microseconds (``int8``) and become ``timestamptz`` in
  SQL by exact integer arithmetic (no ``datetime`` objects, no float rounding);
* optional text travels as ``''`` and becomes NULL through ``NULLIF``;
* event ids travel as text and are parsed by PostgreSQL's ``uuid`` input (which accepts
  every form the validator does), maps as JSON text parsed by ``jsonb`` input;
* any other column (NULL-able numbers, ``numeric``, ``bytea``, intervals, arrays...)
  travels as text, NULL included, and is cast in SQL (:attr:`ColumnType.CAST`).

The write plan is a fixed sequence of statements, one per table group, always in the
same order: concurrent writers then take row locks in the same order and cannot
deadlock on each other's tables. A group is the fact tables that update a common state
table (with those state tables); a fact table that updates none is a group of its own.
A statement inserts facts with ``ON CONFLICT (event_id) DO NOTHING`` (redelivery never
creates a second row) and upserts the group's state tables in the same statement. Each
column group of a state table changes only when the incoming ``(occurred_at[, rank],
event_id)`` is greater than the stored one, so state converges to the greatest event
whatever the order writes finish in; the rank (:class:`kingest.catalog.Rank`) decides
ties at one event time before the event id does. Each group's candidates are first
reduced to one row per key (``DISTINCT ON``), because ``ON CONFLICT DO UPDATE`` may not
touch a row twice, and keys are fed in sorted order, so two writers lock shared keys in
the same order.
"""

# The SQL below is assembled from the catalog's names, each quoted by quote_identifier
# (and constants by quote_literal); no data ever reaches the SQL text.
# ruff: noqa: S608

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import Final

import attrs

from kingest.catalog import (
    Catalog,
    Column,
    FactTable,
    StateTable,
    StateUpdate,
    ValueKind,
    load_catalog,
    quote_identifier,
    quote_literal,
)

__all__ = [
    "ENVELOPE",
    "FACT_TABLES",
    "TABLES_BY_EVENT_TYPE",
    "WRITE_PLAN",
    "ColumnType",
    "Statement",
    "WriteColumn",
    "WritePlan",
    "WriteTable",
    "builtin_plan",
    "iter_statement_tables",
    "write_plan",
]

q = quote_identifier


class ColumnType(enum.Enum):
    """How a column travels (the array type of its parameter) and lands (SQL expression).

    ``value`` is ``(parameter_array_type, sql_expression)``; the expression's ``{}`` is
    the unnested parameter. ``CAST`` columns carry their own expression
    (:attr:`WriteColumn.cast`): their values are text or None.
    """

    TEXT = ("text[]", "{}")
    OPTIONAL_TEXT = ("text[]", "NULLIF({}, '')")
    UUID = ("uuid[]", "{}")
    JSONB = ("jsonb[]", "{}")
    INT8 = ("int8[]", "{}")
    INT4 = ("int4[]", "{}")
    FLOAT8 = ("float8[]", "{}")
    BOOL = ("bool[]", "{}")
    EPOCH_MICROS = ("int8[]", "'epoch'::timestamptz + {} * '1 microsecond'::interval")
    #: Text or NULL, turned into the value by :attr:`WriteColumn.cast` (its own expression
    #: here only keeps the member distinct from ``TEXT``).
    CAST = ("text[]", "CAST({} AS text)")

    @property
    def array_type(self) -> str:
        return self.value[0]

    def expression(self, operand: str) -> str:
        return self.value[1].format(operand)


@attrs.frozen
class WriteColumn:
    name: str
    type: ColumnType
    #: For ``CAST`` columns: the SQL expression turning the text parameter into the value.
    cast: str | None = None

    def expression(self, operand: str) -> str:
        if self.cast is not None:
            return self.cast.format(operand)
        return self.type.expression(operand)


@attrs.frozen
class WriteTable:
    """An append-only fact table fed by one event type.

    ``columns`` is the buffer order of :class:`kingest.store.rows.RowBatch` (envelope
    first, then payload); the row buffer keeps the source Kafka record after them.
    """

    name: str
    event_type: str
    columns: tuple[WriteColumn, ...]
    schema: str = "kingest"
    fact: FactTable | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def qualified_name(self) -> str:
        return f"{q(self.schema)}.{q(self.name)}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def copyable(self) -> bool:
        """Whether binary COPY can write it (every column of a type COPY encodes)."""
        return all(column.type is not ColumnType.CAST for column in self.columns)

    @property
    def copy_statement(self) -> str:
        """``COPY`` of every column, in buffer order, from a binary stream."""
        return (
            f"COPY {self.qualified_name} ({', '.join(map(q, self.column_names))}) "
            "FROM STDIN (FORMAT BINARY)"
        )


@attrs.frozen
class Statement:
    """One statement of the write plan.

    Its parameters are the columns of ``fact_tables`` in order (one array each, empty
    arrays for a table without rows). It returns one row: the number of fact rows
    inserted per fact table, then the number of rows inserted or changed per state
    table.
    """

    fact_tables: tuple[WriteTable, ...]
    state_tables: tuple[str, ...]
    sql: str


@attrs.frozen(eq=False)
class WritePlan:
    """A catalog's fact tables in write order, by event type, and its statements.

    Compared (and hashed) by identity: one plan per catalog, made once at start-up.
    """

    catalog: Catalog = attrs.field(repr=False)
    tables: tuple[WriteTable, ...]
    statements: tuple[Statement, ...]
    #: Event type -> the name of its fact table.
    table_names: Mapping[str, str] = attrs.field(init=False)

    @table_names.default
    def _table_names(self) -> Mapping[str, str]:
        return {table.event_type: table.name for table in self.tables}

    @property
    def by_event_type(self) -> dict[str, WriteTable]:
        return {table.event_type: table for table in self.tables}


# --- how a catalog column travels ------------------------------------------------------

#: Columns sent as themselves, by (PostgreSQL type, NOT NULL).
_DIRECT: Final = {
    ("text", True): ColumnType.TEXT,
    ("text", False): ColumnType.OPTIONAL_TEXT,
    ("uuid", True): ColumnType.UUID,
    ("jsonb", True): ColumnType.JSONB,
    ("bigint", True): ColumnType.INT8,
    ("integer", True): ColumnType.INT4,
    ("double precision", True): ColumnType.FLOAT8,
    ("boolean", True): ColumnType.BOOL,
}
#: Epoch microseconds to timestamptz by integer arithmetic only: multiplying an interval
#: by an int8 goes through float8, exact only within 2^53 microseconds of 1970.
_EPOCH: Final = (
    "'epoch'::timestamptz + (({0})::int8 / 1000000) * '1 second'::interval"
    " + mod(({0})::int8, 1000000) * '1 microsecond'::interval"
)


def _write_column(column: Column) -> WriteColumn:
    """The transport of a catalog column (see :class:`ColumnType`)."""
    field = column.field
    if column.name == "occurred_at" and field is None:
        return WriteColumn(column.name, ColumnType.EPOCH_MICROS)
    plain = field is None or (
        (
            not field.present
            and not field.wrapped
            and field.kind
            in (ValueKind.TEXT, ValueKind.ENUM, ValueKind.INT, ValueKind.FLOAT, ValueKind.BOOL)
        )
        or (field.kind is ValueKind.JSON and column.default == "'{}'")
    )
    if plain and (column.sql_type, column.not_null) in _DIRECT:
        return WriteColumn(column.name, _DIRECT[column.sql_type, column.not_null])
    kind = None if field is None else field.kind
    if kind is ValueKind.TIMESTAMP:
        cast = _EPOCH
    elif kind is ValueKind.DURATION:
        cast = (
            "(({0})::int8 / 1000000) * '1 second'::interval"
            " + mod(({0})::int8, 1000000) * '1 microsecond'::interval"
        )
    elif kind is ValueKind.ARRAY and field is not None:
        element = column.sql_type.removesuffix("[]")
        # Qualified by the element's own alias: a bare name would resolve to a payload
        # column of that name (jsonb_array_elements_text's column is "value").
        item = "_element.value"
        decode = (
            f"decode({item}, 'hex')" if field.element is ValueKind.BYTES else f"{item}::{element}"
        )
        cast = (
            f"ARRAY(SELECT {decode} FROM jsonb_array_elements_text(({{}})::jsonb)"
            f" AS _element(value))::{column.sql_type}"
        )
    else:
        cast = f"({{}})::{column.sql_type}"
    return WriteColumn(column.name, ColumnType.CAST, cast)


def _write_table(catalog: Catalog, fact: FactTable) -> WriteTable:
    return WriteTable(
        name=fact.name,
        event_type=fact.event_type,
        columns=tuple(_write_column(c) for c in fact.columns if c.name != "ingested_at"),
        schema=catalog.schema,
        fact=fact,
    )


# --- SQL generation ------------------------------------------------------------------


def _batch_select(table: WriteTable) -> str:
    """SELECT turning the table's array parameters into typed rows."""
    names = ", ".join(map(q, table.column_names))
    expressions = ", ".join(
        f"{column.expression('u.' + q(column.name))} AS {q(column.name)}"
        for column in table.columns
    )
    parameters = ", ".join(f"%b::{column.type.array_type}" for column in table.columns)
    return f"SELECT {expressions} FROM unnest({parameters}) AS u({names})"


def _insert_facts(table: WriteTable, source: str) -> str:
    names = ", ".join(map(q, table.column_names))
    return (
        f"INSERT INTO {table.qualified_name} ({names}) SELECT {names} FROM {source} "
        "ON CONFLICT (event_id) DO NOTHING RETURNING 1"
    )


def _rank(value: str, order: Sequence[str]) -> str:
    """SQL: the position of ``value`` in ``order`` (0 for the first, NULL or unknown)."""
    cases = " ".join(
        f"WHEN {quote_literal(name)} THEN {rank}" for rank, name in enumerate(order) if rank
    )
    return f"(CASE {value} {cases} ELSE 0 END)"


def _newer(update: StateUpdate) -> str:
    """SQL: the incoming (EXCLUDED) group's (time[, rank], event id) is set and greater
    than the stored (t) one's. A NULL time means "no event of this group": never newer,
    and older than anything."""
    at, event_id = q(update.at_column), q(update.event_id_column)
    new_rank = old_rank = ""
    if update.rank is not None:
        column = q(update.rank.column)
        new_rank = f", {_rank('EXCLUDED.' + column, update.rank.order)}"
        old_rank = f", {_rank('t.' + column, update.rank.order)}"
    return (
        f"(EXCLUDED.{at} IS NOT NULL AND (t.{at} IS NULL"
        f" OR (EXCLUDED.{at}{new_rank}, EXCLUDED.{event_id})"
        f" > (t.{at}{old_rank}, t.{event_id})))"
    )


def _group_columns(update: StateUpdate) -> tuple[str, ...]:
    """The state columns one column group sets: its values, then time, id, correlation."""
    columns = [assignment.column for assignment in update.assignments]
    columns += [update.at_column, update.event_id_column]
    if update.correlation_id_column:
        columns.append(update.correlation_id_column)
    return tuple(columns)


def _candidate_select(update: StateUpdate, source: str, rank_alias: str) -> str:
    """SELECT of one fact table's events as candidates for one column group."""
    values = [q(column) for column in update.key]
    for assignment in update.assignments:
        value = (
            quote_literal(assignment.value) + "::text"
            if assignment.value is not None
            else q(assignment.source or assignment.column)
        )
        values.append(f"{value} AS {q(assignment.column)}")
    values += [f"occurred_at AS {q(update.at_column)}", f"event_id AS {q(update.event_id_column)}"]
    if update.correlation_id_column:
        values.append(f"correlation_id AS {q(update.correlation_id_column)}")
    if update.rank is not None:
        ranked = next(a for a in update.assignments if a.column == update.rank.column)
        value = (
            quote_literal(ranked.value)
            if ranked.value is not None
            else q(ranked.source or ranked.column)
        )
        values.append(f"{_rank(value, update.rank.order)} AS {rank_alias}")
    return f"SELECT {', '.join(values)} FROM {source}"


def _state_upsert(
    catalog: Catalog, state: StateTable, feeds: Sequence[tuple[str, StateUpdate]]
) -> tuple[list[str], str]:
    """CTEs upserting ``state`` from the facts' CTEs; returns them and the changed CTE."""
    groups: dict[str, list[tuple[str, StateUpdate]]] = {}
    for source, update in feeds:
        groups.setdefault(update.at_column, []).append((source, update))
    key = ", ".join(map(q, state.primary_key))
    ctes: list[str] = []
    group_names: list[str] = []
    set_clauses: list[str] = []
    conditions: list[str] = []
    inserted: list[str] = list(state.primary_key)
    for number, members in enumerate(groups.values()):
        name = f"{state.name}_g{number}"
        rank_alias = f"_rank{number}"
        first = members[0][1]
        union = " UNION ALL ".join(
            _candidate_select(update, source, rank_alias) for source, update in members
        )
        then_rank = f"{rank_alias} DESC, " if first.rank is not None else ""
        ctes.append(
            f"{q(name)} AS (SELECT DISTINCT ON ({key}) * FROM ({union}) AS c "
            f"ORDER BY {key}, {q(first.at_column)} DESC, {then_rank}"
            f"{q(first.event_id_column)} DESC)"
        )
        group_names.append(q(name))
        columns = _group_columns(first)
        inserted += columns
        newer = _newer(first)
        conditions.append(newer)
        set_clauses += [
            f"{q(c)} = CASE WHEN {newer} THEN EXCLUDED.{q(c)} ELSE t.{q(c)} END" for c in columns
        ]
    joined = " FULL JOIN ".join(
        group if n == 0 else f"{group} USING ({key})" for n, group in enumerate(group_names)
    )
    names = ", ".join(map(q, inserted))
    changed = q(f"{state.name}_changed")
    ctes.append(
        f"{changed} AS (INSERT INTO {q(catalog.schema)}.{q(state.name)} AS t ({names}) "
        f"SELECT {names} FROM {joined} ORDER BY {key} "
        f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(set_clauses)}, updated_at = now() "
        f"WHERE {' OR '.join(conditions)} RETURNING 1)"
    )
    return ctes, changed


def _statement(
    catalog: Catalog, tables: Sequence[WriteTable], states: Sequence[StateTable]
) -> Statement:
    if not states:
        (table,) = tables
        return Statement(
            fact_tables=(table,),
            state_tables=(),
            sql=(
                f"WITH stored AS ({_insert_facts(table, '(' + _batch_select(table) + ') AS b')}) "
                "SELECT count(*) FROM stored"
            ),
        )
    ctes = [f"{q(t.name + '_batch')} AS MATERIALIZED ({_batch_select(t)})" for t in tables]
    ctes += [
        f"{q(t.name + '_stored')} AS ({_insert_facts(t, q(t.name + '_batch'))})" for t in tables
    ]
    counts = [f"(SELECT count(*) FROM {q(t.name + '_stored')})" for t in tables]
    for state in states:
        feeds = [
            (q(table.name + "_batch"), update)
            for table in tables
            if table.fact is not None
            for update in table.fact.updates
            if update.table == state.name
        ]
        state_ctes, changed = _state_upsert(catalog, state, feeds)
        ctes += state_ctes
        counts.append(f"(SELECT count(*) FROM {changed})")
    return Statement(
        fact_tables=tuple(tables),
        state_tables=tuple(state.name for state in states),
        sql=f"WITH {', '.join(ctes)} SELECT {', '.join(counts)}",
    )


def write_plan(catalog: Catalog) -> WritePlan:
    """The write tables and statements of ``catalog`` (see the module docstring)."""
    tables = [_write_table(catalog, fact) for fact in catalog.fact_tables]
    statements: list[Statement] = []
    placed: set[str] = set()
    for fact in catalog.fact_tables:
        if fact.name in placed:
            continue
        # The group: every fact table reachable through a shared state table.
        group_facts, group_states = [fact.name], []
        frontier = [fact]
        while frontier:
            current = frontier.pop()
            for update in current.updates:
                if update.table in group_states:
                    continue
                group_states.append(update.table)
                for other in catalog.fact_tables:
                    if other.name not in group_facts and any(
                        u.table == update.table for u in other.updates
                    ):
                        group_facts.append(other.name)
                        frontier.append(other)
        ordered = [t for t in tables if t.name in group_facts]
        placed.update(group_facts)
        state_order = [s for s in catalog.state_tables if s.name in group_states]
        statements.append(_statement(catalog, ordered, state_order))
    return WritePlan(catalog=catalog, tables=tuple(tables), statements=tuple(statements))


@cache
def builtin_plan() -> WritePlan:
    """The write plan of the built-in catalog, in the ``kingest`` schema."""
    return write_plan(load_catalog())


_BUILTIN: Final = builtin_plan()
#: The built-in catalog's fact tables, in write order.
FACT_TABLES: tuple[WriteTable, ...] = _BUILTIN.tables
TABLES_BY_EVENT_TYPE: dict[str, WriteTable] = _BUILTIN.by_event_type
#: The statements of one built-in batch write, in their fixed order (dead letters last).
WRITE_PLAN: tuple[Statement, ...] = _BUILTIN.statements
#: Columns every fact table starts with, in buffer order.
ENVELOPE: tuple[WriteColumn, ...] = FACT_TABLES[0].columns[:7]


def iter_statement_tables(plan: WritePlan | None = None) -> Iterator[WriteTable]:
    """Every fact table in the order the write plan writes them (for checks and tests)."""
    for statement in (plan or _BUILTIN).statements:
        yield from statement.fact_tables
