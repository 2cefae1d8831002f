"""Current-state tables: declared once per file, their column groups set by messages.

A state table's columns are derived from the updates that name it: its key columns
(``PRIMARY KEY``), then for each update its columns, the event time (``timestamptz``),
the event id (``uuid``) and the correlation id (``text``) of the group's event, and
``updated_at``. A column takes the type of the fact column it is set from (text for a
constant); it is ``NOT NULL`` when every update of the table sets it from a ``NOT NULL``
value (a column of one group stays NULL until that group's first event); an enumeration
keeps its ``CHECK`` of labels, widened by the constants set in the same column.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from kingest.catalog.model import (
    Column,
    FactTable,
    Index,
    Rank,
    StateAssignment,
    StateTable,
    StateUpdate,
)
from kingest.options.v1 import options_pb2

__all__ = ["state_tables_of", "state_update"]

_UPDATED_AT = Column(
    "updated_at",
    "timestamptz",
    not_null=True,
    default="now()",
    comment="When kingest last changed the row.",
)


def state_update(
    options: options_pb2.StateUpdate, fact: str, payload: Sequence[Column], problems: list[str]
) -> StateUpdate:
    """One declared update of ``fact``'s events, its default columns filled in."""
    key = tuple(options.key)
    by_field = {column.field.path[0]: column.name for column in payload if column.field}
    names = {column.name for column in payload}
    if options.columns:
        assignments = []
        for declared in options.columns:
            if declared.value:
                assignments.append(StateAssignment(declared.column, value=declared.value))
                continue
            source = by_field.get(
                declared.field or declared.column, declared.field or declared.column
            )
            if source not in names:
                problems.append(
                    f"{fact} updates {options.table}.{declared.column} from "
                    f"{declared.field or declared.column}, which {fact} has no column for"
                )
            assignments.append(StateAssignment(declared.column, source=source))
    else:
        assignments = [
            StateAssignment(column.name, source=column.name)
            for column in payload
            if column.name not in key
        ]
    for required, what in (
        (options.at_column, "at_column"),
        (options.event_id_column, "event_id_column"),
    ):
        if not required:
            problems.append(f"{fact} updates {options.table} without {what}")
    for column in key:
        if column not in names:
            problems.append(
                f"{fact} updates {options.table} by key {column}, not a column of {fact}"
            )
    rank = Rank(options.rank.column, tuple(options.rank.order)) if options.rank.column else None
    return StateUpdate(
        table=options.table,
        key=key,
        at_column=options.at_column,
        event_id_column=options.event_id_column,
        correlation_id_column=options.correlation_id_column or None,
        assignments=tuple(assignments),
        rank=rank,
    )


def state_tables_of(
    declarations: Sequence[options_pb2.StateTable],
    facts: Sequence[FactTable],
    problems: list[str],
) -> tuple[StateTable, ...]:
    """The declared state tables, with the columns the facts' updates give them."""
    declared = {declaration.name for declaration in declarations}
    for fact in facts:
        for update in fact.updates:
            if update.table not in declared:
                problems.append(f"{fact.name} updates {update.table}, which no file declares")
    return tuple(
        table
        for declaration in declarations
        if (table := _state_table(declaration, facts, problems)) is not None
    )


def _state_table(
    declaration: options_pb2.StateTable, facts: Sequence[FactTable], problems: list[str]
) -> StateTable | None:
    name = declaration.name
    updates = [(fact, update) for fact in facts for update in fact.updates if update.table == name]
    if not updates:
        problems.append(f"state table {name} is updated by no message")
        return None
    keys = {update.key for _, update in updates}
    if len(keys) != 1:
        problems.append(f"state table {name}: its updates disagree on the key: {sorted(keys)}")
        return None
    key = keys.pop()
    found: dict[str, list[_Source]] = {}

    def add(column: Column, fact: str, *, constant: bool = False) -> None:
        found.setdefault(column.name, []).append(_Source(column, fact, constant))

    facts_updating = {fact.name for fact, _ in updates}
    for column_name in key:
        for fact, _ in updates:
            add(fact.column(column_name), fact.name)
    for fact, update in updates:
        fact_columns = {column.name: column for column in fact.columns}
        for assignment in update.assignments:
            if assignment.value is not None:
                constant = Column(assignment.column, "text", True, None, (assignment.value,))
                add(constant, fact.name, constant=True)
            elif assignment.source in fact_columns:
                source = fact_columns[assignment.source]
                add(attrs.evolve(source, name=assignment.column, default=None), fact.name)
        add(Column(update.at_column, "timestamptz", not_null=True), fact.name)
        add(Column(update.event_id_column, "uuid", not_null=True), fact.name)
        if update.correlation_id_column:
            add(Column(update.correlation_id_column, "text", not_null=True), fact.name)
        _check_rank(name, fact, update, problems)
    comments = dict(declaration.column_comments)
    columns = [
        _merged(
            name,
            column_name,
            sources,
            facts_updating=facts_updating,
            comment=comments.get(column_name),
            problems=problems,
        )
        for column_name, sources in found.items()
    ]
    columns.append(_UPDATED_AT)
    names = {column.name for column in columns}
    indexes = []
    for index in declaration.indexes:
        unknown = [c for c in index.columns if c not in names]
        if unknown or not index.columns:
            problems.append(f"state table {name}: index names unknown columns {unknown}")
        index_name = index.name or f"{name}_{'_'.join(index.columns)}_idx"
        indexes.append(Index(index_name, tuple(index.columns)))
    return StateTable(
        name=name,
        primary_key=key,
        columns=tuple(columns),
        indexes=tuple(indexes),
        comment=declaration.comment or None,
    )


@attrs.frozen
class _Source:
    """A value a fact table's events set a state column to: a fact column's, or a constant."""

    column: Column
    fact: str
    constant: bool


def _merged(
    table: str,
    name: str,
    sources: list[_Source],
    *,
    facts_updating: set[str],
    comment: str | None,
    problems: list[str],
) -> Column:
    types = {source.column.sql_type for source in sources}
    if len(types) > 1:
        problems.append(f"state table {table}.{name} is set from columns of types {sorted(types)}")
    checks: list[str] = []
    for source in sources:
        checks += [value for value in source.column.check_values if value not in checks]
    enumerated = any(source.column.check_values and not source.constant for source in sources)
    # The first event of a key creates its row: a column is certain to be set then only
    # when every message that updates the table sets it.
    every_update = {source.fact for source in sources} == facts_updating
    return Column(
        name=name,
        sql_type=sources[0].column.sql_type,
        not_null=every_update and all(source.column.not_null for source in sources),
        check_values=tuple(checks) if enumerated else (),
        comment=comment,
    )


def _check_rank(table: str, fact: FactTable, update: StateUpdate, problems: list[str]) -> None:
    if update.rank is None:
        return
    assigned = {assignment.column for assignment in update.assignments}
    if update.rank.column not in assigned:
        problems.append(
            f"{fact.name} ranks {table} by {update.rank.column}, a column its update does not set"
        )
