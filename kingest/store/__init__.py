"""The PostgreSQL side of kingest: schema migrations, row mapping, batched idempotent writes.

* :mod:`kingest.store.migrate` applies the ``sql/NNNN_name.sql`` migrations once each,
  under an advisory lock;
* :mod:`kingest.store.rows` turns Kafka records into column buffers (a
  :class:`RowBatch`), and undecodable or invalid messages into :class:`Rejection`\\ s;
* :mod:`kingest.store.tables` describes the tables and generates the write statements;
* :mod:`kingest.store.write` writes a RowBatch in one transaction (:func:`write_batch`);
* :mod:`kingest.store.errors` tells transient database errors (retry) from permanent
  ones (bisect the batch and dead-letter the offending rows).
"""

from kingest.store.errors import ErrorKind, classify_db_error, is_schema_error, sqlstate_of
from kingest.store.migrate import (
    Migration,
    MigrationError,
    apply_migrations,
    load_migrations,
    migrations_dir,
    pending_migrations,
)
from kingest.store.rows import KafkaRecord, Rejection, RowBatch, derive_event_id
from kingest.store.write import WriteResult, write_batch

__all__ = [
    "ErrorKind",
    "KafkaRecord",
    "Migration",
    "MigrationError",
    "Rejection",
    "RowBatch",
    "WriteResult",
    "apply_migrations",
    "classify_db_error",
    "derive_event_id",
    "is_schema_error",
    "load_migrations",
    "migrations_dir",
    "pending_migrations",
    "sqlstate_of",
    "write_batch",
]
