"""A compiled descriptor set to a :class:`~kingest.catalog.model.Catalog`.

The descriptor set (``buf build -o catalog.binpb``, or ``protoc --include_imports
--include_source_info --descriptor_set_out``) is read as ``FileDescriptorProto``
values, so the options of ``kingest/options/v1/options.proto`` and the comments of the
source files are both at hand; nothing is registered in any descriptor pool here.

Which messages are tables:

* the **envelope** (the message with ``option (kingest.options.v1.table).envelope =
  true``, or, without one, the only message with a ``oneof`` of message fields and a
  field named ``event_id``): each message-typed member of its oneof is a fact table,
  known by the member's name;
* each message named in ``topic_types`` (``KINGEST_TOPIC_TYPES``): a fact table known
  by its table name; it needs no options.

Every problem found is collected, and :class:`CatalogError` lists them all.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

import attrs
from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorProto,
    FileDescriptorSet,
)
from google.protobuf.message import DecodeError

from kingest.catalog.extensions import catalog_options, table_options
from kingest.catalog.fields import (
    FieldContext,
    columns_of_message,
    envelope_fields,
    envelope_roles,
    one_line,
    snake_case,
)
from kingest.catalog.model import (
    Catalog,
    Column,
    EnvelopeFields,
    FactTable,
    Index,
    StateTable,
)
from kingest.catalog.state import state_tables_of, state_update
from kingest.options.v1 import options_pb2

__all__ = [
    "BUILTIN_CATALOG_PATH",
    "ENVELOPE_COLUMNS",
    "CatalogError",
    "is_builtin",
    "load_catalog",
]

#: The built-in AI/ML catalog, compiled from ``proto/kingest/schema/v1/events.proto``.
BUILTIN_CATALOG_PATH: Final = Path(__file__).resolve().parents[1] / "schema/v1/catalog.binpb"

_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")

#: The columns kingest adds in front of every fact table's fields.
ENVELOPE_COLUMNS: Final = (
    Column(
        "event_id",
        "uuid",
        not_null=True,
        comment="Idempotency key: the producer's event_id, or a UUIDv5 derived from "
        "kafka_topic/kafka_partition/kafka_offset when the producer sent none. "
        "A redelivered event is never stored twice.",
    ),
    Column(
        "occurred_at",
        "timestamptz",
        not_null=True,
        comment="When the fact happened at its source (event time, microsecond precision).",
    ),
    Column(
        "correlation_id",
        "text",
        not_null=True,
        comment="Ties together the events of one logical operation: the envelope "
        "correlation_id, else the correlation-id Kafka header, else the event_id.",
    ),
    Column(
        "source",
        "text",
        not_null=True,
        comment="The emitting system, e.g. trainer/gpu-node-17 (empty when not given).",
    ),
    Column(
        "kafka_topic", "text", not_null=True, comment="Kafka topic the event was consumed from."
    ),
    Column(
        "kafka_partition",
        "integer",
        not_null=True,
        comment="Kafka partition the event was consumed from.",
    ),
    Column(
        "kafka_offset",
        "bigint",
        not_null=True,
        comment="Kafka offset of the first delivery that stored this row.",
    ),
    Column(
        "ingested_at",
        "timestamptz",
        not_null=True,
        default="now()",
        comment="When kingest stored the row (start of the writing transaction).",
    ),
)


class CatalogError(ValueError):
    """A descriptor set kingest cannot turn into tables; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the catalog is not usable:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


@functools.cache
def _builtin_digest() -> str:
    return hashlib.sha256(BUILTIN_CATALOG_PATH.read_bytes()).hexdigest()


def is_builtin(catalog: Catalog) -> bool:
    """Whether ``catalog`` was read from the built-in descriptor set (any schema)."""
    return catalog.digest == _builtin_digest()


@attrs.define
class _Index:
    """Every message and enum of a descriptor set by full name, with its comments."""

    messages: dict[str, DescriptorProto] = attrs.field(factory=dict)
    enums: dict[str, EnumDescriptorProto] = attrs.field(factory=dict)
    comments: dict[str, str] = attrs.field(factory=dict)
    files: dict[str, FileDescriptorProto] = attrs.field(factory=dict)
    file_of: dict[str, str] = attrs.field(factory=dict)

    def add_file(self, file: FileDescriptorProto) -> None:
        self.files[file.name] = file
        located = {
            tuple(location.path): location.leading_comments
            for location in file.source_code_info.location
            if location.leading_comments
        }
        prefix = f".{file.package}" if file.package else ""
        for number, message in enumerate(file.message_type):
            self._add_message(file.name, message, prefix, (4, number), located)
        for enum in file.enum_type:
            self.enums[f"{prefix}.{enum.name}"] = enum

    def _add_message(
        self,
        file_name: str,
        message: DescriptorProto,
        prefix: str,
        path: tuple[int, ...],
        located: Mapping[tuple[int, ...], str],
    ) -> None:
        full_name = f"{prefix}.{message.name}"
        self.messages[full_name] = message
        self.file_of[full_name] = file_name
        if path in located:
            self.comments[full_name] = located[path]
        for number, field in enumerate(message.field):
            if (*path, 2, number) in located:
                self.comments[f"{full_name}.{field.name}"] = located[(*path, 2, number)]
        for number, nested in enumerate(message.nested_type):
            self._add_message(file_name, nested, full_name, (*path, 3, number), located)
        for enum in message.enum_type:
            self.enums[f"{full_name}.{enum.name}"] = enum

    def comment(self, full_name: str) -> str | None:
        return one_line(self.comments.get(full_name, ""))


def _sentence_inside(text: str) -> str:
    """``A run began.`` -> ``a run began.``, but ``GPU use.`` stays (an acronym)."""
    first_word = text.split(maxsplit=1)[0] if text.strip() else ""
    if len(first_word) > 1 and first_word.isupper():
        return text
    return text[:1].lower() + text[1:]


def _read_descriptor_set(source: Path | bytes | None) -> bytes:
    if source is None:
        return BUILTIN_CATALOG_PATH.read_bytes()
    if isinstance(source, bytes):
        return source
    try:
        return source.read_bytes()
    except OSError as exc:
        raise CatalogError([f"cannot read the catalog {source}: {exc.strerror}"]) from exc


def load_catalog(
    source: Path | bytes | None = None,
    *,
    schema: str = "kingest",
    topic_types: Mapping[str, str] | None = None,
) -> Catalog:
    """Read a descriptor set (a path, its bytes, or None for the built-in catalog).

    ``schema`` is the PostgreSQL schema the tables live in; ``topic_types`` maps topics
    to full message names (``llm.v1.GpuSample``, a leading dot allowed). Raises
    :class:`CatalogError` listing every problem.
    """
    raw = _read_descriptor_set(source)
    try:
        descriptor_set = FileDescriptorSet.FromString(raw)
    except DecodeError as exc:
        raise CatalogError([f"not a FileDescriptorSet: {exc}"]) from exc
    index = _Index()
    for file in descriptor_set.file:
        index.add_file(file)
    problems: list[str] = []
    if not _IDENTIFIER.fullmatch(schema):
        problems.append(f"schema name {schema!r} is not a lowercase SQL identifier")
    topics = {topic: "." + name.lstrip(".") for topic, name in (topic_types or {}).items()}
    envelope = _find_envelope(index, problems)
    if envelope is None and not topics:
        problems.append(
            "no envelope message (option (kingest.options.v1.table).envelope = true) "
            "and no topic types (KINGEST_TOPIC_TYPES): no message is a table"
        )
    fact_tables = list(_envelope_tables(index, envelope, problems))
    for topic, name in topics.items():
        if name not in index.messages:
            problems.append(f"topic {topic}: message {name[1:]} is not in the catalog")
        elif not any(table.message == name[1:] for table in fact_tables):
            fact_tables.append(_fact_table(index, name, None, problems, topic_mode=True))
    _check_unique(fact_tables, problems)
    state_tables: tuple[StateTable, ...] = ()
    if not problems:
        state_tables = state_tables_of(_state_declarations(index), fact_tables, problems)
    if problems:
        raise CatalogError(problems)
    return Catalog(
        schema=schema,
        fact_tables=tuple(fact_tables),
        state_tables=state_tables,
        envelope=envelope[1:] if envelope else None,
        envelope_fields=(
            envelope_fields(index.messages[envelope]) if envelope else EnvelopeFields()
        ),
        topic_types={topic: name[1:] for topic, name in topics.items()},
        descriptor_set=raw,
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _message_oneof_members(message: DescriptorProto) -> list[FieldDescriptorProto]:
    """The message-typed members of the message's first oneof that has any."""
    for number in range(len(message.oneof_decl)):
        members = [
            field
            for field in message.field
            if field.HasField("oneof_index")
            and field.oneof_index == number
            and field.type == FieldDescriptorProto.TYPE_MESSAGE
            and not field.proto3_optional
        ]
        if members:
            return members
    return []


def _find_envelope(index: _Index, problems: list[str]) -> str | None:
    marked = [name for name, message in index.messages.items() if table_options(message).envelope]
    if len(marked) > 1:
        problems.append(f"more than one envelope message: {', '.join(n[1:] for n in marked)}")
        return None
    if marked:
        if not _message_oneof_members(index.messages[marked[0]]):
            problems.append(f"envelope {marked[0][1:]} has no oneof of message fields")
            return None
        return marked[0]
    conventional = [
        name
        for name, message in index.messages.items()
        if _message_oneof_members(message) and any(f.name == "event_id" for f in message.field)
    ]
    return conventional[0] if len(conventional) == 1 else None


def _envelope_tables(
    index: _Index, envelope: str | None, problems: list[str]
) -> Iterator[FactTable]:
    if envelope is None:
        return
    for member in _message_oneof_members(index.messages[envelope]):
        message = index.messages.get(member.type_name)
        if message is None:
            problems.append(f"{envelope[1:]}.{member.name}: {member.type_name} is not in the set")
            continue
        if table_options(message).skip:
            continue
        yield _fact_table(index, member.type_name, member.name, problems, topic_mode=False)


def _fact_table(
    index: _Index,
    full_name: str,
    member: str | None,
    problems: list[str],
    *,
    topic_mode: bool,
) -> FactTable:
    message = index.messages[full_name]
    options = table_options(message)
    name = options.name or snake_case(message.name)
    if not _IDENTIFIER.fullmatch(name):
        problems.append(f"{full_name[1:]}: table name {name!r} is not a lowercase SQL identifier")
    context = FieldContext(
        messages=index.messages,
        enums=index.enums,
        comments=index.comments,
        problems=problems,
    )
    skip_roles = frozenset(envelope_roles(message).values()) if topic_mode else frozenset()
    payload = columns_of_message(context, full_name, skip=skip_roles)
    columns = (*ENVELOPE_COLUMNS, *payload)
    names = [column.name for column in columns]
    for duplicate in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"table {name}: two columns are named {duplicate}")
    indexes = [
        Index(
            index_options.name or f"{name}_{'_'.join(index_options.columns)}_idx",
            tuple(index_options.columns),
        )
        for index_options in options.indexes
    ]
    indexes.append(Index(f"{name}_correlation_id_idx", ("correlation_id",)))
    for table_index in indexes:
        unknown = [c for c in table_index.columns if c not in names]
        if unknown or not table_index.columns:
            problems.append(
                f"table {name}: index {table_index.name} names unknown columns {unknown}"
            )
    description = index.comment(full_name)
    comment = f"One row per {message.name} event"
    comment += f": {_sentence_inside(description)}" if description else "."
    return FactTable(
        name=name,
        message=full_name[1:],
        event_type=member or name,
        columns=columns,
        indexes=tuple(indexes),
        comment=comment,
        updates=tuple(state_update(update, name, payload, problems) for update in options.updates),
        envelope=envelope_fields(message),
        dead_letter_unknown_fields=(
            catalog_options(index.files[index.file_of[full_name]]).unknown_fields
            != options_pb2.UNKNOWN_FIELDS_IGNORE
        ),
    )


def _state_declarations(index: _Index) -> list[options_pb2.StateTable]:
    return [
        declared for file in index.files.values() for declared in catalog_options(file).state_tables
    ]


def _check_unique(tables: list[FactTable], problems: list[str]) -> None:
    seen: dict[str, str] = {}
    for table in tables:
        if table.name in seen:
            problems.append(
                f"messages {seen[table.name]} and {table.message} both make table {table.name}"
            )
        seen[table.name] = table.message
