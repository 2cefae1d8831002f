"""Classification of database errors into retry (transient) and dead-letter (permanent)."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest
from psycopg import errors

from kingest.store.errors import (
    ErrorKind,
    classify_db_error,
    is_outage,
    is_schema_error,
    sqlstate_of,
)

TRANSIENT = ErrorKind.TRANSIENT
PERMANENT = ErrorKind.PERMANENT


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # Timing, resources and outages: the same batch succeeds later.
        (errors.SerializationFailure(), TRANSIENT),  # 40001
        (errors.DeadlockDetected(), TRANSIENT),  # 40P01
        (errors.LockNotAvailable(), TRANSIENT),  # 55P03
        (errors.QueryCanceled(), TRANSIENT),  # 57014 (statement_timeout)
        (errors.AdminShutdown(), TRANSIENT),  # 57P01
        (errors.CannotConnectNow(), TRANSIENT),  # 57P03 (server starting)
        (errors.ConnectionFailure(), TRANSIENT),  # 08006
        (errors.TooManyConnections(), TRANSIENT),  # 53300
        (errors.DiskFull(), TRANSIENT),  # 53100
        (errors.IoError(), TRANSIENT),  # 58030
        (psycopg.OperationalError("server closed the connection unexpectedly"), TRANSIENT),
        (psycopg.InterfaceError("the connection is closed"), TRANSIENT),
        (psycopg_pool.PoolTimeout("couldn't get a connection after 30 sec"), TRANSIENT),
        # Unknown: never dead-letter on doubt.
        (errors.RaiseException(), TRANSIENT),  # P0001
        (errors.InternalError_(), TRANSIENT),  # XX000
        (ValueError("something else"), TRANSIENT),
        # The data itself: fails the same way every time.
        (errors.CharacterNotInRepertoire(), PERMANENT),  # 22021 (NUL in text)
        (errors.NumericValueOutOfRange(), PERMANENT),  # 22003
        (errors.InvalidTextRepresentation(), PERMANENT),  # 22P02
        (errors.UntranslatableCharacter(), PERMANENT),  # 22P05 (\u0000 in jsonb)
        (errors.NotNullViolation(), PERMANENT),  # 23502
        (errors.CheckViolation(), PERMANENT),  # 23514
        (errors.UniqueViolation(), PERMANENT),  # 23505
        (errors.ProgramLimitExceeded(), PERMANENT),  # 54000 (index row too large)
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), PERMANENT),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), PERMANENT),
        # Schema or privileges: permanent, and flagged by is_schema_error.
        (errors.UndefinedTable(), PERMANENT),  # 42P01
        (errors.UndefinedColumn(), PERMANENT),  # 42703
        (errors.InsufficientPrivilege(), PERMANENT),  # 42501
        (errors.InvalidSchemaName(), PERMANENT),  # 3F000
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_classification(error: BaseException, kind: ErrorKind) -> None:
    assert classify_db_error(error) is kind


@pytest.mark.parametrize(
    ("error", "schema"),
    [
        (errors.UndefinedTable(), True),
        (errors.UndefinedColumn(), True),
        (errors.SyntaxError(), True),
        (errors.InsufficientPrivilege(), True),
        (errors.InvalidSchemaName(), True),
        (errors.CharacterNotInRepertoire(), False),
        (errors.UniqueViolation(), False),
        (errors.DeadlockDetected(), False),
        (psycopg.OperationalError("gone"), False),
        (ValueError("x"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_is_schema_error(error: BaseException, schema: bool) -> None:
    assert is_schema_error(error) is schema


def test_sqlstate_of_reads_the_error_and_what_it_wraps() -> None:
    assert sqlstate_of(errors.DeadlockDetected()) == "40P01"
    assert sqlstate_of(psycopg.OperationalError("no state")) is None
    assert sqlstate_of(ValueError("not a database error")) is None

    try:
        try:
            raise errors.CheckViolation()
        except errors.CheckViolation as inner:
            raise RuntimeError("writer gave up") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert sqlstate_of(wrapped) == "23514"
    assert classify_db_error(wrapped) is PERMANENT


def test_sqlstate_of_survives_a_cause_cycle() -> None:
    first = RuntimeError("a")
    second = RuntimeError("b")
    first.__cause__ = second
    second.__cause__ = first
    assert sqlstate_of(first) is None
    assert classify_db_error(first) is TRANSIENT


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        # The server or the path to it is away: waited out forever, nothing dead-letters.
        (errors.ConnectionFailure(), True),  # 08006
        (errors.SqlclientUnableToEstablishSqlconnection(), True),  # 08001
        (errors.AdminShutdown(), True),  # 57P01
        (errors.CrashShutdown(), True),  # 57P02
        (errors.CannotConnectNow(), True),  # 57P03 (server starting)
        (errors.DatabaseDropped(), True),  # 57P04
        (errors.IdleSessionTimeout(), True),  # 57P05
        (errors.TooManyConnections(), True),  # 53300
        (errors.DiskFull(), True),  # 53100
        (errors.OutOfMemory(), True),  # 53200
        (errors.ReadOnlySqlTransaction(), True),  # 25006 (a standby during a failover)
        (errors.IoError(), True),  # 58030 (the server cannot read or write its files)
        (errors.UndefinedFile(), True),  # 58P01
        (errors.SystemError(), True),  # 58000
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg_pool.PoolTimeout("couldn't get a connection after 30 sec"), True),
        (ConnectionResetError("reset by peer"), True),
        # Transient but possibly deterministic: a bounded retry budget, then bisection.
        (errors.SerializationFailure(), False),  # 40001
        (errors.DeadlockDetected(), False),  # 40P01
        (errors.LockNotAvailable(), False),  # 55P03
        (errors.QueryCanceled(), False),  # 57014 (statement_timeout)
        (errors.RaiseException(), False),  # P0001 (a trigger's RAISE)
        (errors.InvalidSqlStatementName(), False),  # 26000 (PgBouncer, transaction mode)
        (errors.InternalError_(), False),  # XX000
        (ValueError("something else"), False),
        # Permanent errors are not outages either.
        (errors.CheckViolation(), False),
        (errors.UndefinedTable(), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_outages_are_told_from_errors_a_retry_budget_bounds(
    error: BaseException, outage: bool
) -> None:
    assert is_outage(error) is outage


def test_a_custom_sqlstate_is_transient_but_not_an_outage() -> None:
    class CustomState(psycopg.Error):
        sqlstate = "KG001"  # what a trigger's RAISE ... USING ERRCODE = 'KG001' reports

    error = CustomState("raised by a trigger")
    assert classify_db_error(error) is TRANSIENT
    assert not is_outage(error)
