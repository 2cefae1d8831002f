"""Semantic validation of decoded events, before they are mapped to rows.

Decoding proves the bytes are a message of the catalog; validation proves the event is
one kingest can store faithfully. A failure is permanent (the same bytes always fail),
so the caller dead-letters the message with ``error_class`` and ``field`` and moves on.

Rules, checked in this order (the first failure is reported):

======================  ==============================================  =====================
What                    Rule                                            ``error_class``
======================  ==============================================  =====================
payload                 one payload message is set (envelope mode)      missing_payload
``event_id``            empty (kingest then derives one from topic,     invalid_uuid
                        partition and offset) or a UUID of any
                        version: ``8-4-4-4-12`` hex digits with
                        dashes, or 32 hex digits; either case
``occurred_at``         present when ``required`` (else the Kafka       missing_field
                        timestamp stands in)
``occurred_at``         not before 2000-01-01T00:00:00Z, at most one    timestamp_out_of_range
                        day after ``now``; nanos in 0..999,999,999
every string field,     at most 1024 characters, or the field's         too_long
map key and map value   ``max_length`` option
indexed identifiers     at most 1024 UTF-8 *bytes*: text columns in an  too_long
                        index or a state table's key (PostgreSQL
                        refuses btree entries over 2704 bytes,
                        SQLSTATE 54000), ``correlation_id`` included
every string field,     no NUL character (U+0000): PostgreSQL text    nul_character
map key and map value   cannot hold it (SQLSTATE 22021)
``required`` fields     non-empty text, a defined enum value other      missing_field
                        than UNSPECIFIED, a set message
every enum              a number the schema defines (proto3 keeps       unknown_enum
                        unknown numbers, which would map to nothing)
every double, map       finite: no NaN, no +/-infinity                  not_finite
values included
numbers with bounds     ``gte`` / ``lte`` / ``lt`` of the field         out_of_range
fields                  only fields the catalog defines, at any depth   unknown_fields
                        (unless the file's ``unknown_fields`` option
                        is ``UNKNOWN_FIELDS_IGNORE``, as the built-in
                        catalog's is)
======================  ==============================================  =====================

The per-type rules (the last five) are compiled from the catalog (:mod:`.rules`); the
built-in catalog states them in ``proto/kingest/schema/v1/events.proto``.

Text is always valid UTF-8 here: the Protobuf runtime rejects malformed UTF-8 in any
proto3 ``string`` field while parsing (``kingest.schema.codec`` reports it as
``invalid_protobuf``) and refuses to set a ``str`` holding lone surrogates.

Speed: about 2 microseconds per event. The string-length rule runs only when the event
could hold a long string at all: every character takes at least one UTF-8 byte, so an
event whose encoding is at most 1024 bytes cannot break any limit. Callers that
decoded the event pass the length of its bytes as ``encoded_size`` (every string of a
parsed message is a slice of its input, so that length bounds them all); otherwise
``ByteSize()`` is computed, which costs a quarter of the validation time. The UTF-8
byte bound of indexed identifiers shares that shortcut (1024 bytes again), so it costs
nothing on ordinary events. (A ``max_length`` below 1024 turns the shortcut off for
that catalog.)

The NUL rule cannot take that shortcut, so it is built for speed instead: the string
fields of the envelope and of each payload type are read with one
``operator.attrgetter`` call each (a single C call; the field lists come from the
descriptors, so a string field added to the schema is covered) and scanned as one
joined string; map keys and text values are joined the same way, only when the map is
not empty; a type with text deeper down (nested messages, repeated strings) is walked.
Only a failure walks the message to name the offending field. That scan costs about
0.6 microseconds per event, so callers should pass the decoded value itself as
``encoded`` (instead of ``encoded_size``): a string's UTF-8 bytes appear verbatim in the
encoding, so a value with no zero byte past its framing header cannot hold NUL and one
``bytes.find`` replaces the scan (about 3 % of the synthetic mix has a zero byte, in a
double or a header, and is scanned).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from functools import cache
from operator import attrgetter
from typing import Any, Final

import attrs
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kingest.catalog import Catalog, EnvelopeFields, FactTable, ValueKind, load_catalog
from kingest.schema.rules import ValidationError, check_unknown_fields, compile_rules
from kingest.schema.v1.events_pb2 import Event

__all__ = [
    "INDEXED_IDENTIFIER_FIELDS",
    "MAX_INDEXED_IDENTIFIER_BYTES",
    "MAX_LONG_TEXT_CHARS",
    "MAX_TEXT_CHARS",
    "EventValidator",
    "ValidationError",
    "builtin_validator",
    "event_type",
    "payload_of",
    "validate_event",
    "validate_payload",
]

#: 2000-01-01T00:00:00Z. Earlier values come from unset clocks (0) or wrong units, not
#: from an ML platform.
MIN_OCCURRED_AT_SECONDS: Final = 946_684_800
#: How far ahead of the consumer's clock an event may claim to have happened (clock skew).
MAX_FUTURE_SKEW_SECONDS: Final = 86_400
MAX_TEXT_CHARS: Final = 1024
#: The longest ``max_length`` of the built-in catalog (stack traces, object-store URIs).
MAX_LONG_TEXT_CHARS: Final = 8192
MAX_INDEXED_IDENTIFIER_BYTES: Final = 1024
#: A string of at most this many characters cannot exceed the byte bound (4 bytes each).
_SAFE_IDENTIFIER_CHARS: Final = MAX_INDEXED_IDENTIFIER_BYTES // 4
_NUL: Final = "\x00"
#: A framed value's payload starts after the magic byte, the 4-byte schema id and at
#: least one message-index byte.
_FRAMED_PAYLOAD_START: Final = 6
_NANOS_PER_SECOND: Final = 1_000_000_000
_uuid_match = re.compile(
    r"(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-|[0-9a-fA-F]{20})"
    r"[0-9a-fA-F]{12}"
).fullmatch

_ROLE_NAMES: Final = ("event_id", "correlation_id", "occurred_at", "source")


def _too_long(path: str, length: int, limit: int) -> ValidationError:
    return ValidationError("too_long", path, f"{path} has {length} characters, at most {limit}")


def _is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _text_getter(
    descriptor: Any, skip: frozenset[str] = frozenset()
) -> Callable[[Message], tuple[str, ...]]:
    """One C call returning every singular string field of a message type, as a tuple."""
    names = [
        field.name
        for field in descriptor.fields
        if field.type == FieldDescriptor.TYPE_STRING
        and not field.is_repeated
        and field.name not in skip
    ]
    if not names:
        return lambda message: ()
    if len(names) == 1:  # attrgetter of one name returns the value, not a tuple
        single = attrgetter(names[0])
        return lambda message: (single(message),)
    getter: Callable[[Message], tuple[str, ...]] = attrgetter(*names)
    return getter


def _map_fields(descriptor: Any) -> tuple[tuple[str, bool], ...]:
    """``(name, values_are_text)`` of each map field whose keys are strings."""
    return tuple(
        (field.name, field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING)
        for field in descriptor.fields
        if _is_map(field)
        and field.message_type.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING
    )


#: Well-known messages stored as a column of their own type: no text below them.
_FLAT_WELL_KNOWN: Final = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "Timestamp",
        "Duration",
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "BytesValue",
    )
)


def _has_deep_text(descriptor: Any) -> bool:
    """Whether text can hide below the top level (nested messages, repeated strings, maps
    of messages), where the one-call scan does not look."""
    for field in descriptor.fields:
        if _is_map(field):
            value = field.message_type.fields_by_name["value"]
            if value.type == FieldDescriptor.TYPE_MESSAGE:
                return True
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name not in _FLAT_WELL_KNOWN:
                return True
        elif field.type == FieldDescriptor.TYPE_STRING and field.is_repeated:
            return True
    return False


def _nul_path(message: Message, prefix: str) -> str | None:
    """The dotted path of the first text holding NUL (the failure path only)."""
    for field, value in message.ListFields():
        path = prefix + field.name
        if isinstance(value, str) and _NUL in value:
            return path
        if isinstance(value, Message):
            found = _nul_path(value, path + ".")
            if found is not None:
                return found
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str) and _NUL in key:
                    return f"{path} key"
                if isinstance(item, str) and _NUL in item:
                    return f"{path}[{key.replace(_NUL, '?') if isinstance(key, str) else key}]"
                if isinstance(item, Message):
                    found = _nul_path(item, f"{path}[{key}].")
                    if found is not None:
                        return found
        elif isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
            for index, item in enumerate(value):
                if isinstance(item, str) and _NUL in item:
                    return f"{path}[{index}]"
                if isinstance(item, Message):
                    found = _nul_path(item, f"{path}[{index}].")
                    if found is not None:
                        return found
    return None


def _nul_error(event: Message) -> ValidationError:
    path = _nul_path(event, "")
    return ValidationError(
        "nul_character", path, f"{path} contains a NUL character, which PostgreSQL text refuses"
    )


@attrs.frozen
class _TextLimits:
    """Per message type and field: the character limit and whether it is an indexed
    identifier (bounded in UTF-8 bytes)."""

    chars: Mapping[tuple[str, str], int]
    indexed: frozenset[tuple[str, str]]

    def check(self, message: Message, prefix: str) -> None:
        """The slow path of the length rules, for events over 1024 serialized bytes.

        Walks the fields that are set (nested payloads included) instead of naming them,
        so every field of the catalog is covered.
        """
        type_name = message.DESCRIPTOR.full_name
        for field, value in message.ListFields():
            path = prefix + field.name
            if isinstance(value, str):
                key = (type_name, field.name)
                limit = self.chars.get(key, MAX_TEXT_CHARS)
                if len(value) > limit:
                    raise _too_long(path, len(value), limit)
                if (
                    key in self.indexed
                    and len(value) > _SAFE_IDENTIFIER_CHARS
                    and len(value.encode()) > MAX_INDEXED_IDENTIFIER_BYTES
                ):
                    raise ValidationError(
                        "too_long",
                        path,
                        f"{path} has {len(value.encode())} UTF-8 bytes, at most "
                        f"{MAX_INDEXED_IDENTIFIER_BYTES} for an indexed identifier",
                    )
            elif isinstance(value, Message):
                self.check(value, path + ".")
            elif isinstance(value, Mapping):
                _check_map_text(value, path)
            elif field.is_repeated:
                for index, item in enumerate(value):
                    if isinstance(item, str) and len(item) > MAX_TEXT_CHARS:
                        raise _too_long(f"{path}[{index}]", len(item), MAX_TEXT_CHARS)
                    if isinstance(item, Message):
                        self.check(item, f"{path}[{index}].")


def _check_map_text(entries: Mapping[Any, Any], path: str) -> None:
    for key, value in entries.items():
        if isinstance(key, str) and len(key) > MAX_TEXT_CHARS:
            raise _too_long(f"{path} key", len(key), MAX_TEXT_CHARS)
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise _too_long(f"{path}[{key}]", len(value), MAX_TEXT_CHARS)


def _indexed_columns(table: FactTable) -> set[str]:
    columns = {"correlation_id"}
    for index in table.indexes:
        columns.update(index.columns)
    for update in table.updates:
        columns.update(update.key)
    return columns


def _text_limits(catalog: Catalog, envelope: str | None) -> _TextLimits:
    chars: dict[tuple[str, str], int] = {}
    indexed: set[tuple[str, str]] = set()
    if envelope is not None:
        indexed.add((envelope, "correlation_id"))
    for table in catalog.fact_tables:
        keyed = _indexed_columns(table)
        for column in table.payload_columns:
            field = column.field
            if field is None or len(field.path) != 1 or field.kind is not ValueKind.TEXT:
                continue
            key = (table.message, field.path[0])
            if field.max_length is not None:
                chars[key] = field.max_length
            if column.name in keyed:
                indexed.add(key)
        if envelope is None:
            indexed.add((table.message, "correlation_id"))
    return _TextLimits(chars=chars, indexed=frozenset(indexed))


def _check_unset_time(event: Message, name: str, seconds: int, *, required: bool) -> None:
    """An event time out of range: refused, unless unset and not required (the Kafka
    timestamp then stands in). An unset timestamp reads as 0, so presence is only
    asked on this failure path."""
    if event.HasField(name):
        raise ValidationError(
            "timestamp_out_of_range",
            name,
            f"{name} {seconds} s is before 2000-01-01 or more than a day ahead",
        )
    if required:
        raise ValidationError("missing_field", name, f"{name} is not set")


def _time_roles(
    fields: EnvelopeFields,
) -> tuple[Callable[[Message], tuple[Any, Any]], str | None, str | None, bool]:
    """A reader of ``(event id, occurred_at)`` in one call ('' and None for a role the
    message lacks), their field names, and whether occurred_at is required."""
    id_field, time_field = fields.fields.get("event_id"), fields.fields.get("occurred_at")
    read: Callable[[Message], tuple[Any, Any]]
    if id_field and time_field:
        read = attrgetter(id_field, time_field)
    else:
        read_id = attrgetter(id_field) if id_field else (lambda message: "")
        read_time = attrgetter(time_field) if time_field else (lambda message: None)
        read = lambda message: (read_id(message), read_time(message))  # noqa: E731
    return read, id_field, time_field, fields.occurred_at_required


class EventValidator:
    """The rules of one catalog: envelope fields, text, and each type's compiled rules.

    In envelope mode (``catalog.envelope``) :meth:`validate` takes the envelope and finds
    the event type in its oneof; for a message of a topic (per-topic mode) the caller
    names the type (``kind``) and the message is its own envelope. ``envelope_fields``
    reads ``(event_id, correlation_id, source)`` of a validated event in one call ('' for
    a role the message does not have).
    """

    def __init__(self, catalog: Catalog, classes: Mapping[str, type[Message]]) -> None:
        self.catalog = catalog
        self.tables = {table.event_type: table for table in catalog.fact_tables}
        self._rules = compile_rules(self.tables)
        envelope = catalog.envelope
        self._oneof: str | None = None
        self._roles: Mapping[str, str] = catalog.envelope_fields.fields
        if envelope is not None:
            descriptor = classes[envelope].DESCRIPTOR
            member = next(field for field in descriptor.fields if field.name in self.tables)
            oneof: Any = member.containing_oneof
            self._oneof = oneof.name
        text_type = classes[envelope].DESCRIPTOR if envelope is not None else None
        self._envelope_text = (
            _text_getter(text_type, frozenset({self._roles.get("event_id", "")}))
            if text_type is not None
            else None
        )
        self._payload_text: dict[str, Callable[[Message], tuple[str, ...]]] = {}
        self._payload_maps: dict[str, tuple[tuple[str, bool], ...]] = {}
        self._deep_text: set[str] = set()
        self._topic_roles: dict[str, dict[str, str]] = {}
        for kind, table in self.tables.items():
            descriptor = classes[table.message].DESCRIPTOR
            self._payload_text[kind] = _text_getter(descriptor)
            self._payload_maps[kind] = _map_fields(descriptor)
            if _has_deep_text(descriptor):
                self._deep_text.add(kind)
            self._topic_roles[kind] = dict(table.envelope.fields)
        #: (event id field, occurred_at field) of the envelope, and of each type's own
        #: message (a typed topic's message is its own envelope); None: derived.
        self._envelope_roles = _time_roles(catalog.envelope_fields)
        self._own_roles = {kind: _time_roles(table.envelope) for kind, table in self.tables.items()}
        self._limits = _text_limits(catalog, envelope)
        self._unknown_dead_lettered = {
            kind for kind, table in self.tables.items() if table.dead_letter_unknown_fields
        }
        self._length_shortcut = min([MAX_TEXT_CHARS, *self._limits.chars.values()])
        #: ``(message type, field)`` of every text field bounded in UTF-8 bytes.
        self.indexed_fields = self._limits.indexed
        self.envelope_fields = _fields_reader(self._roles) if envelope is not None else None
        self._own_fields = {
            kind: _fields_reader(roles) for kind, roles in self._topic_roles.items()
        }

    # --- the envelope ------------------------------------------------------------------

    def event_type(self, event: Message) -> str:
        """The event type set on an envelope; ``missing_payload`` when none is set, or
        ``unknown_fields`` when the envelope holds fields the catalog does not define (a
        producer ahead of the catalog: a new member of the oneof is such a field)."""
        kind: str | None = event.WhichOneof(self._oneof) if self._oneof else None
        if kind is None or kind not in self.tables:
            if self._unknown_dead_lettered:
                check_unknown_fields(event, "")
            raise ValidationError("missing_payload", "payload", "event carries no payload")
        return kind

    def payload_name(self, event: Message) -> str | None:
        """The name of the oneof member set on an envelope (None when none is set, or
        without an envelope); never raises."""
        name: str | None = event.WhichOneof(self._oneof) if self._oneof else None
        return name

    def fields_of(self, kind: str) -> Callable[[Message], tuple[str, str, str]]:
        """The envelope-fields reader of a type's own message (a typed topic's)."""
        return self._own_fields[kind]

    def validate(
        self,
        event: Message,
        kind: str | None = None,
        now: float | None = None,
        encoded_size: int | None = None,
        encoded: bytes | bytearray | None = None,
    ) -> tuple[str, Message, int | None]:
        """Raise ``ValidationError`` unless ``event`` satisfies every rule of the module
        table; return ``(event type, payload message, occurred_at in epoch microseconds or
        None to take the Kafka timestamp)``.

        ``now`` (Unix seconds) bounds ``occurred_at`` from above; it defaults to the
        current time. ``encoded`` (the Kafka value, framing included) or ``encoded_size``
        (an upper bound of its length) let the text rules skip work (module docstring).
        The parameters are positional too: the per-event caller passes them so, which
        spares the keyword matching of every call.
        """
        # The per-event hot path: everything below is written inline, without calls of
        # its own, as the hand-written checks were.
        if kind is None:
            oneof = self._oneof
            member: Any = event.WhichOneof(oneof) if oneof is not None else None
            try:
                rules = self._rules[member]
            except KeyError:
                if self._unknown_dead_lettered:  # a new member of the oneof is unknown
                    check_unknown_fields(event, "")
                raise ValidationError(
                    "missing_payload", "payload", "event carries no payload"
                ) from None
            kind = member
            payload = getattr(event, member)
            read_roles, id_field, time_field, time_required = self._envelope_roles
        else:
            rules = self._rules[kind]
            payload = event
            read_roles, id_field, time_field, time_required = self._own_roles[kind]
        if encoded is not None:
            encoded_size = len(encoded)
        event_id, occurred_at = read_roles(event)
        if event_id and _uuid_match(event_id) is None:
            raise ValidationError(
                "invalid_uuid", id_field, f"{id_field} {event_id[:64]!r} is no UUID"
            )
        occurred_micros: int | None = None
        if time_field is not None:
            seconds: int = occurred_at.seconds
            latest = (time.time() if now is None else now) + MAX_FUTURE_SKEW_SECONDS
            if MIN_OCCURRED_AT_SECONDS <= seconds <= latest:
                nanos: int = occurred_at.nanos
                if not 0 <= nanos < _NANOS_PER_SECOND:
                    raise ValidationError(
                        "timestamp_out_of_range",
                        time_field,
                        f"{time_field}.nanos is outside 0..999999999",
                    )
                occurred_micros = seconds * 1_000_000 + nanos // 1000
            else:
                _check_unset_time(event, time_field, seconds, required=time_required)
        if (event.ByteSize() if encoded_size is None else encoded_size) > self._length_shortcut:
            self._limits.check(event, "")
        if (
            encoded is None
            or encoded.find(b"\x00", _FRAMED_PAYLOAD_START if encoded[:1] == b"\x00" else 0) != -1
        ):
            self._check_nul(event, kind, payload)
        rules(payload, event)
        return kind, payload, occurred_micros

    def _check_nul(self, event: Message, kind: str, payload: Message) -> None:
        """Raise ``nul_character`` when any text of the event holds U+0000."""
        envelope_text = self._envelope_text if payload is not event else None
        if (envelope_text is not None and _NUL in "".join(envelope_text(event))) or (
            _NUL in "".join(self._payload_text[kind](payload))
        ):
            raise _nul_error(event)
        for map_name, text_values in self._payload_maps[kind]:
            entries = getattr(payload, map_name)
            if entries and (
                _NUL in "".join(entries) or (text_values and _NUL in "".join(entries.values()))
            ):
                raise _nul_error(event)
        if kind in self._deep_text and _nul_path(payload, "") is not None:
            raise _nul_error(event)


def _fields_reader(roles: Mapping[str, str]) -> Callable[[Message], tuple[str, str, str]]:
    """``(event_id, correlation_id, source)`` of a message in one call ('' where absent)."""
    names = [roles.get(role) for role in ("event_id", "correlation_id", "source")]
    if all(names):
        reader: Callable[[Message], tuple[str, str, str]] = attrgetter(*names)  # type: ignore[arg-type]
        return reader
    getters = [attrgetter(name) if name else (lambda message: "") for name in names]
    return lambda message: (getters[0](message), getters[1](message), getters[2](message))


@cache
def builtin_validator() -> EventValidator:
    """The validator of the built-in catalog, on the generated classes."""
    from kingest.schema.codec import catalog_classes  # noqa: PLC0415 (codec imports rules only)

    catalog = load_catalog()
    return EventValidator(catalog, catalog_classes(catalog))


_BUILTIN: Final = builtin_validator()
#: Field names bounded in UTF-8 bytes somewhere in the built-in catalog (indexed text).
INDEXED_IDENTIFIER_FIELDS: Final = frozenset(name for _, name in _BUILTIN.indexed_fields)


def event_type(event: Event) -> str:
    """The name of the payload set on ``event`` (e.g. ``"inference_completed"``).

    Raises ``ValidationError("missing_payload")`` when none is set.
    """
    return _BUILTIN.event_type(event)


def validate_payload(
    event: Event,
    *,
    now: float | None = None,
    encoded_size: int | None = None,
    encoded: bytes | bytearray | None = None,
) -> tuple[str, Message, int]:
    """:meth:`EventValidator.validate` of the built-in catalog: ``(payload name, payload
    message, occurred_at in epoch microseconds)`` of a valid built-in event."""
    kind, payload, micros = _BUILTIN.validate(
        event, now=now, encoded_size=encoded_size, encoded=encoded
    )
    assert micros is not None  # occurred_at is required in the built-in catalog
    return kind, payload, micros


def validate_event(
    event: Event,
    *,
    now: float | None = None,
    encoded_size: int | None = None,
    encoded: bytes | bytearray | None = None,
) -> str:
    """Raise ``ValidationError`` unless the built-in ``event`` satisfies every rule of the
    module table; return its payload name (as :func:`event_type`)."""
    return validate_payload(event, now=now, encoded_size=encoded_size, encoded=encoded)[0]


def payload_of(event: Event) -> tuple[str, Message, int]:
    """``(payload name, payload message, occurred_at in epoch microseconds)``, unchecked."""
    kind = event_type(event)
    occurred_at = event.occurred_at
    return kind, getattr(event, kind), occurred_at.seconds * 1_000_000 + occurred_at.nanos // 1000
