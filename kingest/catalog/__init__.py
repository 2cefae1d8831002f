"""The catalog: a team's Protobuf messages as kingest tables, and how rows are derived.

A catalog is a compiled ``FileDescriptorSet`` (the built-in AI/ML catalog, or a file
named by ``KINGEST_CATALOG``) whose messages carry the options of
``kingest/options/v1/options.proto``. :func:`load_catalog` reads it into a
:class:`Catalog`: fact tables (one per event message), current-state tables (updated
from the facts by column group), their columns with PostgreSQL types, constraints,
indexes and comments. :func:`catalog_ddl` renders the DDL that creates them. Nothing
here touches the database or Kafka, so everything above may depend on it.
"""

from kingest.catalog.compat import REMOVAL_RULES, Incompatibility, catalog_incompatibilities
from kingest.catalog.ddl import (
    catalog_ddl,
    column_definition,
    comment_ddl,
    create_index_ddl,
    create_table_ddl,
    quote_identifier,
    quote_literal,
)
from kingest.catalog.fields import enum_labels, snake_case
from kingest.catalog.load import (
    BUILTIN_CATALOG_PATH,
    ENVELOPE_COLUMNS,
    CatalogError,
    is_builtin,
    load_catalog,
)
from kingest.catalog.messages import message_class
from kingest.catalog.model import (
    Catalog,
    Column,
    EnvelopeFields,
    FactTable,
    FieldMapping,
    Index,
    Rank,
    StateAssignment,
    StateTable,
    StateUpdate,
    ValueKind,
)

__all__ = [
    "BUILTIN_CATALOG_PATH",
    "ENVELOPE_COLUMNS",
    "REMOVAL_RULES",
    "Catalog",
    "CatalogError",
    "Column",
    "EnvelopeFields",
    "FactTable",
    "FieldMapping",
    "Incompatibility",
    "Index",
    "Rank",
    "StateAssignment",
    "StateTable",
    "StateUpdate",
    "ValueKind",
    "catalog_ddl",
    "catalog_incompatibilities",
    "column_definition",
    "comment_ddl",
    "create_index_ddl",
    "create_table_ddl",
    "enum_labels",
    "is_builtin",
    "load_catalog",
    "message_class",
    "quote_identifier",
    "quote_literal",
    "snake_case",
]
