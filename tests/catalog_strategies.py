"""Hypothesis strategies for random catalogs: ``.proto`` text, messages, expected columns.

A :class:`MessageSpec` describes one message type (with the enums and nested messages
its fields use); :func:`proto_source` renders it, :func:`compile_spec` compiles it, and
:func:`message_values` draws instances of the compiled class. :func:`expected_columns`
derives what each column should hold from a message, by the type table of
``kingest/catalog/types.py`` as its docstring states it, written out here again (never
through kingest's own mapping), and :func:`expected_sql_types` the column types.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import struct
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import attrs
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import strategies as st

from kingest.catalog import ENVELOPE_COLUMNS
from tests.catalog_support import compile_catalog

PACKAGE: Final = "gen.v1"
MESSAGE: Final = "Sample"
FULL_NAME: Final = f"{PACKAGE}.{MESSAGE}"
TABLE: Final = "sample"

#: Scalar type -> (PostgreSQL type, value strategy).
INT32: Final = st.integers(-(2**31), 2**31 - 1)
UINT32: Final = st.integers(0, 2**32 - 1)
INT64: Final = st.integers(-(2**63), 2**63 - 1)
UINT64: Final = st.integers(0, 2**64 - 1)
#: Text kingest must store: no NUL, at most 1024 characters (validate.py).
TEXT: Final = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12
)
SCALARS: Final[dict[str, tuple[str, st.SearchStrategy[Any]]]] = {
    "int32": ("integer", INT32),
    "sint32": ("integer", INT32),
    "sfixed32": ("integer", INT32),
    "uint32": ("bigint", UINT32),
    "fixed32": ("bigint", UINT32),
    "int64": ("bigint", INT64),
    "sint64": ("bigint", INT64),
    "sfixed64": ("bigint", INT64),
    "uint64": ("numeric(20)", UINT64),
    "fixed64": ("numeric(20)", UINT64),
    "float": ("real", st.floats(width=32, allow_nan=False, allow_infinity=False)),
    "double": ("double precision", st.floats(allow_nan=False, allow_infinity=False)),
    "bool": ("boolean", st.booleans()),
    "string": ("text", TEXT),
    "bytes": ("bytea", st.binary(max_size=12)),
}
WRAPPERS: Final = {
    "DoubleValue": "double",
    "FloatValue": "float",
    "Int64Value": "int64",
    "UInt64Value": "uint64",
    "Int32Value": "int32",
    "UInt32Value": "uint32",
    "BoolValue": "bool",
    "StringValue": "string",
    "BytesValue": "bytes",
}
#: kingest's envelope columns: a payload field must not be named so (unless a role).
ENVELOPE_NAMES: Final = frozenset({column.name for column in ENVELOPE_COLUMNS})
#: Names SQL reserves (quoted in DDL) or Python does (read with getattr).
AWKWARD_NAMES: Final = ("order", "user", "select", "group", "from", "class", "in", "table")
_WORDS: Final = ("RED", "GREEN", "BLUE", "FAILED", "OK", "HTTP", "V2", "A1")
#: Within 2**53 microseconds of the epoch (years 1685-2255): beyond, the write loses
#: microseconds (pinned by test_a_far_timestamp_keeps_its_microseconds).
TIMESTAMP_SECONDS: Final = st.integers(-9_007_199_254, 9_007_199_254)
DURATION_SECONDS: Final = 9_007_199_254
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: The envelope fields, found by name in a message of a topic.
ROLE_FIELDS: Final = (
    "string event_id",
    "google.protobuf.Timestamp occurred_at",
    "string correlation_id",
    "string source",
)
#: occurred_at the validator accepts: from 2000-01-01 to a day after the test's clock.
MIN_OCCURRED_AT: Final = 946_684_800
MAX_OCCURRED_AT: Final = 1_750_000_000 + 86_400
#: tests.fakes.FakeRecord's Kafka timestamp, which stands in for an unset occurred_at.
KAFKA_TIME: Final = EPOCH + dt.timedelta(milliseconds=1_749_999_000_500)


def _upper_snake(name: str) -> str:
    """``RunStatus`` -> ``RUN_STATUS``, ``HTTPCode`` -> ``HTTP_CODE``: an enum's prefix."""
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", spaced).upper()


@attrs.frozen
class EnumSpec:
    name: str
    #: (value name, number); the first is ``<PREFIX>_UNSPECIFIED = 0``.
    values: tuple[tuple[str, int], ...]

    def label(self, number: int) -> str:
        """The stored text: the name without the enum's prefix, lowercased."""
        prefix = _upper_snake(self.name) + "_"
        name = next(name for name, value in self.values if value == number)
        return name.removeprefix(prefix).lower()


@attrs.frozen
class FieldSpec:
    """One field. ``category``: scalar, enum, timestamp, duration, wrapper, struct,
    message, map; ``type`` the scalar, enum, wrapper or message name (a map's value)."""

    name: str
    category: str
    type: str = ""
    repeated: bool = False
    optional: bool = False
    oneof: str | None = None
    flatten: bool = False
    #: A map's value category (scalar, enum or message).
    map_value: str = ""


@attrs.frozen
class MessageSpec:
    name: str
    fields: tuple[FieldSpec, ...]


@attrs.frozen
class CatalogSpec:
    """The table's message (last of ``messages``), the messages it nests and its enums."""

    enums: tuple[EnumSpec, ...]
    messages: tuple[MessageSpec, ...]
    #: Whether the table's message carries the envelope fields by name (event_id,
    #: occurred_at, correlation_id, source: :data:`ROLE_FIELDS`, after its own fields).
    roles: bool = False

    @property
    def root(self) -> MessageSpec:
        return self.messages[-1]

    def message(self, name: str) -> MessageSpec:
        return next(message for message in self.messages if message.name == name)

    def enum(self, name: str) -> EnumSpec:
        return next(enum for enum in self.enums if enum.name == name)


# --- specs -----------------------------------------------------------------------------

_NAME: Final = st.from_regex(r"[a-z][a-z0-9]{0,6}(_[a-z][a-z0-9]{0,4})?", fullmatch=True)


def _field_names(count: int) -> st.SearchStrategy[list[str]]:
    names = st.one_of(
        _NAME.filter(lambda n: n not in ENVELOPE_NAMES), st.sampled_from(AWKWARD_NAMES)
    )
    return st.lists(names, min_size=count, max_size=count, unique_by=lambda n: n.replace("_", ""))


@st.composite
def enum_specs(draw: st.DrawFn, name: str) -> EnumSpec:
    prefix = _upper_snake(name)
    words = draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=4, unique=True))
    numbers = draw(
        st.lists(
            st.integers(1, 40).map(lambda n: n if n % 7 else -n),
            min_size=len(words),
            max_size=len(words),
            unique=True,
        )
    )
    values = [(f"{prefix}_UNSPECIFIED", 0)]
    values += [(f"{prefix}_{word}", number) for word, number in zip(words, numbers, strict=True)]
    return EnumSpec(name, tuple(values))


def _plain_fields(
    enums: tuple[str, ...], messages: tuple[str, ...], exclude: frozenset[str]
) -> st.SearchStrategy[FieldSpec]:
    """A field's type and shape (its name is given later), no feature of ``exclude``."""

    def field(category: str, **more: st.SearchStrategy[Any]) -> st.SearchStrategy[FieldSpec]:
        return st.builds(FieldSpec, name=st.just(""), category=st.just(category), **more)

    map_scalars = [t for t in sorted(SCALARS) if f"map<string, {t}>" not in exclude]
    wrappers = [w for w in sorted(WRAPPERS) if w not in exclude]
    choices = [
        field(
            "scalar",
            type=st.sampled_from(sorted(SCALARS)),
            repeated=st.booleans(),
            optional=st.booleans(),
        ),
        *(field(category) for category in ("timestamp", "duration", "struct")),
        field("wrapper", type=st.sampled_from(wrappers)),
        field("map", type=st.sampled_from(map_scalars), map_value=st.just("scalar")),
    ]
    if enums:
        choices.append(field("enum", type=st.sampled_from(enums), repeated=st.booleans()))
        if "map<string, enum>" not in exclude:
            choices.append(field("map", type=st.sampled_from(enums), map_value=st.just("enum")))
    if messages:
        flatten = st.just(False) if "flatten" in exclude else st.booleans()
        choices.append(
            field(
                "message", type=st.sampled_from(messages), repeated=st.booleans(), flatten=flatten
            )
        )
        if "map<string, message>" not in exclude:
            choices.append(
                field("map", type=st.sampled_from(messages), map_value=st.just("message"))
            )
    return st.one_of(choices).map(_normalised).filter(lambda f: feature(f) not in exclude)


def _normalised(field: FieldSpec) -> FieldSpec:
    """Only singular scalars may be ``optional``; only singular messages flattened."""
    return attrs.evolve(
        field,
        optional=field.optional and field.category == "scalar" and not field.repeated,
        flatten=field.flatten and not field.repeated,
    )


def feature(field: FieldSpec) -> str:
    """The kind of field, as the exclusion lists of the tests name it."""
    if field.category == "map":
        return f"map<string, {field.type if field.map_value == 'scalar' else field.map_value}>"
    if field.flatten:
        return "flatten"
    if field.category == "scalar":
        shape = "repeated " if field.repeated else "optional " if field.optional else ""
        return shape + field.type
    if field.category == "wrapper":
        return field.type
    return ("repeated " if field.repeated else "") + field.category


@st.composite
def catalog_specs(draw: st.DrawFn, exclude: frozenset[str] = frozenset()) -> CatalogSpec:
    """A message with 1-8 fields and 0-2 oneofs of scalars, the enums and up to two
    nested messages it uses (the second may nest the first)."""
    enum_names = tuple(
        draw(st.lists(st.sampled_from(("Color", "RunStatus", "HTTPCode")), max_size=2, unique=True))
    )
    enums = tuple(draw(enum_specs(name)) for name in enum_names)
    messages: list[MessageSpec] = []
    for name in draw(st.sampled_from([(), ("Inner",), ("Inner", "Outer")])):
        known = tuple(m.name for m in messages)
        count = draw(st.integers(1, 4))
        shapes = draw(
            st.lists(_plain_fields(enum_names, known, exclude), min_size=count, max_size=count)
        )
        names = draw(_field_names(count))
        fields = tuple(attrs.evolve(s, name=n) for s, n in zip(shapes, names, strict=True))
        messages.append(MessageSpec(name, fields))
    known = tuple(m.name for m in messages)
    count = draw(st.integers(1, 8))
    shapes = draw(
        st.lists(_plain_fields(enum_names, known, exclude), min_size=count, max_size=count)
    )
    oneofs = draw(st.lists(st.integers(1, 3), max_size=2))
    members = [
        FieldSpec("", "scalar", draw(st.sampled_from(sorted(SCALARS))), oneof=f"choice{n}")
        for n, size in enumerate(oneofs)
        for _ in range(size)
    ]
    members = [m for m in members if feature(m) not in exclude]
    names = draw(_field_names(len(shapes) + len(members)))
    fields = tuple(
        attrs.evolve(shape, name=name)
        for shape, name in zip([*shapes, *members], names, strict=True)
    )
    spec = CatalogSpec(enums, (*messages, MessageSpec(MESSAGE, fields)), draw(st.booleans()))
    columns = list(expected_sql_types(spec))
    if len(set(columns)) != len(columns):  # a flattened prefix met a field's name
        return draw(st.nothing())
    return spec


# --- .proto text -------------------------------------------------------------------------


def _type_text(spec: CatalogSpec, field: FieldSpec) -> str:
    if field.category == "scalar":
        return field.type
    if field.category in ("enum", "message"):
        return field.type
    if field.category == "wrapper":
        return f"google.protobuf.{field.type}"
    if field.category == "map":
        return f"map<string, {field.type}>"
    return {
        "timestamp": "google.protobuf.Timestamp",
        "duration": "google.protobuf.Duration",
        "struct": "google.protobuf.Struct",
    }[field.category]


def _message_text(spec: CatalogSpec, message: MessageSpec) -> str:
    lines = [f"message {message.name} {{"]
    oneofs: dict[str, list[str]] = {}
    for number, field in enumerate(message.fields, start=1):
        label = "repeated " if field.repeated else "optional " if field.optional else ""
        option = " [(kingest.options.v1.column).flatten = true]" if field.flatten else ""
        line = f"{label}{_type_text(spec, field)} {field.name} = {number}{option};"
        if field.oneof:
            oneofs.setdefault(field.oneof, []).append(line)
        else:
            lines.append(f"  {line}")
    if spec.roles and message is spec.root:
        lines += [
            f"  {text} = {number};"
            for number, text in enumerate(ROLE_FIELDS, start=len(message.fields) + 1)
        ]
    for name, members in oneofs.items():
        lines.append(f"  oneof {name} {{")
        lines += [f"    {member}" for member in members]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines)


def proto_source(spec: CatalogSpec) -> str:
    """The ``.proto`` file of ``spec``."""
    used = {field.category for message in spec.messages for field in message.fields}
    used |= {"timestamp"} if spec.roles else set()
    flattened = any(field.flatten for message in spec.messages for field in message.fields)
    imports = {
        "timestamp": "google/protobuf/timestamp.proto",
        "duration": "google/protobuf/duration.proto",
        "wrapper": "google/protobuf/wrappers.proto",
        "struct": "google/protobuf/struct.proto",
    }
    parts = ['syntax = "proto3";', f"package {PACKAGE};"]
    parts += [f'import "{path}";' for category, path in imports.items() if category in used]
    if flattened:
        parts.append('import "kingest/options/v1/options.proto";')
    for enum in spec.enums:
        values = "\n".join(f"  {name} = {number};" for name, number in enum.values)
        parts.append(f"enum {enum.name} {{\n{values}\n}}")
    parts += [_message_text(spec, message) for message in spec.messages]
    return "\n\n".join(parts) + "\n"


def compile_spec(spec: CatalogSpec) -> bytes:
    """The descriptor set of ``spec`` (one protoc run, in a directory of its own)."""
    with tempfile.TemporaryDirectory() as directory:
        return compile_catalog(Path(directory), {"gen/v1/sample.proto": proto_source(spec)})


# --- messages --------------------------------------------------------------------------

_JSON: Final = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=6,
)


def _scalar(type_name: str) -> st.SearchStrategy[Any]:
    return SCALARS[type_name][1]


def _set_value(
    draw: st.DrawFn, spec: CatalogSpec, message: Message, field: FieldSpec, depth: int
) -> None:
    target = getattr(message, field.name)
    if field.category == "scalar":
        values = draw(st.lists(_scalar(field.type), max_size=3)) if field.repeated else None
        if values is not None:
            target.extend(values)
        else:
            setattr(message, field.name, draw(_scalar(field.type)))
    elif field.category == "enum":
        numbers = st.sampled_from([number for _, number in spec.enum(field.type).values])
        if field.repeated:
            target.extend(draw(st.lists(numbers, max_size=3)))
        else:
            setattr(message, field.name, draw(numbers))
    elif field.category == "timestamp":
        target.seconds = draw(TIMESTAMP_SECONDS)
        target.nanos = draw(st.integers(0, 999_999_999))
    elif field.category == "duration":
        seconds = draw(st.integers(-DURATION_SECONDS, DURATION_SECONDS))
        nanos = draw(st.integers(0, 999_999_999))
        if seconds < 0 or (seconds == 0 and draw(st.booleans())):
            # Whole microseconds: a negative duration's nanoseconds are floored
            # (pinned by test_a_negative_duration_is_truncated_like_a_positive_one).
            nanos = -(nanos // 1000 * 1000)
        target.seconds, target.nanos = seconds, nanos
    elif field.category == "wrapper":
        target.value = draw(_scalar(WRAPPERS[field.type]))
    elif field.category == "struct":
        target.update(draw(st.dictionaries(TEXT, _JSON, max_size=3)))
    elif field.category == "map":
        keys = draw(st.lists(TEXT, max_size=3, unique=True))
        for key in keys:
            if field.map_value == "message":
                _fill(draw, spec, target[key], spec.message(field.type), depth + 1)
            elif field.map_value == "enum":
                target[key] = draw(st.sampled_from([n for _, n in spec.enum(field.type).values]))
            else:
                target[key] = draw(_scalar(field.type))
    elif field.category == "message":
        nested = spec.message(field.type)
        if field.repeated:
            for _ in range(draw(st.integers(0, 2))):
                _fill(draw, spec, target.add(), nested, depth + 1)
        else:
            target.SetInParent()
            _fill(draw, spec, target, nested, depth + 1)


def _fill(
    draw: st.DrawFn, spec: CatalogSpec, message: Message, fields: MessageSpec, depth: int = 0
) -> None:
    chosen = {
        oneof: draw(st.sampled_from([None, *[f.name for f in fields.fields if f.oneof == oneof]]))
        for oneof in {f.oneof for f in fields.fields if f.oneof}
    }
    for field in fields.fields:
        if field.oneof and chosen[field.oneof] != field.name:
            continue
        if not field.oneof and draw(st.booleans()):
            continue
        _set_value(draw, spec, message, field, depth)


@st.composite
def message_values(draw: st.DrawFn, spec: CatalogSpec, cls: type[Message]) -> Message:
    """An instance of the table's message, fields set or left unset at random."""
    message = cls()
    _fill(draw, spec, message, spec.root)
    if spec.roles:
        message.event_id = draw(st.just("") | st.uuids().map(str) | st.uuids().map(_hex))
        if draw(st.booleans()):  # else the Kafka timestamp stands in
            message.occurred_at.seconds = draw(st.integers(MIN_OCCURRED_AT, MAX_OCCURRED_AT))
            message.occurred_at.nanos = draw(st.integers(0, 999_999_999))
        message.correlation_id = draw(TEXT)
        message.source = draw(TEXT)
    return message


def _hex(value: Any) -> str:
    """A UUID as 32 upper-case hex digits (a form the validator accepts too)."""
    return str(value.hex.upper())


def expected_envelope(message: Message, derived_event_id: str) -> dict[str, Any]:
    """The envelope columns of a message carrying the role fields (``roles``)."""
    event_id = message.event_id or derived_event_id  # type: ignore[attr-defined]
    occurred_at = message.occurred_at  # type: ignore[attr-defined]
    return {
        "event_id": str(uuid.UUID(event_id)),
        "occurred_at": EPOCH
        + dt.timedelta(microseconds=occurred_at.seconds * 1_000_000 + occurred_at.nanos // 1000)
        if message.HasField("occurred_at")
        else KAFKA_TIME,
        # The event id as sent stands in for a missing correlation id.
        "correlation_id": message.correlation_id or event_id,  # type: ignore[attr-defined]
        "source": message.source,  # type: ignore[attr-defined]
    }


# --- expectations ----------------------------------------------------------------------


def _sql_type(spec: CatalogSpec, field: FieldSpec) -> str:
    if field.category == "map" or field.category == "struct":
        return "jsonb"
    if field.category == "message":
        return "jsonb"
    if field.category == "timestamp":
        return "timestamptz"
    if field.category == "duration":
        return "interval"
    if field.category == "wrapper":
        return SCALARS[WRAPPERS[field.type]][0]
    base = "text" if field.category == "enum" else SCALARS[field.type][0]
    return f"{base}[]" if field.repeated else base


def expected_sql_types(
    spec: CatalogSpec, message: MessageSpec | None = None, prefix: str = ""
) -> dict[str, str]:
    """Column -> PostgreSQL type, in column order, as the type table promises."""
    types: dict[str, str] = {}
    for field in (message or spec.root).fields:
        if field.flatten:
            types.update(
                expected_sql_types(spec, spec.message(field.type), f"{prefix}{field.name}_")
            )
        else:
            types[prefix + field.name] = _sql_type(spec, field)
    return types


def expected_not_null(
    spec: CatalogSpec, message: MessageSpec | None = None, prefix: str = ""
) -> dict[str, bool | None]:
    """Column -> whether the type table makes it NOT NULL (None: either, for a map or
    repeated field of a flattened message, see test_a_flattened_map_of_an_unset_message_*)."""
    not_null: dict[str, bool | None] = {}
    for field in (message or spec.root).fields:
        name = prefix + field.name
        if field.flatten:
            nested = expected_not_null(spec, spec.message(field.type), f"{name}_")
            not_null.update({column: False if value else value for column, value in nested.items()})
            not_null.update(
                {
                    prefix + f"{field.name}_{f.name}": None
                    for f in spec.message(field.type).fields
                    if f.repeated or f.category == "map"
                }
            )
        elif field.repeated or field.category == "map":
            not_null[name] = True
        elif field.optional or field.oneof or field.category != "scalar":
            not_null[name] = False
        else:
            not_null[name] = field.type not in ("string", "bytes")
    return not_null


def _json(message: Message) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _scalar_value(type_name: str, value: Any, *, nullable_text: bool) -> Any:
    if type_name in ("uint64", "fixed64"):
        return Decimal(value)
    if type_name in ("string", "bytes") and nullable_text and not value:
        return None
    return value


def _map_json(spec: CatalogSpec, field: FieldSpec, entries: Any) -> dict[str, Any]:
    """A map column as docs/catalogs.md says: scalars as JSON writes them (numbers as
    numbers, a float as its float32 value, bytes in base64), enums as labels, messages
    as protobuf's JSON."""
    if field.map_value == "enum":
        enum = spec.enum(field.type)
        return {key: enum.label(number) for key, number in entries.items()}
    if field.map_value == "message":
        return {key: _json(item) for key, item in entries.items()}
    if field.type == "bytes":
        return {key: base64.b64encode(item).decode() for key, item in entries.items()}
    return dict(entries)


def _value(spec: CatalogSpec, message: Message, field: FieldSpec) -> Any:
    """The column value of one (not flattened) field: NULL when a field that tracks
    presence (a message, proto3 ``optional``, a oneof member) is unset."""
    value = getattr(message, field.name)
    if field.category == "map":
        return _map_json(spec, field, value)
    descriptor = message.DESCRIPTOR.fields_by_name[field.name]
    if not field.repeated and descriptor.has_presence and not message.HasField(field.name):
        return None
    if field.category == "timestamp":
        return EPOCH + dt.timedelta(microseconds=value.seconds * 1_000_000 + value.nanos // 1000)
    if field.category == "duration":
        return value.ToTimedelta()
    if field.category == "wrapper":
        return _scalar_value(WRAPPERS[field.type], value.value, nullable_text=False)
    if field.category in ("struct", "message") and not field.repeated:
        return _json(value)
    if field.category == "message":
        return [_json(item) for item in value]
    if field.category == "enum":
        enum = spec.enum(field.type)
        if field.repeated:
            return [enum.label(number) for number in value]
        return None if value == 0 else enum.label(value)
    if field.repeated:
        return [_scalar_value(field.type, item, nullable_text=False) for item in value]
    return _scalar_value(field.type, value, nullable_text=True)


def expected_columns(
    spec: CatalogSpec,
    message: Message,
    fields: MessageSpec | None = None,
    prefix: str = "",
    parent_set: bool = True,
) -> dict[str, Any]:
    """Column -> the value it should hold for ``message`` (None for NULL)."""
    columns: dict[str, Any] = {}
    for field in (fields or spec.root).fields:
        name = prefix + field.name
        if field.flatten:
            nested_set = parent_set and message.HasField(field.name)
            columns.update(
                expected_columns(
                    spec,
                    getattr(message, field.name),
                    spec.message(field.type),
                    f"{name}_",
                    nested_set,
                )
            )
        elif not parent_set:
            # A flattened message unset: NULL, but a repeated field or map keeps its NOT
            # NULL column and is empty (as the type table says: never NULL).
            if field.category == "map":
                columns[name] = {}
            elif field.repeated:
                columns[name] = []
            else:
                columns[name] = None
        else:
            columns[name] = _value(spec, message, field)
    return columns


def same_value(sql_type: str, got: Any, expected: Any) -> bool:
    """Whether a value read back equals the expected one (``real`` to float32)."""
    if sql_type in ("real", "real[]"):

        def narrowed(value: float) -> float:
            return struct.unpack("<f", struct.pack("<f", value))[0]  # type: ignore[no-any-return]

        if sql_type == "real[]":
            return (
                got is not None
                and len(got) == len(expected)
                and all(narrowed(g) == e for g, e in zip(got, expected, strict=True))
            )
        return got is expected is None or (got is not None and narrowed(got) == expected)
    if sql_type == "jsonb":
        return _same_json(got, expected)
    return bool(got == expected)


def _same_json(got: Any, expected: Any) -> bool:
    """JSON equality, numbers by value (jsonb prints 1e300 as an integer)."""
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and got.keys() == expected.keys()
            and all(_same_json(got[key], value) for key, value in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(_same_json(g, e) for g, e in zip(got, expected, strict=True))
        )
    if isinstance(expected, float) and isinstance(got, int | float) and not isinstance(got, bool):
        return math.isclose(float(got), expected, rel_tol=1e-15)
    return bool(got == expected) and type(got) is type(expected)


# --- poison: values the validator must refuse -------------------------------------------

_NON_FINITE: Final = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def poisoned(draw: st.DrawFn, spec: CatalogSpec, message: Message) -> str | None:
    """Make ``message`` one kingest must dead-letter (a NUL, a 1025-character text, a
    NaN or infinity, an undefined enum number) and return the ``error_class`` expected;
    None (message unchanged) when the table's message has no field to spoil."""
    choices: list[tuple[FieldSpec | None, str]] = []
    for field in spec.root.fields:
        if field.category in ("scalar", "map") and field.type == "string":
            choices.append((field, "nul_character"))
            if field.category == "scalar" and not field.repeated:
                choices.append((field, "too_long"))
        elif field.category in ("scalar", "map") and field.type in ("float", "double"):
            choices.append((field, "not_finite"))
        elif field.category == "enum":
            choices.append((field, "unknown_enum"))
    if spec.roles:
        choices += [(None, "invalid_uuid"), (None, "timestamp_out_of_range")]
    if not choices:
        return None
    chosen, error_class = draw(st.sampled_from(choices))
    if chosen is None:
        if error_class == "invalid_uuid":
            message.event_id = "not a uuid " + draw(TEXT)  # type: ignore[attr-defined]
        else:
            message.occurred_at.seconds = draw(  # type: ignore[attr-defined]
                st.integers(-(2**40), MIN_OCCURRED_AT - 1) | st.integers(MAX_OCCURRED_AT + 1, 2**40)
            )
        return error_class
    field = chosen
    target = getattr(message, field.name)
    if error_class == "nul_character":
        text = draw(TEXT) + "\x00" + draw(TEXT)
        if field.category == "map":
            target[draw(TEXT)] = text
        elif field.repeated:
            target.append(text)
        else:
            setattr(message, field.name, text)
    elif error_class == "too_long":
        setattr(message, field.name, "x" * 1025)
    elif error_class == "not_finite":
        value = draw(_NON_FINITE)
        if field.category == "map":
            target[draw(TEXT)] = value
        elif field.repeated:
            target.append(value)
        else:
            setattr(message, field.name, value)
    else:
        defined = {number for _, number in spec.enum(field.type).values}
        undefined = draw(st.integers(-100, 100).filter(lambda n: n not in defined))
        if field.repeated:
            target.append(undefined)
        else:
            setattr(message, field.name, undefined)
    return error_class
