"""The catalog: a team's Protobuf messages as kingest tables, and how rows are derived.

A catalog is a compiled ``FileDescriptorSet`` (the built-in AI/ML catalog, or a file
named by ``KINGEST_CATALOG``) whose messages carry the options of
``kingest/options/v1/options.proto``. :func:`load_catalog` reads it into a
:class:`Catalog`: fact tables (one per event message), current-state tables (updated
from the facts by column group), their columns with PostgreSQL types, constraints,
indexes and comments. :func:`catalog_ddl` renders the DDL that creates them. Nothing
here touches the database or Kafka.
"""

__all__: list[str] = []
