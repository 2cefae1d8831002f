"""Protobuf field types to PostgreSQL column types: the one table of the mapping.

=====================================  ==================  ==============================
Protobuf                               PostgreSQL          NULL when
=====================================  ==================  ==============================
string                                 text                empty (unless ``required``,
                                                           refused, or ``keep_empty``)
bytes                                  bytea               empty (same options)
int32, sint32, sfixed32                integer             never (proto3 zero is a value)
uint32, fixed32                        bigint              never
int64, sint64, sfixed64                bigint              never
uint64, fixed64                        numeric(20)         never
float / double                         real / double       never
                                       precision
bool                                   boolean             never
enum                                   text + CHECK        the zero value (UNSPECIFIED),
                                       (labels)            unless ``required`` (refused)
google.protobuf.Timestamp              timestamptz         unset
google.protobuf.Duration               interval            unset
wrappers (Int64Value, StringValue...)  the wrapped type    unset
repeated scalar / enum                 array of the type   never (``'{}'``, empty)
map, Struct, Value, ListValue,         jsonb               maps: never (``'{}'``);
nested message, repeated message                           messages: unset
nested message with ``flatten``        one column per      the nested message is unset
                                       field, prefixed
proto3 ``optional``, oneof member      the type            unset
=====================================  ==================  ==============================

``ColumnOptions.type`` replaces the PostgreSQL type (a type the derived value casts to).
"""

from __future__ import annotations

from typing import Final

from google.protobuf.descriptor_pb2 import FieldDescriptorProto

from kingest.catalog.model import ValueKind

__all__ = ["SCALAR_TYPES", "WELL_KNOWN_TYPES", "WRAPPER_TYPES", "F", "proto_type_name"]

#: Short name of the field descriptor type, for the tables below.
F = FieldDescriptorProto

#: Scalar field type -> (PostgreSQL type, how the value travels).
SCALAR_TYPES: Final[dict[int, tuple[str, ValueKind]]] = {
    F.TYPE_STRING: ("text", ValueKind.TEXT),
    F.TYPE_BYTES: ("bytea", ValueKind.BYTES),
    F.TYPE_INT32: ("integer", ValueKind.INT),
    F.TYPE_SINT32: ("integer", ValueKind.INT),
    F.TYPE_SFIXED32: ("integer", ValueKind.INT),
    F.TYPE_UINT32: ("bigint", ValueKind.INT),
    F.TYPE_FIXED32: ("bigint", ValueKind.INT),
    F.TYPE_INT64: ("bigint", ValueKind.INT),
    F.TYPE_SINT64: ("bigint", ValueKind.INT),
    F.TYPE_SFIXED64: ("bigint", ValueKind.INT),
    F.TYPE_UINT64: ("numeric(20)", ValueKind.UINT64),
    F.TYPE_FIXED64: ("numeric(20)", ValueKind.UINT64),
    F.TYPE_FLOAT: ("real", ValueKind.FLOAT),
    F.TYPE_DOUBLE: ("double precision", ValueKind.FLOAT),
    F.TYPE_BOOL: ("boolean", ValueKind.BOOL),
}

#: Well-known message types stored as a column of their own type.
WELL_KNOWN_TYPES: Final[dict[str, tuple[str, ValueKind]]] = {
    ".google.protobuf.Timestamp": ("timestamptz", ValueKind.TIMESTAMP),
    ".google.protobuf.Duration": ("interval", ValueKind.DURATION),
    ".google.protobuf.Struct": ("jsonb", ValueKind.JSON),
    ".google.protobuf.Value": ("jsonb", ValueKind.JSON),
    ".google.protobuf.ListValue": ("jsonb", ValueKind.JSON),
}

#: Wrapper message -> the scalar type of its ``value`` field.
WRAPPER_TYPES: Final[dict[str, int]] = {
    ".google.protobuf.DoubleValue": F.TYPE_DOUBLE,
    ".google.protobuf.FloatValue": F.TYPE_FLOAT,
    ".google.protobuf.Int64Value": F.TYPE_INT64,
    ".google.protobuf.UInt64Value": F.TYPE_UINT64,
    ".google.protobuf.Int32Value": F.TYPE_INT32,
    ".google.protobuf.UInt32Value": F.TYPE_UINT32,
    ".google.protobuf.BoolValue": F.TYPE_BOOL,
    ".google.protobuf.StringValue": F.TYPE_STRING,
    ".google.protobuf.BytesValue": F.TYPE_BYTES,
}

_TYPE_NAMES: Final = {
    value: name.removeprefix("TYPE_").lower() for name, value in FieldDescriptorProto.Type.items()
}


def proto_type_name(field: FieldDescriptorProto) -> str:
    """The field's type as a ``.proto`` file spells it: ``uint32``, ``.pkg.Message``...

    Repeated fields are prefixed ``repeated``; that is what a breaking-change check and
    the documentation compare.
    """
    base = field.type_name if field.type_name else _TYPE_NAMES[field.type]
    return f"repeated {base}" if field.label == F.LABEL_REPEATED else base
