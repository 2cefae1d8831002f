"""COPY and its fallback to the idempotent INSERT, against a fake connection.

:func:`write_batch` writes a plain fact table (no state table fed from it) with binary
COPY under a savepoint when the batch's event ids are distinct; a unique violation
(a redelivered event) rolls back to the savepoint and the table's rows take the
statement of the write plan instead. The fake connection records the transactions,
COPYs and statements it is asked for, so each branch shows without PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.pq import TransactionStatus

from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import Event, MetricLogged, ModelDeployed
from kingest.store import RowBatch, write_batch
from kingest.store import copy as copy_module
from kingest.store.copy import _uuid_bytes, copy_rows
from kingest.store.tables import TABLES_BY_EVENT_TYPE, WRITE_PLAN, Statement, WriteTable
from tests.fakes import FakeRecord

DEPLOYMENTS = TABLES_BY_EVENT_TYPE["model_deployed"]
METRICS = TABLES_BY_EVENT_TYPE["metric_logged"]

NOW = 1_750_000_000.0
OCCURRED = Timestamp(seconds=1_749_999_000)


def metric(event_id: str, offset: int) -> FakeRecord:
    payload = MetricLogged(run_id="run-1", key="loss", value=0.5, step=offset)
    return _record(Event(event_id=event_id, occurred_at=OCCURRED, metric_logged=payload), offset)


def deployment(offset: int) -> FakeRecord:
    payload = ModelDeployed(model_name="m", version="1", environment="prod", replicas=2)
    event = Event(event_id=str(uuid.uuid4()), occurred_at=OCCURRED, model_deployed=payload)
    return _record(event, offset)


def _record(event: Event, offset: int) -> FakeRecord:
    event.source = "unit/test"
    return FakeRecord(encode_event(event), offset=offset)


def batch_of(*records: FakeRecord) -> RowBatch:
    batch = RowBatch(now=NOW)
    batch.add_records(records)
    assert batch.rejection_count == 0
    return batch


def metrics(count: int) -> RowBatch:
    return batch_of(*(metric(str(uuid.uuid4()), offset) for offset in range(count)))


@pytest.fixture(autouse=True)
def rows_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake COPY takes rows (it cannot read the binary stream): copy_rows sends them
    as it does with a psycopg that lacks its row formatter. The formatted stream is
    written against a real PostgreSQL by every integration test that stores rows."""
    monkeypatch.setattr(copy_module, "format_row_binary", None)


class FakeCopy:
    def __init__(self, cursor: FakeCursor, statement: str) -> None:
        self.cursor = cursor
        self.statement = statement
        self.types: list[str] = []
        self.rows: list[tuple[Any, ...]] = []

    def __enter__(self) -> FakeCopy:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # The server reports a unique violation when the COPY ends.
        if exc_type is None and self.cursor.conn.copy_error is not None:
            raise self.cursor.conn.copy_error

    def set_types(self, types: list[str]) -> None:
        self.types = list(types)

    def write_row(self, row: tuple[Any, ...]) -> None:
        self.rows.append(row)


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.adapters = SimpleNamespace(register_dumper=lambda cls, dumper: None)
        self.rowcount = -1
        self._result: tuple[int, ...] | None = None

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def copy(self, statement: str) -> FakeCopy:
        copy = FakeCopy(self, statement)
        self.conn.copies.append(copy)
        self.conn.events.append("copy")
        return copy

    def execute(self, sql: str, params: list[Any], *, prepare: bool = False) -> None:
        (statement,) = [s for s in WRITE_PLAN if s.sql == sql]
        self.conn.executed.append((statement, params, prepare))
        self.conn.events.append("execute")
        stored = self.conn.stored
        facts = tuple(stored.get(t.name, 0) for t in statement.fact_tables)
        self._result = facts + (0,) * len(statement.state_tables)

    def fetchone(self) -> tuple[int, ...] | None:
        return self._result

    def executemany(self, sql: str, params: list[Any]) -> None:
        self.rowcount = len(params)


class FakeConnection:
    """Records what a write asks for; ``stored`` is the count each INSERT reports."""

    def __init__(self, *, copy_error: Exception | None = None) -> None:
        self.info = SimpleNamespace(transaction_status=TransactionStatus.IDLE)
        self.copy_error = copy_error
        self.stored: dict[str, int] = {}
        self.events: list[str] = []
        self.copies: list[FakeCopy] = []
        self.executed: list[tuple[Statement, list[Any], bool]] = []
        self._depth = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        kind = "savepoint" if self._depth else "transaction"
        self._depth += 1
        self.events.append(f"begin {kind}")
        try:
            yield
        except BaseException:
            self.events.append(f"rollback {kind}")
            raise
        finally:
            self._depth -= 1
        self.events.append(f"commit {kind}")

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def statements(self) -> list[WriteTable]:
        return [table for statement, _, _ in self.executed for table in statement.fact_tables]


def write(conn: FakeConnection, batch: RowBatch, *, use_copy: bool = True) -> Any:
    return write_batch(cast(psycopg.Connection[Any], conn), batch, use_copy=use_copy)


def test_a_plain_fact_table_is_copied_under_a_savepoint() -> None:
    conn = FakeConnection()
    result = write(conn, metrics(3))
    assert result.copied == ("metrics",)
    assert result.copy_fallbacks == ()
    assert result.inserted == {"metrics": 3}
    assert conn.executed == []
    (copy,) = conn.copies
    assert copy.statement == METRICS.copy_statement
    assert len(copy.rows) == 3
    assert len(copy.types) == len(METRICS.columns)
    assert conn.events == [
        "begin transaction",
        "begin savepoint",
        "copy",
        "commit savepoint",
        "commit transaction",
    ]


def test_a_unique_violation_rolls_the_copy_back_and_inserts_instead() -> None:
    conn = FakeConnection(copy_error=psycopg.errors.UniqueViolation("already stored"))
    conn.stored = {"metrics": 1}  # two of the three were stored before
    result = write(conn, metrics(3))
    assert result.copied == ()
    assert result.copy_fallbacks == ("metrics",)
    assert result.inserted == {"metrics": 1}
    assert result.duplicates == 2
    assert conn.events == [
        "begin transaction",
        "begin savepoint",
        "copy",
        "rollback savepoint",
        "execute",
        "commit transaction",
    ]
    ((statement, params, prepare),) = conn.executed
    assert statement.fact_tables == (METRICS,)
    assert len(params) == len(METRICS.columns)
    assert prepare


def test_another_copy_error_is_not_a_fallback() -> None:
    conn = FakeConnection(copy_error=psycopg.errors.CheckViolation("no"))
    with pytest.raises(psycopg.errors.CheckViolation):
        write(conn, metrics(2))
    assert conn.executed == []
    assert conn.events[-2:] == ["rollback savepoint", "rollback transaction"]


def test_event_ids_repeated_within_the_batch_skip_the_copy() -> None:
    event_id = str(uuid.uuid4())
    conn = FakeConnection()
    conn.stored = {"metrics": 1}
    result = write(conn, batch_of(metric(event_id, 0), metric(event_id, 1)))
    assert conn.copies == []
    assert conn.statements() == [METRICS]
    assert result.copied == result.copy_fallbacks == ()
    assert result.duplicates == 1


def test_without_copy_every_table_is_inserted() -> None:
    conn = FakeConnection()
    conn.stored = {"metrics": 2}
    result = write(conn, metrics(2), use_copy=False)
    assert conn.copies == []
    assert conn.statements() == [METRICS]
    assert result.copied == ()


def test_a_table_that_feeds_a_state_table_is_never_copied() -> None:
    conn = FakeConnection()
    conn.stored = {"deployments": 1, "metrics": 1}
    result = write(conn, batch_of(deployment(0), metric(str(uuid.uuid4()), 1)))
    assert conn.statements() == [DEPLOYMENTS]
    assert [copy.statement for copy in conn.copies] == [METRICS.copy_statement]
    assert result.copied == ("metrics",)
    assert result.inserted == {"deployments": 1, "metrics": 1}


def test_a_malformed_event_id_is_a_data_error_before_any_copy() -> None:
    conn = FakeConnection()
    columns = metrics(1).columns(METRICS)
    columns[0] = ["not-a-uuid"]
    with pytest.raises(psycopg.DataError, match="metrics"):
        copy_rows(cast(psycopg.Cursor[Any], conn.cursor()), METRICS, columns)
    assert conn.copies == []


def test_event_ids_of_either_form_become_their_16_bytes() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    texts = [str(ids[0]), ids[1].hex, str(ids[2]).upper()]
    assert _uuid_bytes(texts) == [i.bytes for i in ids]
    assert _uuid_bytes([]) == []


@pytest.mark.parametrize(
    "texts",
    [["not-a-uuid"], [uuid.uuid4().hex[:-1]], [uuid.uuid4().hex + "0"], ["g" * 32]],
    ids=["words", "short", "long", "not-hex"],
)
def test_an_event_id_that_is_no_uuid_is_a_data_error(texts: list[str]) -> None:
    conn = FakeConnection()
    columns = metrics(1).columns(METRICS)
    columns[0] = texts
    with pytest.raises(psycopg.DataError, match="metrics"):
        copy_rows(cast(psycopg.Cursor[Any], conn.cursor()), METRICS, columns)
    assert conn.copies == []
