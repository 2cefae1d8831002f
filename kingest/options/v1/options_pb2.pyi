from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UnknownFields(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN_FIELDS_UNSPECIFIED: _ClassVar[UnknownFields]
    UNKNOWN_FIELDS_DEAD_LETTER: _ClassVar[UnknownFields]
    UNKNOWN_FIELDS_IGNORE: _ClassVar[UnknownFields]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_EVENT_ID: _ClassVar[Role]
    ROLE_CORRELATION_ID: _ClassVar[Role]
    ROLE_OCCURRED_AT: _ClassVar[Role]
    ROLE_SOURCE: _ClassVar[Role]
UNKNOWN_FIELDS_UNSPECIFIED: UnknownFields
UNKNOWN_FIELDS_DEAD_LETTER: UnknownFields
UNKNOWN_FIELDS_IGNORE: UnknownFields
ROLE_UNSPECIFIED: Role
ROLE_EVENT_ID: Role
ROLE_CORRELATION_ID: Role
ROLE_OCCURRED_AT: Role
ROLE_SOURCE: Role
CATALOG_FIELD_NUMBER: _ClassVar[int]
catalog: _descriptor.FieldDescriptor
TABLE_FIELD_NUMBER: _ClassVar[int]
table: _descriptor.FieldDescriptor
COLUMN_FIELD_NUMBER: _ClassVar[int]
column: _descriptor.FieldDescriptor
LABEL_FIELD_NUMBER: _ClassVar[int]
label: _descriptor.FieldDescriptor

class CatalogOptions(_message.Message):
    __slots__ = ("state_tables", "unknown_fields")
    STATE_TABLES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELDS_FIELD_NUMBER: _ClassVar[int]
    state_tables: _containers.RepeatedCompositeFieldContainer[StateTable]
    unknown_fields: UnknownFields
    def __init__(self, state_tables: _Optional[_Iterable[_Union[StateTable, _Mapping]]] = ..., unknown_fields: _Optional[_Union[UnknownFields, str]] = ...) -> None: ...

class StateTable(_message.Message):
    __slots__ = ("name", "comment", "column_comments", "indexes")
    class ColumnCommentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    COLUMN_COMMENTS_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    name: str
    comment: str
    column_comments: _containers.ScalarMap[str, str]
    indexes: _containers.RepeatedCompositeFieldContainer[Index]
    def __init__(self, name: _Optional[str] = ..., comment: _Optional[str] = ..., column_comments: _Optional[_Mapping[str, str]] = ..., indexes: _Optional[_Iterable[_Union[Index, _Mapping]]] = ...) -> None: ...

class TableOptions(_message.Message):
    __slots__ = ("name", "indexes", "updates", "envelope", "skip")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    name: str
    indexes: _containers.RepeatedCompositeFieldContainer[Index]
    updates: _containers.RepeatedCompositeFieldContainer[StateUpdate]
    envelope: bool
    skip: bool
    def __init__(self, name: _Optional[str] = ..., indexes: _Optional[_Iterable[_Union[Index, _Mapping]]] = ..., updates: _Optional[_Iterable[_Union[StateUpdate, _Mapping]]] = ..., envelope: _Optional[bool] = ..., skip: _Optional[bool] = ...) -> None: ...

class Index(_message.Message):
    __slots__ = ("columns", "name")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    name: str
    def __init__(self, columns: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ...) -> None: ...

class StateUpdate(_message.Message):
    __slots__ = ("table", "key", "at_column", "event_id_column", "correlation_id_column", "columns", "rank")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    AT_COLUMN_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_COLUMN_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_COLUMN_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    table: str
    key: _containers.RepeatedScalarFieldContainer[str]
    at_column: str
    event_id_column: str
    correlation_id_column: str
    columns: _containers.RepeatedCompositeFieldContainer[StateColumn]
    rank: Rank
    def __init__(self, table: _Optional[str] = ..., key: _Optional[_Iterable[str]] = ..., at_column: _Optional[str] = ..., event_id_column: _Optional[str] = ..., correlation_id_column: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[StateColumn, _Mapping]]] = ..., rank: _Optional[_Union[Rank, _Mapping]] = ...) -> None: ...

class StateColumn(_message.Message):
    __slots__ = ("column", "field", "value")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    column: str
    field: str
    value: str
    def __init__(self, column: _Optional[str] = ..., field: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Rank(_message.Message):
    __slots__ = ("column", "order")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    column: str
    order: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, column: _Optional[str] = ..., order: _Optional[_Iterable[str]] = ...) -> None: ...

class ColumnOptions(_message.Message):
    __slots__ = ("name", "type", "required", "flatten", "role", "max_length", "gte", "lte", "lt", "keep_empty")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    FLATTEN_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    KEEP_EMPTY_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    required: bool
    flatten: bool
    role: Role
    max_length: int
    gte: float
    lte: float
    lt: float
    keep_empty: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., required: _Optional[bool] = ..., flatten: _Optional[bool] = ..., role: _Optional[_Union[Role, str]] = ..., max_length: _Optional[int] = ..., gte: _Optional[float] = ..., lte: _Optional[float] = ..., lt: _Optional[float] = ..., keep_empty: _Optional[bool] = ...) -> None: ...
