"""Breaking changes from one catalog to the next: what the new one would break of the old.

Two kinds of thing break. Messages already on the topics were encoded with the old
descriptors, so a field number must keep its name, type, cardinality and oneof (the
rules of ``buf breaking``'s ``WIRE_JSON`` category, with its stricter ``FIELD_SAME_TYPE``:
a field whose type changes changes its column's type too), and a field removed must
leave its number and name reserved, so that neither is reused for something else. And
rows already stored follow the old tables: a table or column the new catalog no longer
has would be dropped or left unwritten, a state table's key cannot change in place, and
an enumeration that loses a label would get a CHECK that refuses the rows holding it.

Each finding names its rule, says what changed and how to proceed. Nothing here reads the
database: the schema planner decides which findings still matter for the tables it finds
(a table dropped by hand is no longer at risk of being dropped).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from google.protobuf import descriptor_pb2

from kingest.catalog.model import Catalog, FactTable, StateTable

__all__ = ["REMOVAL_RULES", "Incompatibility", "catalog_incompatibilities"]

_Field = descriptor_pb2.FieldDescriptorProto

#: Rules whose finding is moot once the table or columns it names are gone from the
#: database (dropped by hand on purpose).
REMOVAL_RULES = frozenset({"TABLE_NO_DELETE", "COLUMN_NO_DELETE"})

# Files a catalog imports rather than owns: their messages are nobody's tables.
_IMPORTED_PREFIXES = ("google/protobuf/", "kingest/options/")


@dataclass(frozen=True)
class Incompatibility:
    """One breaking change: ``rule`` (``buf breaking``'s name where it has one), what
    changed (``message``) and how to proceed (``remedy``); ``table`` and ``columns`` name
    the stored data it concerns, when it concerns stored data; ``affects`` every
    (table, column) it concerns, the state columns a fact column sets included."""

    rule: str
    message: str
    remedy: str
    table: str | None = None
    columns: tuple[str, ...] = ()
    affects: frozenset[tuple[str, str]] = frozenset()

    def __str__(self) -> str:
        return f"{self.message} [{self.rule}] To proceed: {self.remedy}"


@dataclass(frozen=True)
class _Message:
    name: str
    proto: descriptor_pb2.DescriptorProto
    proto3: bool


def _walk_messages(
    prefix: str, messages: list[descriptor_pb2.DescriptorProto], proto3: bool
) -> Iterator[_Message]:
    for message in messages:
        name = f"{prefix}.{message.name}" if prefix else message.name
        if not message.options.map_entry:
            yield _Message(name, message, proto3)
        yield from _walk_messages(name, list(message.nested_type), proto3)


def _own_files(catalog: Catalog) -> list[descriptor_pb2.FileDescriptorProto]:
    files = descriptor_pb2.FileDescriptorSet.FromString(catalog.descriptor_set).file
    return [f for f in files if not f.name.startswith(_IMPORTED_PREFIXES)]


def _messages(catalog: Catalog) -> dict[str, _Message]:
    found: dict[str, _Message] = {}
    for file in _own_files(catalog):
        proto3 = file.syntax == "proto3"
        for message in _walk_messages(file.package, list(file.message_type), proto3):
            found[message.name] = message
    return found


def _enums(catalog: Catalog) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found: dict[str, descriptor_pb2.EnumDescriptorProto] = {}

    def nested(prefix: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}" if prefix else message.name
            for enum in message.enum_type:
                found[f"{name}.{enum.name}"] = enum
            nested(name, list(message.nested_type))

    for file in _own_files(catalog):
        for enum in file.enum_type:
            found[f"{file.package}.{enum.name}" if file.package else enum.name] = enum
        nested(file.package, list(file.message_type))
    return found


def _type_of(field: _Field) -> str:
    if field.type in (_Field.TYPE_MESSAGE, _Field.TYPE_ENUM, _Field.TYPE_GROUP):
        return field.type_name.lstrip(".")
    return _Field.Type.Name(field.type).removeprefix("TYPE_").lower()


def _cardinality(field: _Field, proto3: bool) -> str:
    if field.label == _Field.LABEL_REPEATED:
        return "repeated"
    if field.label == _Field.LABEL_REQUIRED:
        return "required"
    explicit = (
        field.proto3_optional
        or not proto3
        or field.type in (_Field.TYPE_MESSAGE, _Field.TYPE_GROUP)
        or field.HasField("oneof_index")
    )
    return "optional" if explicit else "implicit"


def _oneof_of(field: _Field, message: descriptor_pb2.DescriptorProto) -> str | None:
    if not field.HasField("oneof_index") or field.proto3_optional:
        return None
    return message.oneof_decl[field.oneof_index].name


def _reserved(number: int, name: str, proto: descriptor_pb2.DescriptorProto) -> bool:
    """Both the number (ranges are end-exclusive) and the name are reserved."""
    number_reserved = any(r.start <= number < r.end for r in proto.reserved_range)
    return number_reserved and name in proto.reserved_name


def _enum_value_reserved(number: int, name: str, enum: descriptor_pb2.EnumDescriptorProto) -> bool:
    """Both reserved (enum reserved ranges, unlike message ones, include their end)."""
    number_reserved = any(r.start <= number <= r.end for r in enum.reserved_range)
    return number_reserved and name in enum.reserved_name


class _Columns:
    """Which columns of the old catalog a field of a message fills."""

    def __init__(self, catalog: Catalog) -> None:
        self._by_field: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._tables_by_message: dict[str, str] = {}
        self._state_columns: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for table in catalog.fact_tables:
            for update in table.updates:
                pairs = [(a.source, a.column) for a in update.assignments if a.source]
                for source, column_name in [*pairs, *((k, k) for k in update.key)]:
                    derived = self._state_columns.setdefault((table.name, source), set())
                    derived.add((update.table, column_name))
            self._tables_by_message[table.message] = table.name
            for column in table.columns:
                if column.field is not None:
                    key = (table.message, column.field.path[0])
                    self._by_field.setdefault(key, []).append((table.name, column.name))

    def derived(self, table: str, columns: tuple[str, ...]) -> frozenset[tuple[str, str]]:
        """The state columns that the fact columns ``columns`` of ``table`` set."""
        found: set[tuple[str, str]] = set()
        for column in columns:
            found |= self._state_columns.get((table, column), set())
        return frozenset(found)

    def of(self, message: str, field: _Field) -> tuple[str | None, tuple[str, ...]]:
        """(table, columns) a field fills: its own columns, or a whole fact table when it
        is an envelope's member of that table's message type."""
        pairs = self._by_field.get((message, field.name), [])
        if pairs:
            return pairs[0][0], tuple(column for _, column in pairs)
        member_table = self._tables_by_message.get(field.type_name.lstrip("."))
        if member_table is not None and field.HasField("oneof_index"):
            return member_table, ()
        return None, ()


def _field_findings(old: _Message, new: _Message, columns: _Columns) -> Iterator[Incompatibility]:
    new_fields = {field.number: field for field in new.proto.field}
    for field in old.proto.field:
        subject = f"field {old.name}.{field.name} (number {field.number})"
        table, affected = columns.of(old.name, field)
        replacement = new_fields.get(field.number)
        if replacement is None:
            if not _reserved(field.number, field.name, new.proto):
                yield Incompatibility(
                    "FIELD_NO_DELETE",
                    f"{subject} was removed without reserving its number and name.",
                    f'add `reserved {field.number}; reserved "{field.name}";` to '
                    f"{new.proto.name}, so that neither is reused for another field "
                    "(messages already on the topics still carry it).",
                    table,
                    affected,
                )
            continue
        if replacement.name != field.name:
            yield Incompatibility(
                "FIELD_SAME_NAME",
                f"{subject} is now named {replacement.name!r}: messages already "
                "encoded with the old field would fill the new one.",
                f"keep the number for {field.name!r} (or reserve it and its name) and "
                f"give {replacement.name!r} a new number.",
                table,
                affected,
            )
            continue
        if replacement.json_name != field.json_name:
            yield Incompatibility(
                "FIELD_SAME_JSON_NAME",
                f"{subject} has JSON name {replacement.json_name!r}, was {field.json_name!r}.",
                "keep the JSON name, or add a new field with a new number.",
                table,
                affected,
            )
        old_type, new_type = _type_of(field), _type_of(replacement)
        if old_type != new_type:
            yield Incompatibility(
                "FIELD_SAME_TYPE",
                f"{subject} changed type from {old_type} to {new_type}: messages "
                "already on the topics and rows already stored hold the old type.",
                f"add a new field with a new number and name for the {new_type} value; "
                f"keep {field.name!r} (or reserve its number and name).",
                table,
                affected,
            )
        old_card, new_card = _cardinality(field, old.proto3), _cardinality(replacement, new.proto3)
        if old_card != new_card:
            yield Incompatibility(
                "FIELD_SAME_CARDINALITY",
                f"{subject} changed from {old_card} to {new_card}.",
                "add a new field with a new number and name instead.",
                table,
                affected,
            )
        old_oneof, new_oneof = _oneof_of(field, old.proto), _oneof_of(replacement, new.proto)
        if old_oneof != new_oneof:
            yield Incompatibility(
                "FIELD_SAME_ONEOF",
                f"{subject} moved from oneof {old_oneof!r} to {new_oneof!r}.",
                "keep the field where it was, or add a new field with a new number.",
                table,
                affected,
            )


def _enum_findings(
    name: str,
    old: descriptor_pb2.EnumDescriptorProto,
    new: descriptor_pb2.EnumDescriptorProto,
) -> Iterator[Incompatibility]:
    new_values = {value.number: value for value in new.value}
    for value in old.value:
        replacement = new_values.get(value.number)
        if replacement is None:
            if not _enum_value_reserved(value.number, value.name, new):
                yield Incompatibility(
                    "ENUM_VALUE_NO_DELETE",
                    f"enum value {name}.{value.name} ({value.number}) was removed "
                    "without reserving its number and name.",
                    f'keep it, or add `reserved {value.number}; reserved "{value.name}";` '
                    f"to {new.name}.",
                )
        elif replacement.name != value.name:
            yield Incompatibility(
                "ENUM_VALUE_SAME_NAME",
                f"enum value {value.number} of {name} is now {replacement.name}, was {value.name}.",
                f"keep the number for {value.name} and give {replacement.name} a new one.",
            )


def _descriptor_findings(old: Catalog, new: Catalog, columns: _Columns) -> list[Incompatibility]:
    findings: list[Incompatibility] = []
    new_messages = _messages(new)
    for name, message in _messages(old).items():
        if name in new_messages:
            findings += _field_findings(message, new_messages[name], columns)
    new_enums = _enums(new)
    for name, enum in _enums(old).items():
        if name in new_enums:
            findings += _enum_findings(name, enum, new_enums[name])
    return findings


def _table_findings(
    schema: str,
    old_table: FactTable | StateTable,
    new_table: FactTable | StateTable,
    covered: set[tuple[str, str]],
) -> Iterator[Incompatibility]:
    name = old_table.name
    qualified = f"{schema}.{name}"
    if old_table.primary_key != new_table.primary_key:
        yield Incompatibility(
            "TABLE_SAME_KEY",
            f"table {name}: its key changed from ({', '.join(old_table.primary_key)}) to "
            f"({', '.join(new_table.primary_key)}): the stored rows are keyed the old way.",
            "give the table with the new key a new name (the old one stays as it is), or "
            f"drop {qualified} by hand and apply again to create it afresh.",
            name,
        )
    new_columns = {column.name: column for column in new_table.columns}
    for column in old_table.columns:
        if (name, column.name) in covered:
            continue
        replacement = new_columns.get(column.name)
        if replacement is None:
            yield Incompatibility(
                "COLUMN_NO_DELETE",
                f"column {name}.{column.name} is no longer in the catalog: kingest would "
                "stop writing it and its rows would keep the old values.",
                f"keep what fills it, or, to retire it on purpose, drop it by hand (ALTER "
                f"TABLE {qualified} DROP COLUMN {column.name}) and apply again.",
                name,
                (column.name,),
            )
            continue
        if replacement.sql_type != column.sql_type:
            yield Incompatibility(
                "COLUMN_SAME_TYPE",
                f"column {name}.{column.name} changed type from {column.sql_type} to "
                f"{replacement.sql_type}.",
                "keep the type, or store the new value in a new column.",
                name,
                (column.name,),
            )
        lost = [v for v in column.check_values if v not in replacement.check_values]
        if lost and replacement.check_values:
            yield Incompatibility(
                "COLUMN_CHECK_NO_NARROWING",
                f"column {name}.{column.name} no longer accepts "
                f"{', '.join(repr(v) for v in lost)}: its CHECK would refuse the stored "
                "rows that hold any of them.",
                "keep the values in the enumeration (deprecated if need be).",
                name,
                (column.name,),
            )


def catalog_incompatibilities(old: Catalog, new: Catalog) -> list[Incompatibility]:
    """Every breaking change from ``old`` to ``new``; empty when ``new`` only adds.

    Field and enum findings come first (the descriptors), then table findings for what
    they do not already explain: a column whose field was removed or retyped is reported
    once, as the field (with the state columns its fact column sets).
    """
    columns = _Columns(old)
    findings = [
        replace(f, affects=_affected(f) | columns.derived(f.table, f.columns)) if f.table else f
        for f in _descriptor_findings(old, new, columns)
    ]
    covered = {pair for f in findings for pair in f.affects}
    covered |= {(f.table, "*") for f in findings if f.table and not f.columns}
    new_tables = {table.name: table for table in new.tables}
    for old_table in old.tables:
        new_table = new_tables.get(old_table.name)
        if new_table is None:
            if (old_table.name, "*") in covered:
                continue
            findings.append(
                Incompatibility(
                    "TABLE_NO_DELETE",
                    f"table {old_table.name} is no longer in the catalog: kingest would "
                    "stop writing it.",
                    "keep the message it comes from, or, to retire it on purpose, drop it "
                    f"by hand (DROP TABLE {new.schema}.{old_table.name}) and apply again.",
                    old_table.name,
                )
            )
            continue
        findings += _table_findings(new.schema, old_table, new_table, covered)
    return [replace(f, affects=f.affects | _affected(f)) for f in findings]


def _affected(finding: Incompatibility) -> frozenset[tuple[str, str]]:
    if finding.table is None:
        return frozenset()
    return frozenset((finding.table, column) for column in finding.columns)
