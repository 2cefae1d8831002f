"""The per-type validation rules of a catalog, compiled to Python at start-up.

Each fact table's fields carry their rules in the catalog (``required``, bounds, the
enumeration's defined numbers, finite numbers): :func:`compile_rules` writes one
function per event type that checks them in field order, reading each field once, with
every name and constant resolved when the function is made. That is what the
hand-written checks of one type did, so checking costs the same; and a field added to
a catalog is checked without anyone writing code.

The generated text uses only field names that the catalog checked are identifiers
(:mod:`kingest.catalog.fields`), read as attributes (or with ``getattr`` for a Python
keyword); every constant (paths, bounds, sets of numbers) is passed in the function's
namespace, never spelled in the source.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Mapping
from math import isfinite
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from kingest.catalog import FactTable, FieldMapping, ValueKind

__all__ = [
    "ValidationError",
    "attribute_read",
    "check_unknown_fields",
    "compile_rules",
    "enum_error",
    "missing",
    "number_error",
]


class ValidationError(ValueError):
    """A decoded event that breaks a rule of the table above; permanent, so dead-lettered.

    ``error_class`` is a short stable code; ``field`` the dotted path of the offending
    field (``"inference_completed.latency_ms"``), or ``None`` for the event as a whole.
    """

    def __init__(self, error_class: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.field = field

    def __reduce__(self) -> tuple[type[ValidationError], tuple[str, str | None, str]]:
        return (type(self), (self.error_class, self.field, str(self)))


def missing(path: str) -> ValidationError:
    return ValidationError("missing_field", path, f"{path} must not be empty")


def number_error(path: str, value: float, allowed: str) -> ValidationError:
    """Classify a number that failed a range comparison (NaN fails every comparison)."""
    if not isfinite(value):
        return ValidationError("not_finite", path, f"{path} is {value}, not a finite number")
    return ValidationError("out_of_range", path, f"{path} is {value}, allowed {allowed}")


def enum_error(value: int, path: str) -> ValidationError:
    """UNSPECIFIED (0) means the producer never set it; other numbers are undefined."""
    if value == 0:
        return ValidationError("missing_field", path, f"{path} is UNSPECIFIED")
    return ValidationError("unknown_enum", path, f"{path} {value} is not defined by the schema")


def _not_finite(path: str, value: float) -> ValidationError:
    return ValidationError("not_finite", path, f"{path} is {value}, not a finite number")


def _check_finite_map(values: Mapping[str, float], path: str) -> None:
    """Every value of a ``map<string, double>`` must be finite."""
    for key, value in values.items():
        if not isfinite(value):
            raise ValidationError(
                "not_finite", f"{path}[{key}]", f"{path}[{key!r}] is {value}, not finite"
            )


#: Well-known messages holding JSON values, whose numbers may be NaN or infinite.
_JSON_VALUES: Final = frozenset(
    {".google.protobuf.Struct", ".google.protobuf.Value", ".google.protobuf.ListValue"}
)


def _check_finite_within(message: Any, path: str) -> None:
    """Every double in a wrapper, Struct, Value or ListValue must be finite."""
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Struct":
        for key, value in message.fields.items():
            _check_finite_within(value, f"{path}.{key}")
    elif descriptor.full_name == "google.protobuf.ListValue":
        for index, value in enumerate(message.values):
            _check_finite_within(value, f"{path}[{index}]")
    elif descriptor.full_name == "google.protobuf.Value":
        kind = message.WhichOneof("kind")
        if kind == "number_value" and not isfinite(message.number_value):
            raise _not_finite(path, message.number_value)
        if kind in ("struct_value", "list_value"):
            _check_finite_within(getattr(message, kind), path)
    elif not isfinite(message.value):  # a DoubleValue or FloatValue
        raise _not_finite(path, message.value)


def _check_finite_items(values: Any, path: str) -> None:
    for index, value in enumerate(values):
        if not isfinite(value):
            raise _not_finite(f"{path}[{index}]", value)


def _check_enum_items(values: Any, known: frozenset[int], path: str) -> None:
    for index, value in enumerate(values):
        if value not in known:
            raise enum_error(value, f"{path}[{index}]")


def check_unknown_fields(message: Message, prefix: str) -> None:
    """Raise ``unknown_fields`` when the message, or a message in it, holds fields its
    type does not define: the catalog is behind the producer, and storing the row without
    them would lose them (the dead letter keeps the whole value, for a replay once the
    catalog has them)."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        numbers = sorted({unknown[n].field_number for n in range(len(unknown))})
        where = prefix.rstrip(".") or message.DESCRIPTOR.full_name
        raise ValidationError(
            "unknown_fields",
            prefix.rstrip(".") or None,
            f"{where} holds fields {', '.join(map(str, numbers))}, which the catalog does not "
            "define (the producer is ahead of it): apply the newer catalog, then replay",
        )
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if isinstance(value, Message):
            check_unknown_fields(value, f"{prefix}{field.name}.")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(item, Message):
                    check_unknown_fields(item, f"{prefix}{field.name}[{key}].")
        else:
            for index, item in enumerate(value):
                check_unknown_fields(item, f"{prefix}{field.name}[{index}].")


def attribute_read(target: str, name: str) -> str:
    """Generated code reading field ``name`` of ``target`` (``getattr`` for a keyword)."""
    return f"getattr({target}, {name!r})" if keyword.iskeyword(name) else f"{target}.{name}"


def _allowed(field: FieldMapping) -> str:
    parts = []
    if field.gte is not None:
        parts.append(f">= {field.gte:g}")
    if field.lte is not None:
        parts.append(f"<= {field.lte:g}")
    if field.lt is not None:
        parts.append(f"< {field.lt:g}")
    return " and ".join(parts)


class _Writer:
    """Lines of one generated function, and the constants its namespace holds."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}

    def constant(self, value: Any) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)


def _field_rules(out: _Writer, field: FieldMapping, value: str, path: str, depth: int) -> None:
    """Lines checking ``value`` (a local holding the field) against ``field``'s rules."""
    kind = field.kind
    if field.required and kind in (ValueKind.TEXT, ValueKind.BYTES):
        out.emit(depth, f"if not {value}:")
        out.emit(depth + 1, f"raise missing({path})")
    if kind is ValueKind.ENUM:
        known = frozenset(field.labels) - ({0} if field.required else set())
        out.emit(depth, f"if {value} not in {out.constant(known)}:")
        out.emit(depth + 1, f"raise enum_error({value}, {path})")
    elif kind in (ValueKind.FLOAT, ValueKind.INT) and not field.wrapped:
        bounds = []
        if field.gte is not None:
            bounds.append(f"{out.constant(field.gte)} <= {value}")
        if field.lte is not None:
            bounds.append(f"{value} <= {out.constant(field.lte)}")
        if field.lt is not None:
            bounds.append(f"{value} < {out.constant(field.lt)}")
        if bounds:
            out.emit(depth, f"if not ({' and '.join(bounds)}):")
            allowed = out.constant(_allowed(field))
            out.emit(depth + 1, f"raise number_error({path}, {value}, {allowed})")
        elif kind is ValueKind.FLOAT:
            out.emit(depth, f"if not isfinite({value}):")
            out.emit(depth + 1, f"raise _not_finite({path}, {value})")
    elif kind is ValueKind.JSON and field.map_value is ValueKind.FLOAT:
        out.emit(depth, f"if {value}:")
        out.emit(depth + 1, f"_check_finite_map({value}, {path})")
    elif kind is ValueKind.ARRAY and field.element is ValueKind.FLOAT:
        out.emit(depth, f"_check_finite_items({value}, {path})")
    elif kind is ValueKind.ARRAY and field.element is ValueKind.ENUM:
        out.emit(
            depth, f"_check_enum_items({value}, {out.constant(frozenset(field.labels))}, {path})"
        )


def _message_like(field: FieldMapping) -> bool:
    """A field read as a message (timestamp, duration, wrapper, message as jsonb): only
    its presence has a rule."""
    if field.wrapped or field.kind in (ValueKind.TIMESTAMP, ValueKind.DURATION):
        return True
    return field.kind is ValueKind.JSON and field.map_value is None and field.present


def _rules_source(table: FactTable, prefix: str, out: _Writer) -> None:
    """``rules(p, e)``: ``p`` the payload, ``e`` the whole event (the envelope, or ``p``)."""
    out.emit(0, "def rules(p, e):")
    emitted = False
    for number, column in enumerate(table.payload_columns):
        field = column.field
        assert field is not None
        path = out.constant(f"{prefix}.{'.'.join(field.path)}")
        guards: list[str] = []
        parent = "p"
        for step in field.path[:-1]:  # a flattened field: its rules hold when its parent is set
            guards.append(f"{parent}.HasField({step!r})")
            parent = attribute_read(parent, step)
        name = field.path[-1]
        block = _Writer()
        block.constants = out.constants
        if _message_like(field) or field.proto_type in _JSON_VALUES:
            if field.required:
                block.emit(0, f"if not {parent}.HasField({name!r}):")
                block.emit(1, f"raise missing({path})")
            if field.proto_type in _JSON_VALUES or (
                field.wrapped and field.kind is ValueKind.FLOAT
            ):
                # A NaN or infinity inside: JSON and PostgreSQL numbers have none.
                block.emit(0, f"if {parent}.HasField({name!r}):")
                block.emit(1, f"_check_finite_within({attribute_read(parent, name)}, {path})")
        else:
            value = f"v{number}"
            _field_rules(block, field, value, path, 0)
            if block.lines:
                block.lines.insert(0, f"{value} = {attribute_read(parent, name)}")
                if field.present:  # a oneof member or proto3 optional: checked when set
                    guards.append(f"{parent}.HasField({name!r})")
        if not block.lines:
            continue
        depth = 1
        for guard in guards:
            out.emit(depth, f"if {guard}:")
            depth += 1
        for line in block.lines:
            out.emit(depth, line)
        emitted = True
    if table.dead_letter_unknown_fields:
        out.emit(1, 'check_unknown_fields(e, "")')
        emitted = True
    if not emitted:
        out.emit(1, "return None")


def compile_rules(tables: Mapping[str, FactTable]) -> dict[str, Callable[[Any, Any], None]]:
    """Event type -> a function ``(payload, event)`` raising :class:`ValidationError` for a
    payload that breaks a rule of its table's fields, in field order (the first failure is
    reported), then (unless the table ignores them) for fields the catalog does not
    define anywhere in the event."""
    compiled: dict[str, Callable[[Any, Any], None]] = {}
    for event_type, table in tables.items():
        out = _Writer()
        _rules_source(table, event_type, out)
        namespace: dict[str, Any] = {
            "missing": missing,
            "enum_error": enum_error,
            "number_error": number_error,
            "isfinite": isfinite,
            "_not_finite": _not_finite,
            "_check_finite_map": _check_finite_map,
            "_check_finite_items": _check_finite_items,
            "_check_finite_within": _check_finite_within,
            "_check_enum_items": _check_enum_items,
            "check_unknown_fields": check_unknown_fields,
            **out.constants,
        }
        source = "\n".join(out.lines) + "\n"
        exec(compile(source, f"<kingest rules of {event_type}>", "exec"), namespace)  # noqa: S102
        function: Callable[[Any, Any], None] = namespace["rules"]
        function.__doc__ = source
        compiled[event_type] = function
    return compiled
