"""Plausible messages of any catalog: synthetic Kafka records for a team's own Protobuf types.

The stream of :mod:`kingest.dev.synth` knows the built-in events only; a team's catalog
is known through its descriptor set alone. This module loads the set into a fresh
descriptor pool and builds instances of any of its message types, each field's value
guided by its name, type and kingest column options (:mod:`kingest.dev.catalog_values`):
required fields are always set, bounds and ``max_length`` always respected, so the
messages make rows rather than dead letters.

* ids (``*_id``) come from a small pool per field, so keys repeat as in production and
  a current-state table sees several events per key; event ids and correlation ids are
  UUIDv4 strings;
* a ``Timestamp`` is near the base time, ``occurred_at`` advancing one millisecond per
  message; a ``Duration`` is short (milliseconds for a latency);
* repeated fields and maps get 0 to 3 items, a ``Struct`` a small object, a nested
  message is filled in turn (to a depth of :data:`MAX_DEPTH`), a ``oneof`` gets one
  member, a wrapper is now and then left unset;
* an envelope message (``option (kingest.options.v1.table).envelope = true``) gets its
  envelope fields (by ``role`` option, else by name) and one member of its ``oneof`` of
  messages, each member in turn.

The Kafka key of a message is its first entity id (a ``*_id`` text that is not an event or
correlation id), else the first key field of its first state update, else none. The
same seed and base time give the same bytes.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
    OneofDescriptor,
)
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message

from kingest.dev.catalog_values import (
    WORDS,
    CatalogSynthError,
    ColumnRules,
    bound_problems,
    bytes_for,
    column_rules,
    is_free_text,
    is_uuid_name,
    map_keys,
    number_for,
    short_id,
    text_for,
    truncated,
    uuid4,
)
from kingest.options.v1 import options_pb2

__all__ = [
    "DEFAULT_BASE_TIME",
    "MAX_DEPTH",
    "CatalogSynth",
    "DescriptorSetPool",
    "load_descriptor_set_pool",
    "messages_from_descriptor_set",
    "record_key",
    "records_from_descriptor_set",
]

#: 2026-01-01T00:00:00Z: the default base time, fixed so that a seed alone decides the bytes.
DEFAULT_BASE_TIME: Final = 1_767_225_600.0
#: Nested messages deeper than this are left unset (or empty when required).
MAX_DEPTH: Final = 3
#: Distinct values of one ``*_id`` field.
ID_POOL_SIZE: Final = 8
#: How far before a message's ``occurred_at`` its other timestamps may lie.
_TIMESTAMP_SPREAD_MS: Final = 600_000
_UNSET_MESSAGE_SHARE: Final = 0.2
_UNSET_WRAPPER_SHARE: Final = 0.3
_EMPTY_FREE_TEXT_SHARE: Final = 0.3
_CORRELATION_REUSE_SHARE: Final = 0.25

_TIMESTAMP: Final = "google.protobuf.Timestamp"
_DURATION: Final = "google.protobuf.Duration"
_STRUCT: Final = "google.protobuf.Struct"
_VALUE: Final = "google.protobuf.Value"
_LIST_VALUE: Final = "google.protobuf.ListValue"
_WRAPPERS: Final = frozenset(
    f"google.protobuf.{kind}Value"
    for kind in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
#: Packages whose messages serve the catalog rather than belong to it.
_SUPPORT_PACKAGES: Final = ("google.protobuf", "kingest.options.v1")
#: Envelope fields found by name when no field has the ``role`` option.
_ROLE_NAMES: Final = {
    "event_id": options_pb2.ROLE_EVENT_ID,
    "correlation_id": options_pb2.ROLE_CORRELATION_ID,
    "occurred_at": options_pb2.ROLE_OCCURRED_AT,
    "source": options_pb2.ROLE_SOURCE,
}


@dataclass(frozen=True)
class DescriptorSetPool:
    """A descriptor set loaded into a pool of its own (the process's default pool untouched)."""

    pool: DescriptorPool
    #: The set's files, each after the files it imports.
    files: tuple[FileDescriptor, ...]

    def message_names(self) -> list[str]:
        """Full names of the catalog's message types, nested ones included.

        Map entries, the well-known types and kingest's options are left out: they are
        parts of messages, not messages a topic carries.
        """
        names: list[str] = []

        def visit(descriptor: Descriptor) -> None:
            if descriptor.GetOptions().map_entry:
                return
            names.append(descriptor.full_name)
            for nested in descriptor.nested_types:
                visit(nested)

        for file in self.files:
            if file.package not in _SUPPORT_PACKAGES:
                for descriptor in file.message_types_by_name.values():
                    visit(descriptor)
        return names

    def envelope_names(self) -> list[str]:
        """Full names of the set's envelope messages (``table`` option ``envelope = true``)."""
        return [name for name in self.message_names() if _is_envelope(self.message_type(name))]

    def message_type(self, full_name: str) -> Descriptor:
        """The message type ``full_name``; the error lists the catalog's message types."""
        try:
            return self.pool.FindMessageTypeByName(full_name)
        except KeyError:
            known = "\n  ".join(self.message_names()) or "(none)"
            raise CatalogSynthError(
                f"no message type {full_name!r} in the descriptor set; its message types:\n"
                f"  {known}"
            ) from None


def load_descriptor_set_pool(source: Path | bytes) -> DescriptorSetPool:
    """Load a ``FileDescriptorSet`` (a path or its bytes) into a fresh descriptor pool.

    The set must hold its imports (``buf build``, or ``protoc --include_imports``); its
    files are added each after the files it imports, whatever their order in the set,
    and a file listed twice is added once.
    """
    data = source if isinstance(source, bytes) else _read(source)
    try:
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError as exc:
        raise CatalogSynthError(f"not a FileDescriptorSet: {exc}") from None
    by_name: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for file in descriptor_set.file:
        by_name.setdefault(file.name, file)
    missing = [
        f"{file.name} imports {dependency}, which the set lacks"
        for file in by_name.values()
        for dependency in file.dependency
        if dependency not in by_name
    ]
    if missing:
        raise CatalogSynthError(
            "the descriptor set does not hold every imported file (build it with its "
            "imports: buf build, or protoc --include_imports):\n  " + "\n  ".join(missing)
        )
    pool = DescriptorPool()
    added: list[str] = []

    def add(name: str) -> None:
        if name in added:
            return
        for dependency in by_name[name].dependency:
            add(dependency)
        try:
            pool.AddSerializedFile(by_name[name].SerializeToString())
        except (TypeError, ValueError) as exc:
            raise CatalogSynthError(f"{name}: rejected by the descriptor pool: {exc}") from None
        added.append(name)

    for name in by_name:
        add(name)
    return DescriptorSetPool(pool, tuple(pool.FindFileByName(name) for name in added))


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CatalogSynthError(f"cannot read the descriptor set {path}: {exc}") from None


@functools.cache
def _real_oneofs(descriptor: Descriptor) -> tuple[OneofDescriptor, ...]:
    """The message's oneofs, without the synthetic ones of proto3 ``optional`` fields."""
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    synthetic = {
        field.oneof_index
        for field in proto.field
        if field.proto3_optional and field.HasField("oneof_index")
    }
    return tuple(oneof for oneof in descriptor.oneofs if oneof.index not in synthetic)


def _is_envelope(descriptor: Descriptor) -> bool:
    message_options = descriptor.GetOptions()
    if not message_options.HasExtension(options_pb2.table):  # type: ignore[arg-type]
        return False
    table: options_pb2.TableOptions = message_options.Extensions[options_pb2.table]  # type: ignore[index]
    return table.envelope


@functools.cache
def _envelope_oneof(descriptor: Descriptor) -> OneofDescriptor | None:
    """The oneof of messages of an envelope message; ``None`` for any other message."""
    if not _is_envelope(descriptor):
        return None
    for oneof in _real_oneofs(descriptor):
        if oneof.fields and all(field.message_type is not None for field in oneof.fields):
            return oneof
    return None


def _envelope_roles(descriptor: Descriptor) -> dict[str, int]:
    """Field name -> envelope role: from the ``role`` options, else by name."""
    by_option = {field.name: column_rules(field).role for field in descriptor.fields}
    roles = {name: role for name, role in by_option.items() if role}
    for name, role in _ROLE_NAMES.items():
        if role not in roles.values() and name in descriptor.fields_by_name:
            roles[name] = role
    return roles


def _problems(descriptor: Descriptor) -> list[str]:
    """Every reason the message type (and the types it holds) cannot be synthesized."""
    problems: list[str] = []
    if _is_envelope(descriptor) and _envelope_oneof(descriptor) is None:
        problems.append(f"{descriptor.full_name}: an envelope without a oneof of messages")
    seen: set[str] = set()
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        for field in current.fields:
            problems += bound_problems(field, column_rules(field))
            if field.message_type is not None:
                pending.append(field.message_type)
    return problems


def _descriptor_of(message: Message) -> Descriptor:
    """The message's type (the stubs also allow the C extension's own class: the same API)."""
    return cast(Descriptor, message.DESCRIPTOR)


@functools.cache
def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def record_key(message: Message) -> bytes | None:
    """The Kafka key of a message: the entity whose order matters (see the module doc)."""
    payload = message
    oneof = _envelope_oneof(_descriptor_of(message))
    if oneof is not None:
        member = message.WhichOneof(oneof.name)
        if member is not None:
            payload = getattr(message, member)
    descriptor = _descriptor_of(payload)
    for field in descriptor.fields:
        if _is_entity_id(field):
            value = getattr(payload, field.name)
            if value:
                return str(value).encode()
    table_options = descriptor.GetOptions()
    if table_options.HasExtension(options_pb2.table):  # type: ignore[arg-type]
        table: options_pb2.TableOptions = table_options.Extensions[options_pb2.table]  # type: ignore[index]
        for update in table.updates[:1]:
            for name in update.key[:1]:
                value = getattr(payload, name, None)
                if value:
                    return str(value).encode()
    return None


def _is_entity_id(field: FieldDescriptor) -> bool:
    name = field.name
    return (
        field.type == FieldDescriptor.TYPE_STRING
        and not field.is_repeated
        and name.endswith("_id")
        and name not in _ROLE_NAMES
        and not name.endswith("_event_id")
        and not column_rules(field).role
    )


class CatalogSynth:
    """Plausible instances of one message type, one after the other, from one seeded RNG.

    ``base_time`` (Unix seconds) is the ``occurred_at`` of the first message; each next
    message is one millisecond later. Raises :class:`CatalogSynthError` listing every
    field whose options no value can satisfy.
    """

    def __init__(
        self,
        descriptor: Descriptor,
        rng: random.Random,
        *,
        base_time: float = DEFAULT_BASE_TIME,
    ) -> None:
        problems = _problems(descriptor)
        if problems:
            raise CatalogSynthError(
                f"cannot synthesize {descriptor.full_name}:\n  " + "\n  ".join(problems)
            )
        self.descriptor = descriptor
        self._class = message_factory.GetMessageClass(descriptor)
        self._rng = rng
        self._base_ms = round(base_time * 1000)
        self._index = 0
        self._id_pools: dict[str, dict[int, str]] = {}
        self._correlation_id = ""
        self._envelope = _envelope_oneof(descriptor)
        self._roles = _envelope_roles(descriptor)

    def message(self) -> Message:
        """The next message."""
        message = self._class()
        self._fill(message, depth=0, top=True)
        envelope = self._envelope
        if envelope is not None:
            member = envelope.fields[self._index % len(envelope.fields)]
            payload = getattr(message, member.name)
            self._fill(payload, depth=1)
            payload.SetInParent()
        self._index += 1
        return message

    def record(self) -> tuple[bytes | None, bytes]:
        """The next message as a Kafka record: its key (:func:`record_key`) and its bytes."""
        message = self.message()
        return record_key(message), message.SerializeToString(deterministic=True)

    def _fill(self, message: Message, depth: int, *, top: bool = False) -> None:
        """Fill every field; one member of each oneof (the envelope's is the caller's)."""
        descriptor = _descriptor_of(message)
        skipped = self._envelope.name if top and self._envelope is not None else None
        chosen = {
            oneof.name: self._rng.choice(oneof.fields)
            for oneof in _real_oneofs(descriptor)
            if oneof.name != skipped
        }
        for field in descriptor.fields:
            oneof = field.containing_oneof
            if oneof is not None and (
                oneof.name == skipped or (oneof.name in chosen and chosen[oneof.name] is not field)
            ):
                continue
            if not (top and self._fill_envelope_field(message, field)):
                self._fill_field(message, field, depth)

    def _fill_envelope_field(self, message: Message, field: FieldDescriptor) -> bool:
        """Set an envelope text field of the message itself (by role); False for others.

        ``occurred_at`` is a ``Timestamp``, placed by :meth:`_timestamp` like any other.
        """
        role = self._roles.get(field.name, 0)
        if field.type != FieldDescriptor.TYPE_STRING or not role:
            return False
        if role == options_pb2.ROLE_EVENT_ID:
            value = uuid4(self._rng)
        elif role == options_pb2.ROLE_CORRELATION_ID:
            if not self._correlation_id or self._rng.random() >= _CORRELATION_REUSE_SHARE:
                self._correlation_id = uuid4(self._rng)
            value = self._correlation_id
        elif role == options_pb2.ROLE_SOURCE:
            value = text_for("source", self._rng)
        else:
            return False
        setattr(message, field.name, value)
        return True

    def _fill_field(self, message: Message, field: FieldDescriptor, depth: int) -> None:
        rules = column_rules(field)
        if _is_map(field):
            self._fill_map(message, field, rules, depth)
        elif field.is_repeated:
            count = self._rng.randint(1 if rules.required else 0, 3)
            container = getattr(message, field.name)
            if field.message_type is not None:
                for _ in range(count):
                    self._fill_value_message(container.add(), rules, depth, field.name)
            else:
                container.extend(self._scalar(field, rules, field.name) for _ in range(count))
        elif field.message_type is not None:
            if rules.required or not self._leave_unset(field.message_type, depth):
                target = getattr(message, field.name)
                self._fill_value_message(target, rules, depth, field.name)
                target.SetInParent()
        else:
            setattr(message, field.name, self._scalar(field, rules, field.name))

    def _leave_unset(self, message_type: Descriptor, depth: int) -> bool:
        """Whether an optional message field stays unset this time."""
        name = message_type.full_name
        if name in _WRAPPERS:
            return self._rng.random() < _UNSET_WRAPPER_SHARE
        if name.startswith("google.protobuf."):
            return False
        return depth + 1 > MAX_DEPTH or self._rng.random() < _UNSET_MESSAGE_SHARE

    def _fill_map(
        self, message: Message, field: FieldDescriptor, rules: ColumnRules, depth: int
    ) -> None:
        entry = cast(Descriptor, field.message_type)
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        count = self._rng.randint(1 if rules.required else 0, 3)
        keys: list[object]
        if key_field.type == FieldDescriptor.TYPE_STRING:
            keys = list(map_keys(count, self._rng))
        elif key_field.type == FieldDescriptor.TYPE_BOOL:
            keys = self._rng.sample([True, False], min(count, 2))
        else:
            keys = self._rng.sample(range(100), count)
        container = getattr(message, field.name)
        for key in keys:
            if value_field.message_type is not None:
                self._fill_value_message(container[key], ColumnRules(), depth, field.name)
            else:
                container[key] = self._scalar(value_field, ColumnRules(), field.name)

    def _fill_value_message(
        self, target: Message, rules: ColumnRules, depth: int, hint_name: str
    ) -> None:
        """Fill a message value: a well-known type by its meaning, any other field by field."""
        descriptor = _descriptor_of(target)
        name = descriptor.full_name
        rng = self._rng
        if name == _TIMESTAMP:
            self._timestamp(target, hint_name, rules)
        elif name == _DURATION:
            seconds = rng.uniform(0.05, 5.0) if "latency" in hint_name else rng.uniform(0.001, 60)
            whole, milliseconds = divmod(round(seconds * 1000), 1000)
            target.seconds, target.nanos = whole, milliseconds * 1_000_000  # type: ignore[attr-defined]
        elif name in _WRAPPERS:
            inner = descriptor.fields_by_name["value"]
            target.value = self._scalar(inner, rules, hint_name)  # type: ignore[attr-defined]
        elif name == _STRUCT:
            self._struct(target)
        elif name == _VALUE:
            target.string_value = rng.choice(WORDS)  # type: ignore[attr-defined]
        elif name == _LIST_VALUE:
            for _ in range(rng.randint(0, 3)):
                target.values.add().number_value = round(rng.uniform(0, 100), 2)  # type: ignore[attr-defined]
        elif depth + 1 <= MAX_DEPTH:
            self._fill(target, depth + 1)

    def _timestamp(self, target: Message, hint_name: str, rules: ColumnRules) -> None:
        milliseconds = self._base_ms + self._index
        if hint_name != "occurred_at" and rules.role != options_pb2.ROLE_OCCURRED_AT:
            milliseconds -= self._rng.randint(0, _TIMESTAMP_SPREAD_MS)
        seconds, remainder = divmod(milliseconds, 1000)
        target.seconds, target.nanos = seconds, remainder * 1_000_000  # type: ignore[attr-defined]

    def _struct(self, target: Message) -> None:
        rng = self._rng
        fields = target.fields  # type: ignore[attr-defined]
        for key in map_keys(rng.randint(1, 3), rng):
            kind = rng.randrange(3)
            if kind == 0:
                fields[key].string_value = rng.choice(WORDS)
            elif kind == 1:
                fields[key].number_value = round(rng.uniform(0, 100), 2)
            else:
                fields[key].bool_value = rng.random() < 0.5

    def _scalar(self, field: FieldDescriptor, rules: ColumnRules, hint_name: str) -> object:
        """A value of a scalar field; ``hint_name`` is the name that guides it."""
        rng = self._rng
        if field.type == FieldDescriptor.TYPE_ENUM:
            values = cast(EnumDescriptor, field.enum_type).values
            defined = [value.number for value in values if value.number != 0]
            return rng.choice(defined) if defined else 0
        if field.type == FieldDescriptor.TYPE_BOOL:
            return rules.required or rng.random() < 0.5
        if field.type == FieldDescriptor.TYPE_BYTES:
            return bytes_for(hint_name, rng)
        if field.type == FieldDescriptor.TYPE_STRING:
            return truncated(self._text(hint_name, rules), rules)
        return number_for(field, rules, rng, hint_name=hint_name)

    def _text(self, name: str, rules: ColumnRules) -> str:
        rng = self._rng
        if is_uuid_name(name):
            return uuid4(rng)
        if name.endswith("_id") or name == "id":
            pool = self._id_pools.setdefault(name, {})
            slot = rng.randrange(ID_POOL_SIZE)
            if slot not in pool:
                pool[slot] = short_id(name, rng)
            return pool[slot]
        if is_free_text(name) and not rules.required and rng.random() < _EMPTY_FREE_TEXT_SHARE:
            return ""
        return text_for(name, rng)


def messages_from_descriptor_set(
    source: Path | bytes,
    message_full_name: str,
    count: int,
    seed: int = 0,
    *,
    base_time: float = DEFAULT_BASE_TIME,
) -> list[Message]:
    """``count`` messages of type ``message_full_name`` of the descriptor set ``source``."""
    descriptor = load_descriptor_set_pool(source).message_type(message_full_name)
    synth = CatalogSynth(descriptor, random.Random(seed), base_time=base_time)
    return [synth.message() for _ in range(count)]


def records_from_descriptor_set(
    source: Path | bytes,
    message_full_name: str,
    count: int | None,
    seed: int = 0,
    *,
    base_time: float = DEFAULT_BASE_TIME,
) -> Iterator[tuple[bytes | None, bytes]]:
    """``(key, value)`` Kafka records of ``message_full_name`` (endless when ``count`` is None).

    The descriptor set is loaded and checked at the call, not at the first record.
    """
    descriptor = load_descriptor_set_pool(source).message_type(message_full_name)
    synth = CatalogSynth(descriptor, random.Random(seed), base_time=base_time)
    return _records(synth, count)


def _records(synth: CatalogSynth, count: int | None) -> Iterator[tuple[bytes | None, bytes]]:
    produced = 0
    while count is None or produced < count:
        yield synth.record()
        produced += 1
