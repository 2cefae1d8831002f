"""What a ``kingest bench`` run stands on: its services, databases and input topics.

The bench measures against a Kafka-protocol broker and a PostgreSQL server: the ones
given on the command line, or a Tansu broker and an embedded PostgreSQL started here
for the whole bench (:func:`provide_bench_services`). For services it started, it also
knows their processes, so that a run can be billed the CPU the broker and PostgreSQL
spent on it (:class:`BenchServices`): on a shared machine that is the rest of the bill.
The embedded PostgreSQL runs with :data:`POSTGRES_SETTINGS`: ``track_commit_timestamp``
for the latency case, buffers and WAL sized for a 1M-event run, and fsync and
synchronous commit left on, as in production.

Each measured run gets a fresh migrated database (:func:`fresh_database`), checked for
exactly one stored row or dead letter per event afterwards (:func:`stored_events`) and
then dropped (:func:`drop_database`): 1M events take about 1 GB. Input topics are filled
before anything is timed, by ``kingest produce`` in its own process
(:func:`produce_events`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from kingest.dev.bench_figures import process_cpu_seconds, process_tree, tree_cpu_seconds
from kingest.dev.lifecycle import clean_env
from kingest.dev.postgres import LocalPostgres, database_url_for
from kingest.dev.tansu import LocalKafka
from kingest.store import FACT_TABLES, SCHEMA, apply_migrations

__all__ = [
    "POSTGRES_SETTINGS",
    "STORE_TABLES",
    "BenchServices",
    "drop_database",
    "fresh_database",
    "produce_events",
    "provide_bench_services",
    "stored_events",
]


#: Server settings of the PostgreSQL the bench starts: commit timestamps for latency,
#: buffers and WAL sized for a 1M-event run. fsync and synchronous_commit stay on.
POSTGRES_SETTINGS: Final = {
    "track_commit_timestamp": "on",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
}


@dataclass
class BenchServices:
    """The broker and PostgreSQL server a bench runs against, and how to bill them."""

    bootstrap_servers: str
    server_url: str
    #: Processes whose CPU is the machine's rest of the bill (empty for given services).
    broker_pids: list[int] = field(default_factory=list)
    postgres_pid: int | None = None
    commit_timestamps: bool = True

    def postgres_cpu(self) -> float:
        """CPU of the server's live processes and of the backends that have ended."""
        if self.postgres_pid is None:
            return 0.0
        live = tree_cpu_seconds(process_tree(self.postgres_pid))
        return live + process_cpu_seconds(self.postgres_pid, reaped_children=True)

    def broker_cpu(self) -> float:
        """CPU of the broker processes started here (0 for a given broker)."""
        return tree_cpu_seconds(self.broker_pids)


@contextmanager
def provide_bench_services(
    bootstrap_servers: str | None, database_url: str | None, workdir: Path
) -> Iterator[BenchServices]:
    """The broker and PostgreSQL: the given ones, or embedded ones started here (a
    Tansu broker logging to ``workdir``, a PostgreSQL with :data:`POSTGRES_SETTINGS`
    whose data lives in ``workdir``)."""
    with (
        (
            LocalKafka(log_path=workdir / "broker.log") if bootstrap_servers is None else _nothing()
        ) as kafka,
        (
            LocalPostgres(workdir / "pg", settings=POSTGRES_SETTINGS)
            if database_url is None
            else _nothing()
        ) as postgres,
    ):
        found = BenchServices(
            bootstrap_servers=bootstrap_servers or kafka.bootstrap_servers,
            server_url=database_url or postgres.url,
        )
        if bootstrap_servers is None and kafka.pid is not None:
            found.broker_pids = [kafka.pid]
        if database_url is None:
            found.postgres_pid = postgres.pid
        with psycopg.connect(found.server_url) as conn:
            row = conn.execute("SHOW track_commit_timestamp").fetchone()
            found.commit_timestamps = row is not None and row[0] == "on"
        yield found


@contextmanager
def _nothing() -> Iterator[Any]:
    yield None


def fresh_database(server_url: str, name: str) -> str:
    """Database ``name`` on the server, dropped first if it exists, then migrated."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url_for(server_url, name)
    apply_migrations(url)
    return url


def drop_database(server_url: str, url: str) -> None:
    """A measured run's database goes once checked: 1M events take about 1 GB."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(str(name))))


def produce_events(bootstrap: str, topic: str, events: int, seed: int) -> None:
    """``kingest produce`` of ``events`` synthetic events into ``topic`` (untimed)."""
    subprocess.run(
        [
            *(sys.executable, "-m", "kingest", "produce", "--count", str(events)),
            *("--topic", topic, "--bootstrap-servers", bootstrap, "--seed", str(seed)),
        ],
        env=clean_env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


#: Every table a stored event lands in: the fact tables and the dead letters.
STORE_TABLES: Final = (*(table.name for table in FACT_TABLES), "dead_letters")


def stored_events(url: str) -> int:
    """Rows in every fact table plus dead letters: one per message, exactly once."""
    total = 0
    with psycopg.connect(url) as conn:
        for name in STORE_TABLES:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, name))
            row = conn.execute(query).fetchone()
            total += row[0] if row else 0
    return total
