"""Which database errors are worth retrying, and which mean a row can never be stored.

The writer's decision rests on this: a **transient** error (the server is restarting,
the connection dropped, a deadlock or serialization conflict, a lock wait that timed
out) is retried with backoff, since the same batch may well succeed later. A
**permanent** error (the data itself is unacceptable: a NUL character in text, a value
out of range, a constraint violation) fails the same way every time, so the writer
bisects the batch down to the offending row and dead-letters only that row.

Transient errors are of two kinds. An **outage** (:func:`is_outage`: no connection,
the server shutting down or starting, out of resources, a system error such as an I/O
error on the server's own files, a pool timeout) says nothing about the rows: it is
waited out forever and never dead-letters anything. Every other transient error
(deadlock, serialization failure, lock or statement timeout, a trigger's ``RAISE``, any
SQLSTATE not recognised) may be caused by the batch itself, so the writer retries it a
bounded number of times, then bisects the batch and dead-letters a single row that still
fails (``retries_exhausted``). Anything not recognised is transient: a few retries lose
nothing, while dead-lettering at the first doubt could discard good events.

A SQL error of class 42 (undefined table or column, syntax, permission) is permanent
but is not about any row: it means the schema is missing or older than the code.
:func:`is_schema_error` singles those out so the service can stop with a clear message
instead of dead-lettering every event.

A prepared statement missing from the session (26000) or whose name it already holds
(42P05) is neither: a connection pooler in transaction mode did it. The writer turns
prepared statements off and retries (:class:`kingest.pipeline.writer.PreparedStatements`).
"""

from __future__ import annotations

import enum
from typing import Final

import psycopg

__all__ = [
    "ErrorKind",
    "classify_db_error",
    "first_line",
    "is_outage",
    "is_schema_error",
    "sqlstate_of",
]


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


#: SQLSTATE classes and codes of outages: the server or the way to it is unavailable.
_OUTAGE_CLASSES: Final = frozenset(
    {
        "08",  # connection exception
        "53",  # insufficient resources (disk full, out of memory, too many connections)
        "58",  # system error: the server cannot read or write its own files (58030
        # io_error, 58P01 undefined_file, 58P02 duplicate_file), whatever the rows
    }
)
_OUTAGE_STATES: Final = frozenset(
    {
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, in recovery)
        "57P04",  # database_dropped
        "57P05",  # idle_session_timeout
        "25006",  # read_only_sql_transaction: a standby answers during a failover
    }
)
#: SQLSTATE classes (first two characters) whose errors go away on their own: outages,
#: and operator intervention (57: query_canceled, and the shutdowns listed as outages).
_TRANSIENT_CLASSES: Final = _OUTAGE_CLASSES | {"57"}
_TRANSIENT_STATES: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
    }
)
#: SQLSTATE classes whose errors are caused by the data or the SQL, never by timing.
_PERMANENT_CLASSES: Final = frozenset(
    {
        "22",  # data exception (bad encoding, value out of range, invalid JSON...)
        "23",  # integrity constraint violation (NOT NULL, CHECK, unique...)
        "42",  # syntax error or access rule violation (see is_schema_error)
        "54",  # program limit exceeded (e.g. a value too large for a btree index row)
        "3F",  # invalid schema name (see is_schema_error)
    }
)
_SCHEMA_CLASSES: Final = frozenset({"42", "3F"})


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL reported for ``exc`` (or the error it wraps), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg.Error) and current.sqlstate:
            return current.sqlstate
        current = current.__cause__
    return None


def classify_db_error(exc: BaseException) -> ErrorKind:
    """Transient (retry the batch) or permanent (bisect and dead-letter the bad rows)."""
    sqlstate = sqlstate_of(exc)
    if sqlstate is not None:
        if sqlstate in _TRANSIENT_STATES or sqlstate[:2] in _TRANSIENT_CLASSES:
            return ErrorKind.TRANSIENT
        if sqlstate[:2] in _PERMANENT_CLASSES:
            return ErrorKind.PERMANENT
        return ErrorKind.TRANSIENT
    if isinstance(exc, psycopg.DataError | UnicodeEncodeError):
        # Raised by the client before anything reached the server: psycopg refusing to
        # send a value (a NUL in text, a number out of range), or text that is not
        # encodable. The same rows fail the same way every time.
        return ErrorKind.PERMANENT
    # Connection lost (OperationalError, InterfaceError without SQLSTATE), pool
    # timeouts, and anything unknown: retry rather than dead-letter on doubt.
    return ErrorKind.TRANSIENT


def is_outage(exc: BaseException) -> bool:
    """True for a transient error that says nothing about the rows: the database is
    unreachable, shutting down or starting, out of resources or failing to read or write
    its own files (SQLSTATE class 58); a connection lost without SQLSTATE; a pool
    timeout. The writer waits those out forever.

    False for every other error, transient ones included (they get a retry budget).
    """
    sqlstate = sqlstate_of(exc)
    if sqlstate is not None:
        return sqlstate in _OUTAGE_STATES or sqlstate[:2] in _OUTAGE_CLASSES
    # Without SQLSTATE: psycopg's connection errors (OperationalError, InterfaceError),
    # psycopg_pool's PoolTimeout (an OperationalError) and socket errors; not a value
    # psycopg refused to send (a DataError).
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError)


def is_schema_error(exc: BaseException) -> bool:
    """True for a SQL error no row can cause: a missing or stale schema, or a grant.

    The caller should stop (the database needs ``kingest migrate`` or privileges)
    rather than dead-letter events.
    """
    sqlstate = sqlstate_of(exc)
    return sqlstate is not None and sqlstate[:2] in _SCHEMA_CLASSES


def first_line(error: BaseException) -> str:
    """The first line of an error's message (PostgreSQL adds DETAIL/HINT lines), or its
    class name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
