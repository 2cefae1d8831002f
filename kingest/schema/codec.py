"""Decode and encode Kafka message values carrying a kingest ``Event``.

Two framings are accepted on the same topic, so producers can move to a schema
registry without a flag day:

* **plain Protobuf**: the value is the serialized ``Event``;
* **Confluent Schema Registry wire format**: ``0x00`` magic byte, 4-byte big-endian
  schema id, the message-index path, then the serialized ``Event``. The index path is a
  zigzag varint count followed by that many zigzag varint indexes; the single byte
  ``0x00`` (count 0) is the registry's short form of ``[0]``.

Telling them apart needs no configuration: a Protobuf message cannot start with
``0x00``, since that byte would be a tag with field number 0, which is invalid. The
schema id is returned by ``split_wire_format`` but not resolved against a registry:
kingest compiles the schema in, and the index path must be ``[0]`` (``Event`` is the
first message of its file).

Proto3 ``string`` fields are checked for valid UTF-8 by the Protobuf runtime while
parsing, so a value with malformed UTF-8 in any string (map keys included) fails here
as ``invalid_protobuf``; nothing downstream ever sees undecodable text.

This module is on the per-message hot path: the plain case costs one byte test and
one parse call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError as _ProtobufDecodeError
from google.protobuf.message import Message

from kingest.catalog import Catalog, is_builtin, message_class
from kingest.schema.v1.events_pb2 import Event

__all__ = [
    "WIRE_FORMAT_MAGIC",
    "DecodeError",
    "Event",
    "MessageDecoder",
    "catalog_classes",
    "catalog_decoders",
    "decode_event",
    "encode_event",
    "encode_message",
    "message_index_path",
    "split_wire_format",
]

#: First byte of a value framed in the Confluent Schema Registry wire format.
WIRE_FORMAT_MAGIC: Final = 0x00
_HEADER_SIZE: Final = 5  # magic byte + 4-byte schema id
_SHORT_FORM_HEADER_SIZE: Final = _HEADER_SIZE + 1  # ... + the single 0x00 index byte
_MAX_SCHEMA_ID: Final = 2**31 - 1
_MAX_VARINT_BYTES: Final = 10  # a 64-bit varint never takes more
_EVENT_INDEXES: Final = (0,)


class DecodeError(ValueError):
    """A message value that cannot become an ``Event``; permanent, so dead-lettered.

    ``error_class`` is a short stable code for metrics and the dead-letter store:
    ``empty_value``, ``truncated_wire_header``, ``invalid_message_indexes``,
    ``unknown_message_index`` or ``invalid_protobuf``.
    """

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str]]:
        # Keeps the error picklable (ValueError's default would pass only the message).
        return (type(self), (self.error_class, str(self)))


def _read_zigzag_varint(data: bytes | bytearray, position: int) -> tuple[int, int]:
    """Read one zigzag varint at ``position``; return ``(value, next_position)``."""
    raw = 0
    shift = 0
    end = min(len(data), position + _MAX_VARINT_BYTES)
    while position < end:
        byte = data[position]
        position += 1
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (raw >> 1) ^ -(raw & 1), position
        shift += 7
    if end == len(data):
        raise DecodeError("truncated_wire_header", "message-index varint runs past the value")
    raise DecodeError("invalid_message_indexes", "message-index varint longer than 10 bytes")


def split_wire_format(
    value: bytes | bytearray,
) -> tuple[int | None, tuple[int, ...], memoryview | bytes | bytearray]:
    """Split a value into ``(schema_id, message_indexes, protobuf_payload)``.

    A plain Protobuf value comes back unchanged as ``(None, (), value)``. A framed value
    gives its schema id, its index path (``(0,)`` for the short form) and a zero-copy
    view of the payload. Raises ``DecodeError`` for an empty value or a malformed header.
    """
    if not value:
        raise DecodeError("empty_value", "message value is empty")
    if value[0] != WIRE_FORMAT_MAGIC:
        return None, (), value
    if len(value) < _HEADER_SIZE + 1:
        raise DecodeError(
            "truncated_wire_header",
            f"wire-format value of {len(value)} bytes is shorter than its header",
        )
    schema_id = int.from_bytes(value[1:_HEADER_SIZE], "big", signed=True)
    count, position = _read_zigzag_varint(value, _HEADER_SIZE)
    if count == 0:
        indexes: tuple[int, ...] = _EVENT_INDEXES
    else:
        if count < 0:
            raise DecodeError("invalid_message_indexes", f"message-index count {count} < 0")
        if count > len(value) - position:
            # Each index takes at least one byte, so the value ends inside the index path.
            raise DecodeError(
                "truncated_wire_header", f"{count} message indexes do not fit in the value"
            )
        collected = []
        for _ in range(count):
            index, position = _read_zigzag_varint(value, position)
            collected.append(index)
        indexes = tuple(collected)
    return schema_id, indexes, memoryview(value)[position:]


class MessageDecoder:
    """Parses values (plain or framed) into messages of the classes it knows.

    A plain value is parsed as ``default``. A framed value's message-index path chooses
    the class among ``by_indexes`` (paths into the file of the registered schema, e.g.
    ``(0,)`` for its first message); a path it does not know is ``unknown_message_index``.
    """

    __slots__ = ("_allow_empty", "_by_indexes", "_default", "_parse", "_short_form")

    def __init__(
        self,
        default: type[Message],
        by_indexes: Mapping[tuple[int, ...], type[Message]],
        *,
        allow_empty: bool = False,
    ) -> None:
        self._allow_empty = allow_empty
        self._default = default
        self._parse = cast(Callable[[bytes | bytearray | memoryview], Message], default.FromString)
        self._by_indexes = dict(by_indexes)
        self._short_form = self._by_indexes.get(_EVENT_INDEXES) is default

    def decode(self, value: bytes | None) -> Message:
        """Parse a Kafka message value; raises only ``DecodeError``, whatever the bytes.

        A missing value (a tombstone) is rejected as ``empty_value``; so is a zero-length
        one, though it is a valid empty proto3 message, unless ``allow_empty``: an
        envelope with nothing in it is a producer bug, not an event, while a typed
        topic's message may hold only default values (``allow_empty``).
        """
        if not value:
            if value is None or not self._allow_empty:
                raise DecodeError("empty_value", "message value is empty or missing")
            return self._default()  # every field at its default (an int32 of 0...)
        parse = self._parse
        if value[0] != WIRE_FORMAT_MAGIC:
            payload: memoryview | bytes | bytearray = value
        elif self._short_form and len(value) > _SHORT_FORM_HEADER_SIZE and value[_HEADER_SIZE] == 0:
            # The common framing (index path in its one-byte short form) needs no parsing.
            payload = memoryview(value)[_SHORT_FORM_HEADER_SIZE:]
        else:
            _schema_id, indexes, payload = split_wire_format(value)
            chosen = self._by_indexes.get(indexes)
            if chosen is None:
                known = ", ".join(str(list(path)) for path in self._by_indexes) or "none"
                raise DecodeError(
                    "unknown_message_index",
                    f"message-index path {list(indexes)} names no message kingest stores "
                    f"from this topic (known: {known})",
                )
            if not payload:
                raise DecodeError("empty_value", "wire-format value carries no Protobuf payload")
            if chosen is not self._default:
                parse = cast(Callable[[bytes | bytearray | memoryview], Message], chosen.FromString)
        try:
            return parse(payload)
        except _ProtobufDecodeError as exc:
            raise DecodeError("invalid_protobuf", str(exc)) from None


_EVENTS: Final = MessageDecoder(Event, {_EVENT_INDEXES: Event})


def decode_event(value: bytes | None) -> Event:
    """Parse a Kafka message value (plain or wire-format framed) into a built-in ``Event``.

    Raises only ``DecodeError``, whatever the bytes (see :meth:`MessageDecoder.decode`).
    """
    return cast(Event, _EVENTS.decode(value))


def _zigzag_varint(number: int) -> bytes:
    raw = (number << 1) ^ (number >> 63)
    out = bytearray()
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


def encode_message(
    message: Message,
    *,
    schema_id: int | None = None,
    message_indexes: Sequence[int] | None = None,
) -> bytes:
    """Serialize any message; with a ``schema_id``, frame it in the wire format.

    ``message_indexes`` (only used with a schema id) is the message's path in the file
    of the registered schema; by default the message's own path in its ``.proto`` file.
    ``[0]`` is written in the registry's one-byte short form. Serialization is
    deterministic (map entries sorted) so that equal messages give equal bytes.
    """
    payload = message.SerializeToString(deterministic=True)
    if schema_id is None:
        return payload
    if not 0 <= schema_id <= _MAX_SCHEMA_ID:
        raise ValueError(f"schema id {schema_id} is outside 0..{_MAX_SCHEMA_ID}")
    indexes = (
        message_index_path(message.DESCRIPTOR)
        if message_indexes is None
        else tuple(message_indexes)
    )
    if indexes == _EVENT_INDEXES:
        index_bytes = b"\x00"
    else:
        index_bytes = _zigzag_varint(len(indexes)) + b"".join(
            _zigzag_varint(index) for index in indexes
        )
    return b"\x00" + schema_id.to_bytes(4, "big") + index_bytes + payload


def encode_event(
    event: Event,
    *,
    schema_id: int | None = None,
    message_indexes: Sequence[int] = _EVENT_INDEXES,
) -> bytes:
    """Serialize a built-in ``event`` (see :func:`encode_message`); framed, its index path
    is ``[0]`` unless told otherwise."""
    return encode_message(event, schema_id=schema_id, message_indexes=message_indexes)


def catalog_classes(catalog: Catalog) -> dict[str, type[Message]]:
    """Full name -> class of the catalog's envelope and fact messages.

    The built-in catalog's are the generated classes (this module imports them); any
    other catalog's come from a descriptor pool of its own.
    """
    names = {table.message for table in catalog.fact_tables}
    if catalog.envelope is not None:
        names.add(catalog.envelope)
    if is_builtin(catalog):
        pool = descriptor_pool.Default()
        return {
            name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
            for name in names
        }
    return {name: message_class(catalog, name) for name in names}


def message_index_path(descriptor: Any) -> tuple[int, ...]:
    """The message-index path of a message type in its file (``(0,)``: its first message),
    as a Schema Registry serializer frames it."""
    path: list[int] = []
    while descriptor.containing_type is not None:
        parent = descriptor.containing_type
        path.append(list(parent.nested_types).index(descriptor))
        descriptor = parent
    path.append(list(descriptor.file.message_types_by_name.values()).index(descriptor))
    return tuple(reversed(path))


def catalog_decoders(
    catalog: Catalog, classes: Mapping[str, type[Message]]
) -> tuple[MessageDecoder | None, dict[str, MessageDecoder]]:
    """The envelope decoder (None without an envelope) and one decoder per typed topic.

    A framed value's index path must name the envelope (envelope topics), or a fact
    message of the same file as the topic's type (typed topics: a topic may then carry
    several types, each framed with its own path).
    """
    envelope = None
    if catalog.envelope is not None:
        envelope_class = classes[catalog.envelope]
        envelope = MessageDecoder(
            envelope_class, {message_index_path(envelope_class.DESCRIPTOR): envelope_class}
        )
    topics: dict[str, MessageDecoder] = {}
    for topic, name in catalog.topic_types.items():
        default = classes[name]
        same_file = {
            message_index_path(cls.DESCRIPTOR): cls
            for cls in {classes[table.message] for table in catalog.fact_tables}
            if cls.DESCRIPTOR.file.name == default.DESCRIPTOR.file.name
        }
        topics[topic] = MessageDecoder(default, same_file, allow_empty=True)
    return envelope, topics
