"""A catalog's messages to column buffers: the row functions, compiled at start-up.

For each fact table the catalog's field mappings are turned into one Python function
that appends a payload's values to the table's column buffers, written out as the
hand-written mappers were: one attribute read and one ``append`` per column, enum labels
looked up through a dict, maps encoded to JSON only when not empty. Lookups that can
fail (an enum number the table does not know) come first, so a row is either wholly
buffered or not at all. Columns of a type the write plan casts in SQL
(:attr:`kingest.store.tables.ColumnType.CAST`) are buffered as text or None.

:class:`RowReader` bundles what :class:`kingest.store.rows.RowBatch` needs per catalog:
decoders, the validator, the row functions and the envelope readers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Final

import attrs
from google.protobuf import json_format
from google.protobuf.message import Message

from kingest.catalog import Column, FieldMapping, ValueKind
from kingest.schema import (
    EventValidator,
    MessageDecoder,
    attribute_read,
    catalog_classes,
    catalog_decoders,
)
from kingest.store.tables import ColumnType, WritePlan, WriteTable, builtin_plan

__all__ = ["ENVELOPE_WIDTH", "RowFunction", "RowReader", "compile_row_functions", "row_reader"]

#: Buffers 0-6 hold the envelope columns (event_id ... kafka_offset).
ENVELOPE_WIDTH: Final = 7
_EMPTY_JSON_OBJECT: Final = "{}"

#: Map values json.dumps writes as they are.
_JSON_SCALARS: Final = frozenset(
    {ValueKind.TEXT, ValueKind.INT, ValueKind.UINT64, ValueKind.FLOAT, ValueKind.BOOL}
)

#: The value of a column whose flattened parent message is unset: NULL in every case
#: (optional text travels as '' and becomes NULL in SQL).
_UNSET: Final = {ColumnType.OPTIONAL_TEXT: "''"}

RowFunction = Callable[[Any, list[list[Any]]], None]


def _json_object(entries: Mapping[str, Any]) -> str:
    return json.dumps(dict(entries)) if entries else _EMPTY_JSON_OBJECT


def _message_json(message: Message) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _to_text(value: Any) -> str | None:
    """A value as the text PostgreSQL's input of its column type reads."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, Message):
        return _message_json(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


_HELPERS: Final = {
    "_json_object": _json_object,
    "_message_json": _message_json,
    "_to_text": _to_text,
    "_json_value": _json_value,
    "json": json,
}


class _Source:
    """Source text of one row function and the constants its namespace holds."""

    def __init__(self) -> None:
        self.first: list[str] = []
        self.appends: list[str] = []
        self.constants: dict[str, Any] = {}

    def constant(self, value: Any) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name


def _labels(field: FieldMapping, nullable: bool) -> dict[int, str]:
    """Number -> stored text; UNSPECIFIED is '' (NULL) in a NULL-able column and has no
    entry in a NOT NULL one (the validator refused it; a lookup would fail safely)."""
    labels = dict(field.labels)
    if nullable:
        labels[0] = ""
    else:
        labels.pop(0, None)
    return labels


def _value(out: _Source, column: Column, transport: ColumnType, number: int) -> str:
    """The expression of one column's value, reading the payload ``p``."""
    field = column.field
    assert field is not None
    parent = "p"
    guards: list[str] = []
    for step in field.path[:-1]:
        guards.append(f"{parent}.HasField({step!r})")
        parent = attribute_read(parent, step)
    name = field.path[-1]
    read = attribute_read(parent, name)
    kind = field.kind
    present = f"{parent}.HasField({name!r})"
    # Rendering JSON may raise (a value json cannot hold): such values are computed
    # before the first append, so that a failure leaves the row wholly unbuffered.
    risky = kind in (ValueKind.JSON, ValueKind.ARRAY) and field.map_value not in _JSON_SCALARS
    if kind is ValueKind.ENUM:
        labels = out.constant(_labels(field, nullable=not column.not_null))
        local = f"e{number}"
        out.first.append(f"{local} = {labels}[{read}]")
        expression = local
    elif kind is ValueKind.JSON and field.map_value is not None:
        if field.map_value in _JSON_SCALARS:
            expression = f"_json_object({read})"
        elif field.map_value is ValueKind.ENUM:
            labels = out.constant(dict(field.labels))
            expression = f"json.dumps({{k: {labels}.get(v, v) for k, v in {read}.items()}})"
        else:
            expression = f"json.dumps({{k: _json_value(v) for k, v in {read}.items()}})"
    elif kind is ValueKind.JSON:
        if column.default == "'[]'":
            expression = f"json.dumps([_json_value(v) for v in {read}])"
        else:
            expression = f"(json.dumps(_message_json({read})) if {present} else None)"
    elif kind is ValueKind.ARRAY:
        if field.element is ValueKind.ENUM:
            labels = out.constant(dict(field.labels))
            expression = f"json.dumps([{labels}.get(v, str(v)) for v in {read}])"
        elif field.element is ValueKind.BYTES:
            expression = f"json.dumps([v.hex() for v in {read}])"
        else:
            expression = f"json.dumps(list({read}))"
    elif kind in (ValueKind.TIMESTAMP, ValueKind.DURATION):
        local = f"t{number}"
        out.first.append(f"{local} = {read}")
        expression = (
            # int(nanos / 1000) truncates toward zero: a negative duration's nanos are < 0.
            f"(str({local}.seconds * 1000000 + int({local}.nanos / 1000)) if {present} else None)"
        )
    elif field.wrapped:
        expression = f"(_to_text({read}.value) if {present} else None)"
    elif transport is ColumnType.CAST:
        if kind in (ValueKind.TEXT, ValueKind.BYTES) and not column.not_null:
            expression = f"_to_text({read} or None)"  # empty: NULL
        elif field.present and kind not in (ValueKind.TEXT, ValueKind.BYTES):
            expression = f"(_to_text({read}) if {present} else None)"
        else:
            expression = f"_to_text({read})"
    else:
        expression = read
    unset = _UNSET.get(transport, "None")
    if column.default is not None:  # a map, list or array under an unset parent: empty
        unset = repr("[]" if column.default == "'[]'" or kind is ValueKind.ARRAY else "{}")
    for guard in reversed(guards):
        expression = f"({expression} if {guard} else {unset})"
    if risky:
        local = f"j{number}"
        out.first.append(f"{local} = {expression}")
        return local
    return expression


def _row_source(table: WriteTable, out: _Source) -> None:
    assert table.fact is not None
    payload = table.fact.payload_columns
    transports = {column.name: column.type for column in table.columns}
    for offset, column in enumerate(payload):
        position = ENVELOPE_WIDTH + offset
        value = _value(out, column, transports[column.name], position)
        out.appends.append(f"c[{position}].append({value})")


def compile_row_functions(plan: WritePlan) -> dict[str, RowFunction]:
    """Event type -> a function appending a payload's columns to its table's buffers."""
    functions: dict[str, RowFunction] = {}
    for table in plan.tables:
        out = _Source()
        _row_source(table, out)
        body = [*out.first, *out.appends] or ["return None"]
        source = "def row(p, c):\n" + "".join(f"    {line}\n" for line in body)
        namespace: dict[str, Any] = {**_HELPERS, **out.constants}
        exec(compile(source, f"<kingest row of {table.event_type}>", "exec"), namespace)  # noqa: S102
        function: RowFunction = namespace["row"]
        function.__doc__ = source
        functions[table.event_type] = function
    return functions


@attrs.frozen
class RowReader:
    """Everything a RowBatch needs to turn one catalog's Kafka records into rows.

    ``envelope`` decodes the envelope topics (None without an envelope); ``topics``
    decodes each typed topic; ``kinds`` maps a message's full name to its event type.
    """

    plan: WritePlan
    validator: EventValidator
    rows: Mapping[str, RowFunction]
    envelope: MessageDecoder | None
    topics: Mapping[str, MessageDecoder]
    kinds: Mapping[str, str]

    def fields_of(self, kind: str) -> Callable[[Message], tuple[str, str, str]]:
        """The ``(event_id, correlation_id, source)`` reader of a typed topic's ``kind``."""
        return self.validator.fields_of(kind)


@cache
def row_reader(plan: WritePlan | None = None) -> RowReader:
    """The reader of ``plan``'s catalog (the built-in catalog's by default), made once."""
    plan = plan or builtin_plan()
    catalog = plan.catalog
    classes = catalog_classes(catalog)
    envelope, topics = catalog_decoders(catalog, classes)
    return RowReader(
        plan=plan,
        validator=EventValidator(catalog, classes),
        rows=compile_row_functions(plan),
        envelope=envelope,
        topics=topics,
        kinds={table.message: table.event_type for table in catalog.fact_tables},
    )
