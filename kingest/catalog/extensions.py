"""Typed access to the kingest options carried by descriptor protos.

The generated stubs declare the extensions as plain field descriptors, which the
protobuf typing does not accept as extension handles; these accessors are the one place
that bridges the two, and they return a default (empty) options message when a
descriptor carries none, so callers never ask twice.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumValueDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorProto,
)

from kingest.options.v1 import options_pb2

__all__ = ["catalog_options", "column_options", "enum_label", "table_options"]

_NO_CATALOG: Final = options_pb2.CatalogOptions()
_NO_TABLE: Final = options_pb2.TableOptions()
_NO_COLUMN: Final = options_pb2.ColumnOptions()


def _extension(options: Any, extension: Any) -> Any:
    return options.Extensions[extension] if options.HasExtension(extension) else None


def catalog_options(file: FileDescriptorProto) -> options_pb2.CatalogOptions:
    found: options_pb2.CatalogOptions | None = _extension(file.options, options_pb2.catalog)
    return _NO_CATALOG if found is None else found


def table_options(message: DescriptorProto) -> options_pb2.TableOptions:
    found: options_pb2.TableOptions | None = _extension(message.options, options_pb2.table)
    return _NO_TABLE if found is None else found


def column_options(field: FieldDescriptorProto) -> options_pb2.ColumnOptions:
    found: options_pb2.ColumnOptions | None = _extension(field.options, options_pb2.column)
    return _NO_COLUMN if found is None else found


def enum_label(value: EnumValueDescriptorProto) -> str | None:
    found: str | None = _extension(value.options, options_pb2.label)
    return found
