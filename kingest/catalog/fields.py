"""A message's fields to columns, by the type table of :mod:`kingest.catalog.types`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import attrs
from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
)

from kingest.catalog.extensions import column_options, enum_label
from kingest.catalog.model import Column, EnvelopeFields, FieldMapping, ValueKind
from kingest.catalog.types import SCALAR_TYPES, WELL_KNOWN_TYPES, WRAPPER_TYPES, F, proto_type_name
from kingest.options.v1 import options_pb2

__all__ = [
    "CONVENTIONAL_ROLES",
    "FieldContext",
    "columns_of_message",
    "enum_labels",
    "envelope_fields",
    "envelope_roles",
    "one_line",
]

Role = options_pb2.Role

#: Envelope fields found by name when no field of the message carries a role.
CONVENTIONAL_ROLES: Final = {
    Role.ROLE_EVENT_ID: "event_id",
    Role.ROLE_CORRELATION_ID: "correlation_id",
    Role.ROLE_OCCURRED_AT: "occurred_at",
    Role.ROLE_SOURCE: "source",
}
#: What protoc and buf accept as a field name (a descriptor set made otherwise is refused:
#: the names end up in generated code and SQL).
_FIELD_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: How deep flattened messages may nest (a recursive message type ends there as jsonb).
_MAX_FLATTEN_DEPTH: Final = 4


@attrs.frozen
class FieldContext:
    """What deriving columns reads: the set's messages, enums and comments by full name."""

    messages: Mapping[str, DescriptorProto]
    enums: Mapping[str, EnumDescriptorProto]
    comments: Mapping[str, str]
    problems: list[str]

    def comment(self, full_name: str) -> str | None:
        return one_line(self.comments.get(full_name, ""))


def one_line(text: str) -> str | None:
    """A ``.proto`` comment as one line of text (a table's or column's COMMENT)."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or None


def envelope_fields(message: DescriptorProto) -> EnvelopeFields:
    """The message's envelope fields by role name, and whether occurred_at is required."""
    roles = envelope_roles(message)
    names = {int(role): name for role, name in CONVENTIONAL_ROLES.items()}
    fields = {names[role]: name for role, name in roles.items()}
    required = any(
        field.name == fields.get("occurred_at") and column_options(field).required
        for field in message.field
    )
    return EnvelopeFields(fields=fields, occurred_at_required=required)


def envelope_roles(message: DescriptorProto) -> dict[int, str]:
    """Role -> field name of the message's envelope fields, by option, else by name."""
    by_option: dict[int, str] = {
        column_options(field).role: field.name
        for field in message.field
        if column_options(field).role
    }
    if by_option:
        return by_option
    names = {field.name for field in message.field}
    return {role: name for role, name in CONVENTIONAL_ROLES.items() if name in names}


def snake_case(name: str) -> str:
    """``PromptCompleted`` -> ``prompt_completed``; ``GPUSample`` -> ``gpu_sample``."""
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", spaced).lower()


def enum_labels(enum: EnumDescriptorProto) -> dict[int, str]:
    """Number -> stored text: the ``label`` option, else the value's name without the
    enum's prefix, lowercased (``RUN_STATUS_FAILED`` of ``RunStatus`` -> ``failed``)."""
    prefix = snake_case(enum.name).upper() + "_"
    labels: dict[int, str] = {}
    for value in enum.value:
        label = enum_label(value)
        labels[value.number] = value.name.removeprefix(prefix).lower() if label is None else label
    return labels


def _is_map(context: FieldContext, field: FieldDescriptorProto) -> bool:
    message = context.messages.get(field.type_name)
    return message is not None and message.options.map_entry


def columns_of_message(
    context: FieldContext,
    full_name: str,
    *,
    skip: frozenset[str] = frozenset(),
    prefix: str = "",
    path: tuple[str, ...] = (),
    in_optional: bool = False,
    depth: int = 0,
) -> list[Column]:
    """The columns of a message's fields, in field order (``skip`` names left out).

    ``in_optional``: the message is a flattened field that may be unset, so each of its
    columns is NULL then, whatever its own type.
    """
    message = context.messages[full_name]
    columns: list[Column] = []
    for field in message.field:
        if field.name in skip:
            continue
        options = column_options(field)
        if not _FIELD_NAME.fullmatch(field.name):
            context.problems.append(f"{full_name[1:]}.{field.name}: not a field name")
            continue
        name = prefix + (options.name or field.name)
        field_path = (*path, field.name)
        comment = context.comment(f"{full_name}.{field.name}")
        member_present = field.proto3_optional or field.HasField("oneof_index")
        if (
            options.flatten
            and field.type == F.TYPE_MESSAGE
            and field.label != F.LABEL_REPEATED
            and field.type_name in context.messages
            and depth < _MAX_FLATTEN_DEPTH
        ):
            columns += columns_of_message(
                context,
                field.type_name,
                prefix=f"{name}_",
                path=field_path,
                in_optional=not options.required or in_optional,
                depth=depth + 1,
            )
            continue
        column = _column(
            context,
            field,
            options,
            name=name,
            path=field_path,
            present=member_present,
            comment=comment,
        )
        if column is not None and in_optional and column.not_null and column.default is None:
            column = attrs.evolve(column, not_null=False)
        if column is not None:
            columns.append(column)
    return columns


def _column(
    context: FieldContext,
    field: FieldDescriptorProto,
    options: options_pb2.ColumnOptions,
    *,
    name: str,
    path: tuple[str, ...],
    present: bool,
    comment: str | None,
) -> Column | None:
    def mapping(kind: ValueKind, **rules: object) -> FieldMapping:
        return FieldMapping(
            path=path,
            kind=kind,
            proto_type=proto_type_name(field),
            required=options.required,
            keep_empty=options.keep_empty,
            present=present,
            max_length=options.max_length or None,
            gte=options.gte if options.HasField("gte") else None,
            lte=options.lte if options.HasField("lte") else None,
            lt=options.lt if options.HasField("lt") else None,
            **rules,  # type: ignore[arg-type]
        )

    def column(sql_type: str, not_null: bool, kind: ValueKind, **more: object) -> Column:
        default = more.pop("default", None)
        check = more.pop("check_values", ())
        return Column(
            name=name,
            sql_type=options.type or sql_type,
            not_null=not_null,
            default=default,  # type: ignore[arg-type]
            check_values=check,  # type: ignore[arg-type]
            comment=comment,
            field=mapping(kind, **more),
        )

    if _is_map(context, field):
        entry = context.messages[field.type_name]
        value = next(f for f in entry.field if f.name == "value")
        value_kind = SCALAR_TYPES[value.type][1] if value.type in SCALAR_TYPES else ValueKind.JSON
        labels: dict[int, str] = {}
        if value.type == F.TYPE_ENUM:
            value_kind = ValueKind.ENUM
            enum = context.enums.get(value.type_name)
            labels = enum_labels(enum) if enum is not None else {}
        return column(
            "jsonb", True, ValueKind.JSON, default="'{}'", map_value=value_kind, labels=labels
        )
    repeated = field.label == F.LABEL_REPEATED
    if field.type == F.TYPE_ENUM:
        enum = context.enums.get(field.type_name)
        if enum is None:
            context.problems.append(f"{'.'.join(path)}: enum {field.type_name} is not in the set")
            return None
        labels = enum_labels(enum)
        if repeated:
            return column(
                "text[]",
                True,
                ValueKind.ARRAY,
                default="'{}'",
                element=ValueKind.ENUM,
                labels=labels,
            )
        checked = tuple(label for number, label in labels.items() if number != 0)
        return column("text", options.required, ValueKind.ENUM, labels=labels, check_values=checked)
    if field.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
        if repeated:
            return column("jsonb", True, ValueKind.JSON, default="'[]'")
        if field.type_name in WELL_KNOWN_TYPES:
            sql_type, kind = WELL_KNOWN_TYPES[field.type_name]
            return column(sql_type, options.required, kind)
        if field.type_name in WRAPPER_TYPES:
            sql_type, kind = SCALAR_TYPES[WRAPPER_TYPES[field.type_name]]
            return column(sql_type, options.required, kind, wrapped=True)
        return column("jsonb", options.required, ValueKind.JSON)
    sql_type, kind = SCALAR_TYPES[field.type]
    if repeated:
        return column(f"{sql_type}[]", True, ValueKind.ARRAY, default="'{}'", element=kind)
    if kind in (ValueKind.TEXT, ValueKind.BYTES):
        return column(sql_type, (options.required or options.keep_empty) and not present, kind)
    return column(sql_type, not present, kind)
