"""The kingest Protobuf options (``proto/kingest/options/v1/options.proto``), generated.

A team's catalog imports ``kingest/options/v1/options.proto`` to say which message is a
table, which fields are indexed or required, which messages update current-state tables
and how Protobuf types map to PostgreSQL. This package holds only the generated Python
of that file (``kingest.options.v1.options_pb2``), which registers the option extensions
so that :mod:`kingest.catalog` can read them from a compiled descriptor set.
"""

__all__: list[str] = []
