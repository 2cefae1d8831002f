"""What a catalog says: tables, their columns, keys, indexes and comments.

Plain frozen values, derived once at start-up by :mod:`kingest.catalog.load` and read by
the DDL renderer (:mod:`kingest.catalog.ddl`), the schema planner and the row mapping.
A fact table holds one row per event of one message type; a state table one row per key,
updated from fact tables' events column group by column group (:class:`StateUpdate`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

__all__ = [
    "Catalog",
    "Column",
    "EnvelopeFields",
    "FactTable",
    "FieldMapping",
    "Index",
    "Rank",
    "StateAssignment",
    "StateTable",
    "StateUpdate",
    "ValueKind",
]


class ValueKind(enum.Enum):
    """How a field's value is read from a message and sent to its column."""

    TEXT = "text"
    BYTES = "bytes"
    INT = "int"
    UINT64 = "uint64"
    FLOAT = "float"
    BOOL = "bool"
    ENUM = "enum"
    TIMESTAMP = "timestamp"
    DURATION = "duration"
    ARRAY = "array"
    JSON = "json"


@attrs.frozen
class FieldMapping:
    """Where a fact column's value comes from, and the rules it must satisfy.

    ``path`` is the field names from the table's message down to the field (two or more
    for a flattened nested message); ``wrapped`` says the field is a wrapper message
    (``google.protobuf.Int64Value``...) whose ``value`` is read when it is set.
    ``present`` says the field tracks presence (proto3 ``optional``, a oneof member, a
    message, a wrapper): unset is NULL rather than the type's zero. ``element`` is the
    kind of a repeated field's items, ``map_value`` that of a map's values; ``labels``
    maps an enumeration's numbers to the text stored.
    """

    path: tuple[str, ...]
    kind: ValueKind
    proto_type: str
    required: bool = False
    keep_empty: bool = False
    present: bool = False
    wrapped: bool = False
    element: ValueKind | None = None
    map_value: ValueKind | None = None
    labels: Mapping[int, str] = attrs.field(factory=dict)
    max_length: int | None = None
    gte: float | None = None
    lte: float | None = None
    lt: float | None = None


@attrs.frozen
class Column:
    """A column as PostgreSQL sees it, and (for a fact column) where its value comes from.

    ``check_values`` non-empty means a ``CHECK (column IN (...))`` constraint named
    ``<table>_<column>_check``: the labels of an enumeration.
    """

    name: str
    sql_type: str
    not_null: bool = False
    default: str | None = None
    check_values: tuple[str, ...] = ()
    comment: str | None = None
    field: FieldMapping | None = None


@attrs.frozen
class Index:
    name: str
    columns: tuple[str, ...]


@attrs.frozen
class Rank:
    """Ties at one event time go to the event whose ``column`` value comes later in ``order``."""

    column: str
    order: tuple[str, ...]


@attrs.frozen
class StateAssignment:
    """A state column set from a fact column (``source``) or to a constant (``value``)."""

    column: str
    source: str | None = None
    value: str | None = None


@attrs.frozen
class StateUpdate:
    """One column group of a state table, set from a fact table's events.

    The group changes only when the incoming ``(occurred_at[, rank], event_id)`` is
    greater than the one stored in ``(at_column[, rank column], event_id_column)``.
    ``key`` names fact columns that are also the state table's key columns.
    """

    table: str
    key: tuple[str, ...]
    at_column: str
    event_id_column: str
    correlation_id_column: str | None
    assignments: tuple[StateAssignment, ...]
    rank: Rank | None = None


@attrs.frozen
class EnvelopeFields:
    """Which fields of a message hold the envelope values, by role.

    ``fields`` maps a role (``event_id``, ``correlation_id``, ``occurred_at``,
    ``source``) to the field's name; a role without a field is derived by kingest (event
    id from the Kafka coordinates, occurred_at from the Kafka timestamp, correlation id
    from the header or the event id, source empty). ``occurred_at_required`` refuses an
    event whose occurred_at field is unset instead.
    """

    fields: Mapping[str, str] = attrs.field(factory=dict)
    occurred_at_required: bool = False


@attrs.frozen
class FactTable:
    """An append-only table of one message type: kingest's envelope columns, then its fields.

    ``event_type`` is the name kingest knows the events by: the envelope's oneof member
    (``training_run_started``), or the table name for a message of a topic.
    """

    name: str
    message: str
    event_type: str
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...]
    comment: str | None
    updates: tuple[StateUpdate, ...] = ()
    #: The envelope fields of the table's own message (per-topic mode).
    envelope: EnvelopeFields = attrs.field(factory=EnvelopeFields)
    #: An event holding fields the catalog does not define becomes a dead letter (True,
    #: the default) or is stored without them (the file's ``unknown_fields`` option).
    dead_letter_unknown_fields: bool = True

    @property
    def primary_key(self) -> tuple[str, ...]:
        return ("event_id",)

    @property
    def payload_columns(self) -> tuple[Column, ...]:
        return tuple(column for column in self.columns if column.field is not None)

    def column(self, name: str) -> Column:
        return next(column for column in self.columns if column.name == name)


@attrs.frozen
class StateTable:
    """A current-state table: one row per key, column groups set by :class:`StateUpdate`."""

    name: str
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...]
    comment: str | None

    def column(self, name: str) -> Column:
        return next(column for column in self.columns if column.name == name)


@attrs.frozen
class Catalog:
    """Every table of a catalog, in creation order, and the descriptor set it came from.

    ``envelope`` is the full name of the envelope message (None when every message comes
    from a topic of its own: ``topic_types`` maps each topic to its message's full name).
    ``digest`` is the SHA-256 of ``descriptor_set``, recorded with each applied schema.
    """

    schema: str
    fact_tables: tuple[FactTable, ...]
    state_tables: tuple[StateTable, ...]
    envelope: str | None
    envelope_fields: EnvelopeFields
    topic_types: Mapping[str, str]
    descriptor_set: bytes = attrs.field(repr=False)
    digest: str

    @property
    def tables(self) -> tuple[FactTable | StateTable, ...]:
        return (*self.fact_tables, *self.state_tables)

    def table(self, name: str) -> FactTable | StateTable:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)
