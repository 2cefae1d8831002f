"""The PostgreSQL side of kingest: schema migrations, row mapping, batched idempotent writes.

* :mod:`kingest.store.migrate` applies the ``sql/NNNN_name.sql`` migrations once each,
  under an advisory lock;
* :mod:`kingest.store.introspect` reads a live schema back as PostgreSQL prints it
  (:func:`introspect_schema`) and lists the differences between two
  (:func:`schema_differences`);
* :mod:`kingest.store.schema_plan` plans a catalog's tables on the database
  (:func:`plan_schema`: additions only, breaking changes refused with how to proceed)
  and applies and records it under the migrations' lock (:func:`apply_schema`);
* :mod:`kingest.store.rows` turns Kafka records into column buffers (a
  :class:`RowBatch`), and undecodable or invalid messages into :class:`Rejection`\\ s;
* :mod:`kingest.store.headers` reads a message's Kafka headers without ever raising
  (:func:`message_headers`, :func:`unreadable_headers`) and keeps them as a dead letter
  does (:func:`header_tuple`);
* :mod:`kingest.store.event_ids` derives the idempotency key of an event sent without
  ``event_id``, from its coordinates or, for a replayed dead letter whose replay
  headers check out, from the original's (:func:`verified_replay_of`);
* :mod:`kingest.store.tables` derives the write tables and statements from a catalog
  (:func:`write_plan`); :mod:`kingest.store.dead_letter_sql` holds the dead letters' own;
* :mod:`kingest.store.write` writes a RowBatch in one transaction (:func:`write_batch`);
* :mod:`kingest.store.errors` tells transient database errors (retry) from permanent
  ones (bisect the batch and dead-letter the offending rows).
"""

from kingest.store.dead_letter_sql import IMPORT_DEAD_LETTER, INSERT_DEAD_LETTER, SCHEMA
from kingest.store.errors import (
    ErrorKind,
    classify_db_error,
    first_line,
    is_outage,
    is_schema_error,
    sqlstate_of,
)
from kingest.store.event_ids import (
    REPLAY_DIGEST_HEADER,
    REPLAY_OF_HEADER,
    derive_event_id,
    replay_digest,
    verified_replay_of,
)
from kingest.store.headers import (
    Headers,
    UnreadableHeaders,
    header_pairs,
    header_tuple,
    message_headers,
    unreadable_headers,
)
from kingest.store.introspect import (
    SCHEMA_PLACEHOLDER,
    LiveColumn,
    LiveSchema,
    LiveTable,
    introspect_schema,
    schema_differences,
)
from kingest.store.migrate import (
    Migration,
    MigrationError,
    apply_migrations,
    load_migrations,
    migrations_dir,
    pending_migrations,
)
from kingest.store.rows import KafkaRecord, Rejection, RowBatch, storable_timestamp_ms
from kingest.store.schema_plan import (
    RecordedCatalog,
    SchemaPlan,
    SchemaPlanError,
    apply_schema,
    catalog_gaps,
    latest_recorded_catalog,
    plan_schema,
)
from kingest.store.tables import FACT_TABLES, WRITE_PLAN, WritePlan, builtin_plan, write_plan
from kingest.store.write import (
    WriteResult,
    dead_letter_params,
    storable_text,
    store_unpublished_dead_letters,
    write_batch,
)

__all__ = [
    "FACT_TABLES",
    "IMPORT_DEAD_LETTER",
    "INSERT_DEAD_LETTER",
    "REPLAY_DIGEST_HEADER",
    "REPLAY_OF_HEADER",
    "SCHEMA",
    "SCHEMA_PLACEHOLDER",
    "WRITE_PLAN",
    "ErrorKind",
    "Headers",
    "KafkaRecord",
    "LiveColumn",
    "LiveSchema",
    "LiveTable",
    "Migration",
    "MigrationError",
    "RecordedCatalog",
    "Rejection",
    "RowBatch",
    "SchemaPlan",
    "SchemaPlanError",
    "UnreadableHeaders",
    "WritePlan",
    "WriteResult",
    "apply_migrations",
    "apply_schema",
    "builtin_plan",
    "catalog_gaps",
    "classify_db_error",
    "dead_letter_params",
    "derive_event_id",
    "first_line",
    "header_pairs",
    "header_tuple",
    "introspect_schema",
    "is_outage",
    "is_schema_error",
    "latest_recorded_catalog",
    "load_migrations",
    "message_headers",
    "migrations_dir",
    "pending_migrations",
    "plan_schema",
    "replay_digest",
    "schema_differences",
    "sqlstate_of",
    "storable_text",
    "storable_timestamp_ms",
    "store_unpublished_dead_letters",
    "unreadable_headers",
    "verified_replay_of",
    "write_batch",
    "write_plan",
]
